"""Real-CT benchmark: every stage of the algorithm, and the whole of it, on real labelled CTs.

Cases: the real labelled CTs the project knows (``export.real_cases``: the bundled example and,
in a developer checkout, those of ``../shared/data``), plus any given with ``--case CT MASK
[CENTROIDS]`` or ``--verse DIR`` (a VerSe-layout folder). Per case:

- **detect**: the fraction of each ground-truth vertebra's voxels inside the detected box
  (``box_mean``, ``box_min`` over vertebrae).
- **locate**: ground-truth body centres with a candidate within 10 mm (``found``); candidates
  within 10 mm of an already matched centre (``duplicates``); candidates farther than 20 mm from
  every centre (``false``; on partially labelled cases only those within the labelled levels'
  height are counted).
- **label**: the decoder on those candidates; identification (DESIGN.md: nearest ground-truth
  centre, within 20 mm) and ``region_ok``: ground-truth vertebrae whose candidate's label lies
  in the right region (cervical, thoracic, lumbar).
- **segment** (oracle): Dice per vertebra when the segment stage is given the ground-truth
  labels and body centres, so segmentation is measured on its own.
- **end to end**: ``python -m algorithm predict`` in a fresh process (time and peak memory from
  its run report), scored by the project's evaluator (``evaluation.score.score_case``).

Body centres are the annotated ones where a case has them, else estimated from the mask
(``export.real_cases.body_centres_mm``, 1-2 mm from VerSe's annotations). The table also says
which real cases each model saw in training (its ``trained_on`` metadata).

    python bench/real.py                         # all known real cases, bundled models
    python bench/real.py --models my-models/ --json real.json
    python bench/real.py --case ct.nii.gz msk.nii.gz ctd.json --verse /data/verse20
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # run as a script, bench/ would come first and shadow nothing; keep the repo importable

from algorithm.cli import bone_floor_value  # noqa: E402
from algorithm.detect import detect_spine  # noqa: E402
from algorithm.models import ModelSource, find_model_dir, load_models  # noqa: E402
from algorithm.pipeline import Options, label_stage, locate_stage  # noqa: E402
from algorithm.segment import segment_vertebrae  # noqa: E402
from export.real_cases import RealCase, find_real_cases  # noqa: E402
from spine.case import Case  # noqa: E402
from spine.image import Geometry, image_from_array, resample_onto  # noqa: E402
from spine.labels import EVALUATED, name_of, region_of  # noqa: E402

log = logging.getLogger("bench.real")

FOUND_MM = 10.0
ID_MM = 20.0


# ----------------------------------------------------------------------------- stage metrics (pure)


def box_fractions(mask: np.ndarray, geometry: Geometry, low_mm: Sequence[float], high_mm: Sequence[float],
                  labels: Sequence[int]) -> dict[int, float]:
    """Per label: the fraction of its voxels whose centre (LPS mm) lies inside the box [low, high]."""
    out: dict[int, float] = {}
    for label in labels:
        zyx = np.argwhere(mask == label)
        if not len(zyx):
            continue
        world = geometry.index_to_world(zyx[:, ::-1].astype(np.float64))
        inside = np.all((world >= np.asarray(low_mm)) & (world <= np.asarray(high_mm)), axis=1)
        out[label] = float(inside.mean())
    return out


def match_candidates(positions_mm: np.ndarray, centres_mm: dict[int, np.ndarray], *,
                     height_range_mm: tuple[float, float] | None = None) -> dict[str, Any]:
    """Locate figures: ``found`` (centre with a candidate within 10 mm), ``duplicates``, ``false``.

    A candidate is a duplicate when its nearest centre (within 10 mm) is also nearer to another,
    closer candidate; false when farther than 20 mm from every centre (and, with
    ``height_range_mm``, inside that range of z, the labelled levels' height).
    """
    labels = sorted(centres_mm)
    if not labels:
        return {"found": {}, "duplicates": 0, "false": 0, "distance_mm": {}}
    centres = np.array([centres_mm[v] for v in labels])
    found: dict[int, bool] = {}
    distance: dict[int, float] = {}
    duplicates = false = 0
    if len(positions_mm):
        d = np.linalg.norm(positions_mm[:, None, :] - centres[None], axis=2)  # (N candidates, G)
        for g, label in enumerate(labels):
            distance[label] = float(d[:, g].min())
            found[label] = bool(d[:, g].min() <= FOUND_MM)
        nearest = d.argmin(axis=1)
        for g in range(len(labels)):
            close = np.flatnonzero((nearest == g) & (d[:, g] <= FOUND_MM))
            duplicates += max(len(close) - 1, 0)
        far = d.min(axis=1) > ID_MM
        if height_range_mm is not None:
            z = positions_mm[:, 2]
            far &= (z >= height_range_mm[0]) & (z <= height_range_mm[1])
        false = int(far.sum())
    else:
        found = dict.fromkeys(labels, False)
    return {"found": found, "duplicates": duplicates, "false": false, "distance_mm": distance}


def identification(labelled: dict[int, np.ndarray], centres_mm: dict[int, np.ndarray]) -> dict[int, bool]:
    """DESIGN.md's rule per ground-truth vertebra v: a predicted v whose nearest centre is g_v, within 20 mm."""
    from evaluation.metrics import identify

    outcomes = identify(labelled, centres_mm, ID_MM)
    return {v: bool(v in outcomes and outcomes[v].identified) for v in centres_mm}


def region_correct(positions_mm: np.ndarray, labels: np.ndarray, centres_mm: dict[int, np.ndarray]) -> dict[int, bool]:
    """Per ground-truth vertebra: the nearest labelled candidate (within 20 mm) has a label of its region."""
    keep = labels > 0
    out: dict[int, bool] = {}
    for v, centre in centres_mm.items():
        if not keep.any():
            out[v] = False
            continue
        d = np.linalg.norm(positions_mm[keep] - centre, axis=1)
        i = int(np.argmin(d))
        out[v] = bool(d[i] <= ID_MM and region_of(int(labels[keep][i])) == region_of(v))
    return out


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label of ``labels`` (0 when the prediction lacks it): the evaluator's Dice."""
    from evaluation.metrics import dice

    return {v: dice(prediction == v, reference == v) for v in labels}


# ----------------------------------------------------------------------------- one case


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def stage_figures(case: Case, real: RealCase, models: Any, options: Options | None = None) -> dict[str, Any]:
    """Detect, locate, label and oracle segment figures of one case (module docstring)."""
    import SimpleITK as sitk

    options = options or Options()
    geometry = case.geometry
    mask = sitk.GetArrayFromImage(case.mask)
    centres = {v: np.asarray(c) for v, c in case.centroids_mm.items() if v in EVALUATED and np.any(mask == v)}
    labels = sorted(centres)
    row: dict[str, Any] = {"labels": [name_of(v) for v in labels], "reference": real.reference}

    detection = detect_spine(case.ct, models.detect)
    if detection.box is None:
        row["detect"] = {"box_mean": 0.0, "box_min": 0.0, "note": detection.reason}
        return row
    fractions = box_fractions(mask, geometry, detection.box.low_mm, detection.box.high_mm, labels)
    row["detect"] = {"box_mean": _mean(list(fractions.values())), "box_min": min(fractions.values(), default=0.0)}

    candidates = locate_stage(case.ct, detection, models, options)
    z = [c[2] for c in centres.values()]
    height = None if real.complete else (min(z) - 15.0, max(z) + 15.0)
    matched = match_candidates(candidates.positions_mm, centres, height_range_mm=height)
    row["locate"] = {"candidates": len(candidates), "found": _mean([float(f) for f in matched["found"].values()]),
                     "duplicates": matched["duplicates"], "false": matched["false"],
                     "distance_mm": {name_of(v): round(d, 1) for v, d in matched["distance_mm"].items()}}

    if len(candidates):
        labelling = label_stage(candidates, options)
        decoded = np.asarray(labelling.labels)
        labelled: dict[int, np.ndarray] = {}
        for position, label in zip(candidates.positions_mm, decoded, strict=True):
            if label > 0 and int(label) not in labelled:
                labelled[int(label)] = position
        hits = identification(labelled, centres)
        regions = region_correct(candidates.positions_mm, decoded, centres)
        row["label"] = {"id_rate": _mean([float(h) for h in hits.values()]),
                        "region_ok": _mean([float(r) for r in regions.values()]),
                        "predicted": [name_of(int(v)) for v in sorted(labelled, key=lambda v: -labelled[v][2])]}
    else:
        row["label"] = {"id_rate": 0.0, "region_ok": 0.0, "predicted": []}

    segmentation = segment_vertebrae(case.ct, [(v, centres[v]) for v in labels], models.segment,
                                     floor=options.segment_floor, bone_floor=options.bone_floor)
    on_input = resample_onto(image_from_array(segmentation.labels, segmentation.grid), geometry, nearest=True,
                             default=0)
    dices = dice_per_label(sitk.GetArrayFromImage(on_input), mask, labels)
    row["segment"] = {"dice": _mean(list(dices.values())), "per_label": {name_of(v): round(d, 3)
                                                                         for v, d in dices.items()}}
    return row


def _option_flags(options: Options) -> list[str]:
    """The ``predict`` flags that reproduce ``options``' pipeline switches."""
    return ["--recentre" if options.recentre else "--no-recentre", "--ribs" if options.rib_evidence else "--no-ribs",
            "--sacrum" if options.sacrum_check else "--no-sacrum",
            "--fragments" if options.edge_fragments else "--no-fragments",
            "--bone-floor", str(options.segment_floor if options.bone_floor is None else options.bone_floor),
            "--labeller", options.labeller]


def end_to_end(real: RealCase, models_dir: Path, case: Case, workdir: Path,
               options: Options | None = None) -> dict[str, Any]:
    """``python -m algorithm predict`` in a fresh process, scored by the project's evaluator."""
    from evaluation.score import CaseFiles, score_case
    from spine.verse import write_centroid_json

    out = workdir / real.name
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "algorithm", "predict", str(real.ct), "--output", str(out),
                           "--models", str(models_dir), "--device", "cpu", "--no-qc", "-q",
                           *_option_flags(options or Options())],
                          cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    stem = next(out.glob("*_report.json")).name[: -len("_report.json")]
    report = json.loads((out / f"{stem}_report.json").read_text(encoding="utf-8"))
    reference_ctd = workdir / f"{real.name}_reference_ctd.json"
    write_centroid_json(reference_ctd, case.centroids_mm, case.geometry)
    scored = score_case(CaseFiles(real.name, real.mask, reference_ctd, out / f"{stem}_seg-vert_msk.nii.gz",
                                  out / f"{stem}_points.json"))
    return {"dice": scored["dice"], "id_rate": scored["id_rate"], "localisation_mm": scored["localisation_mm"],
            "hits": scored["hits"], "vertebrae": scored["vertebrae"],
            "false_positive_labels": scored["false_positive_labels"], "status": scored["status"],
            "predicted": [v["name"] for v in report.get("vertebrae", [])],
            "wall_s": round(wall, 2), "pipeline_s": report.get("total_s"), "peak_rss_mib": report.get("peak_rss_mib")}


# ----------------------------------------------------------------------------- command line


def _extra_cases(args: argparse.Namespace) -> list[RealCase]:
    extra = []
    for entry in args.case or []:
        if len(entry) not in (2, 3):
            raise SystemExit("error: --case takes CT MASK [CENTROIDS]")
        ct, mask = Path(entry[0]), Path(entry[1])
        extra.append(RealCase(ct.name.split(".")[0], ct, mask, Path(entry[2]) if len(entry) == 3 else None,
                              note="given on the command line"))
    for folder in args.verse or []:
        from export.readers import list_cases

        for files in list_cases(folder):
            if files.mask is None:
                continue
            extra.append(RealCase(files.case_id, files.ct, files.mask, files.centroids, note=str(folder)))
    return extra


def models_training(models_dir: Path) -> dict[str, str]:
    """Each model's ``trained_on`` metadata (which data, which real cases it saw): the three stages, and the optional
    outline and sacrum models."""
    import onnxruntime as ort

    from spine.modelmeta import ModelMeta

    out = {}
    for stage in ("detect", "locate", "segment", "outline", "sacrum"):  # the last two only where the folder has them
        if stage in ("outline", "sacrum") and not (models_dir / f"{stage}.onnx").is_file():
            continue
        session = ort.InferenceSession(str(models_dir / f"{stage}.onnx"), providers=["CPUExecutionProvider"])
        meta = ModelMeta.from_props(session.get_modelmeta().custom_metadata_map, source=stage)
        out[stage] = meta.trained_on
    return out


def seen_by(training: dict[str, str], name: str) -> list[str]:
    """The stages whose training data names this case (a name after "unseen:" in the text is not seen)."""
    return [stage for stage, text in training.items() if name in text.split("unseen:")[0]]


def format_table(rows: dict[str, dict[str, Any]], training: dict[str, str]) -> str:
    def f(value: Any, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = ["| case | labels | seen in training | detect box | locate found / dup / false | label id / region "
             "| segment Dice (oracle) | end to end Dice / id / loc mm | time / peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        labels = row.get("labels", [])
        span = f"{labels[0]}-{labels[-1]}" if labels else "-"
        det, loc, lab, seg, e2e = (row.get(k, {}) for k in ("detect", "locate", "label", "segment", "end_to_end"))
        seen = ", ".join(seen_by(training, name)) or "none"
        lines.append(
            f"| {name} | {span} ({row.get('reference', '')}) | {seen} | {f(det.get('box_mean'))} "
            f"| {f(loc.get('found'))} / {loc.get('duplicates', '-')} / {loc.get('false', '-')} "
            f"| {f(lab.get('id_rate'))} / {f(lab.get('region_ok'))} | {f(seg.get('dice'))} "
            f"| {f(e2e.get('dice'))} / {f(e2e.get('id_rate'))} / {f(e2e.get('localisation_mm'), 1)} "
            f"| {f(e2e.get('pipeline_s'), 1)} s / {f(e2e.get('peak_rss_mib'), 0)} MiB |")
    means = {f"{stage}.{key}": [r[stage][key] for r in rows.values() if r.get(stage, {}).get(key) is not None]
             for stage, key in (("locate", "found"), ("label", "id_rate"), ("label", "region_ok"),
                                ("segment", "dice"), ("end_to_end", "dice"), ("end_to_end", "id_rate"))}
    summary = {k: _mean(v) for k, v in means.items()}
    lines.append("")
    lines.append("means over cases: " + ", ".join(f"{k} {f(v)}" for k, v in summary.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/real.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--models", type=Path, metavar="DIR", help="model folder (default: the bundled models)")
    parser.add_argument("--cases", nargs="+", metavar="NAME", help="only these known real cases")
    parser.add_argument("--case", nargs="+", action="append", metavar="FILE",
                        help="another case: CT MASK [CENTROIDS] (repeatable)")
    parser.add_argument("--verse", action="append", type=Path, metavar="DIR",
                        help="every labelled case of a VerSe-layout folder (repeatable)")
    parser.add_argument("--no-end-to-end", action="store_true", help="stage figures only")
    parser.add_argument("--peak-threshold", type=float, metavar="P",
                        help="stage figures with this locate candidate threshold instead of the model's own")
    parser.add_argument("--recentre", action=argparse.BooleanOptionalAction, default=None,
                        help="candidates from the outline model's outlines (algorithm.recentre); default: the "
                             "pipeline's")
    parser.add_argument("--ribs", action=argparse.BooleanOptionalAction, default=None,
                        help="rib evidence for the labelling (algorithm.ribs); default: the pipeline's")
    parser.add_argument("--sacrum", action=argparse.BooleanOptionalAction, default=None,
                        help="the sacrum check (algorithm.sacrum; needs sacrum.onnx); default: the pipeline's")
    parser.add_argument("--bone-floor", type=bone_floor_value, default=None, metavar="P",
                        help="segment stage's floor where the CT shows bone (algorithm.segment; 0.5 = none); "
                             "default: the pipeline's")
    parser.add_argument("--fragments", action=argparse.BooleanOptionalAction, default=None,
                        help="fragments beyond the chain's cut ends (algorithm.fragments; end to end only); "
                             "default: the pipeline's")
    parser.add_argument("--labeller", choices=("decoder", "learned"), default=None,
                        help="what reads the region evidence (predict --labeller; default: the pipeline's)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    models_dir = args.models or find_model_dir().directory
    models = load_models(ModelSource(Path(models_dir), "bench"), device="cpu")
    training = models_training(Path(models_dir))
    try:
        cases = [*find_real_cases(args.cases), *_extra_cases(args)]
    except ValueError as error:  # an unknown case name: one line, not a traceback
        parser.error(str(error))
    if not cases:
        print("no real case found", file=sys.stderr)
        return 1
    default = Options()
    options = Options(peak_threshold=args.peak_threshold,
                      recentre=default.recentre if args.recentre is None else args.recentre,
                      rib_evidence=default.rib_evidence if args.ribs is None else args.ribs,
                      sacrum_check=default.sacrum_check if args.sacrum is None else args.sacrum,
                      edge_fragments=default.edge_fragments if args.fragments is None else args.fragments,
                      bone_floor=default.bone_floor if args.bone_floor is None else args.bone_floor,
                      labeller=args.labeller or default.labeller)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        for real in cases:
            log.info("%s: %s", real.name, real.note)
            case = real.load()
            rows[real.name] = stage_figures(case, real, models, options)
            if not args.no_end_to_end:
                rows[real.name]["end_to_end"] = end_to_end(real, Path(models_dir), case, Path(tmp), options)
            log.info("%s: %s", real.name, json.dumps(rows[real.name])[:600])
    print("models trained on:")
    for stage, text in training.items():
        print(f"  {stage}: {text}")
    print(format_table(rows, training))
    if args.json:
        args.json.write_text(json.dumps({"models": str(models_dir), "trained_on": training,
                                         "options": {"recentre": options.recentre, "ribs": options.rib_evidence,
                                                     "sacrum": options.sacrum_check,
                                                     "fragments": options.edge_fragments,
                                                     "bone_floor": options.bone_floor,
                                                     "peak_threshold": options.peak_threshold,
                                                     "labeller": options.labeller},
                                         "cases": rows},
                                        indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

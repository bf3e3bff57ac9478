"""Real-CT benchmark: every stage of the algorithm, and the whole of it, on real labelled CTs.

Cases: the real labelled CTs the project knows (``export.real_cases``: the bundled example and,
in a developer checkout, those of ``../shared/data``), plus any given with ``--case CT MASK
[CENTROIDS]`` or ``--verse DIR`` (a VerSe-layout folder). Per case:

- **detect**: the fraction of each ground-truth vertebra's voxels inside the detected box
  (``box_mean``, ``box_min`` over vertebrae).
- **locate**: ground-truth body centres with a candidate within 10 mm (``found``); candidates
  within 10 mm of an already matched centre (``duplicates``); candidates farther than 20 mm from
  every centre (``false``; on partially labelled cases only those within the labelled levels'
  height are counted). ``evidence``: what the locate network itself says at the true centres (its
  heatmaps' channel maxima within 6 mm of each, over the detected box, before any rule reads them):
  ``region_ok`` / ``level_ok`` / ``within_one``, the shares whose best channel has the right region
  (cervical, thoracic, lumbar), the right level, a level at most one away; ``peak_median``, the
  median centre probability there (candidates are seeded at 0.3).
- **label**: the decoder on those candidates; identification (DESIGN.md: nearest ground-truth
  centre, within 20 mm) and ``region_ok``: ground-truth vertebrae whose candidate's label lies
  in the right region (cervical, thoracic, lumbar).
- **segment** (oracle): Dice per vertebra when the segment stage is given the ground-truth
  labels and body centres, so segmentation is measured on its own.
- **end to end**: ``python -m algorithm predict`` in a fresh process (time and peak memory from
  its run report), scored by the project's evaluator (``evaluation.score.score_case``). ``labels``: per
  predicted label the reference can judge, the confidence the points file gives it and whether it is right
  (``label_confidence``); pooled over a table's cases: the ECE (``evaluation.metrics.calibration``), the wrong
  labels still at or above the pipeline's doubt threshold (``algorithm.measure.HIGH_CONFIDENCE``, 0.9: no grade
  under it) and the right ones under it.

Body centres are the annotated ones where a case has them, else estimated from the mask
(``export.real_cases.body_centres_mm``, 1-2 mm from VerSe's annotations). The table also says
which real cases each model saw in training (its ``trained_on`` metadata).

    python bench/real.py                         # all known real cases, bundled models
    python bench/real.py --models my-models/ --json real.json
    python bench/real.py --case ct.nii.gz msk.nii.gz ctd.json --verse /data/verse20
    python bench/real.py --reformats                   # also each case cropped, resliced, as a slab
    python bench/real.py --only-openkbp --openkbp dev  # the annotated head-and-neck development set
    python bench/real.py --only-openkbp --openkbp dev --reformats top-cropped  # ... and its necks without skulls
    python bench/real.py --only-openkbp --openkbp dev --reformats from-c6      # ... and a chest CT's top of each
    python bench/real.py --only-openkbp --openkbp dev --reformats from-c6 --variants-only  # the tops alone

**Reformats** (``--reformats``, ``export.reformat``): every masked case also as users meet the same
anatomy elsewhere: the sacrum cropped away, the top two levels cropped away, a VerSe-style sagittal
slab (3 mm sagittal slices, 104 mm wide, PIR), 5 mm and 3 mm slices, 4 mm pixels; labels follow (a vertebra
mostly out of view loses its label). With ``--openkbp``, each annotated head-and-neck CT with four or more
annotated vertebrae also with its top two levels cropped away (C1 and C2 with the skull: a neck CT that starts
mid-neck, where the first rib and the network are all that name the levels), and each annotated down to C7 also
from half way between C5 and C6 down (``from-c6``: a chest CT's top).

**Switches**: the pipeline's own (``--ribs``, ``--no-skull``, ..., ``--bone-floor``, ``--labeller``, as ``predict``
has them); ``--fragments``, ``--fill-skipped`` and ``--size-evidence`` act after the label stage, so on the
end-to-end figures only.

**OpenKBP** (``--openkbp dev|fit|validation``): real head-and-neck CTs (skull base to the upper thoracic
spine) with the project's own centroid annotations (``bench/annotations/openkbp-headneck``): ``dev`` is
the development set to choose on, ``fit`` the set models may train on; ``validation`` is LOCKED:
annotated before the pipeline's output on it was seen, scored once when a round of work closes. These
cases have no masks: no oracle Dice, and end to end is the identification rate and the matched
localisation error of the points.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
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

from algorithm.cli import (  # noqa: E402
    add_pipeline_settings,
    pipeline_flags,
    pipeline_options,
    pipeline_values,
)
from algorithm.detect import detect_spine  # noqa: E402
from algorithm.locate import locate_heatmaps  # noqa: E402
from algorithm.models import ModelSource, find_model_dir, load_models  # noqa: E402
from algorithm.pipeline import Options, label_stage, locate_stage  # noqa: E402
from algorithm.segment import segment_vertebrae  # noqa: E402
from export.real_cases import LOCKED_SPLIT, RealCase, find_real_cases, openkbp_cases  # noqa: E402
from export.reformat import REFORMATS  # noqa: E402
from spine.case import Case  # noqa: E402
from spine.image import Geometry, image_from_array, resample_onto  # noqa: E402
from spine.labels import EVALUATED, LOCATE_CHANNELS, anatomical_rank, name_of, region_of  # noqa: E402

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


EVIDENCE_RADIUS_MM = 6.0
"""How far from a true centre the locate network's evidence for it is read (its peaks lie 2-6 mm off)."""


def network_evidence(scores: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """The locate network's own level evidence at true vertebra centres.

    ``scores`` ``(N, 26)``: heatmap values at the centres of ``labels`` (columns in ``LOCATE_CHANNELS``
    order). The best channel ``b`` of row ``i`` is right in region when ``region(b) == region(labels[i])``,
    right in level when ``b == labels[i]``, within one when ``|rank(b) - rank(labels[i])| <= 1``
    (anatomical rank, T13 between T12 and L1); ``peak_median`` is the median of the row maxima.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(LOCATE_CHANNELS))
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score rows for {len(labels)} labels")
    if not len(labels):
        return {"region_ok": 0.0, "level_ok": 0.0, "within_one": 0.0, "peak_median": 0.0}
    best = [LOCATE_CHANNELS[i] for i in scores.argmax(axis=1)]
    pairs = list(zip(best, labels, strict=True))
    return {"region_ok": float(np.mean([region_of(b) == region_of(v) for b, v in pairs])),
            "level_ok": float(np.mean([b == v for b, v in pairs])),
            "within_one": float(np.mean([abs(anatomical_rank(b) - anatomical_rank(v)) <= 1 for b, v in pairs])),
            "peak_median": float(np.median(scores.max(axis=1)))}


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label of ``labels`` (0 when the prediction lacks it): the evaluator's Dice."""
    from evaluation.metrics import dice

    return {v: dice(prediction == v, reference == v) for v in labels}


# ----------------------------------------------------------------------------- one case


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def stage_figures(case: Case, real: RealCase, models: Any, options: Options | None = None) -> dict[str, Any]:
    """Detect, locate, label and oracle segment figures of one case (module docstring).

    A case annotated with centroids only (no mask) gets every figure but the oracle Dice, and its detect
    figure is the fraction of body centres inside the box.
    """
    import SimpleITK as sitk

    options = options or Options()
    geometry = case.geometry
    mask = None if case.mask is None else sitk.GetArrayFromImage(case.mask)
    centres = {v: np.asarray(c) for v, c in case.centroids_mm.items()
               if v in EVALUATED and (mask is None or np.any(mask == v))}
    labels = sorted(centres)
    row: dict[str, Any] = {"labels": [name_of(v) for v in labels], "reference": real.reference}

    detection = detect_spine(case.ct, models.detect)
    if detection.box is None:
        row["detect"] = {"box_mean": 0.0, "box_min": 0.0, "note": detection.reason}
        return row
    if mask is not None:
        fractions = box_fractions(mask, geometry, detection.box.low_mm, detection.box.high_mm, labels)
    else:
        low, high = np.asarray(detection.box.low_mm), np.asarray(detection.box.high_mm)
        fractions = {v: float(np.all((c >= low) & (c <= high))) for v, c in centres.items()}
    row["detect"] = {"box_mean": _mean(list(fractions.values())), "box_min": min(fractions.values(), default=0.0)}

    candidates = locate_stage(case.ct, detection, models, options)
    z = [c[2] for c in centres.values()]
    height = None if real.complete else (min(z) - 15.0, max(z) + 15.0)
    matched = match_candidates(candidates.positions_mm, centres, height_range_mm=height)
    row["locate"] = {"candidates": len(candidates), "found": _mean([float(f) for f in matched["found"].values()]),
                     "duplicates": matched["duplicates"], "false": matched["false"],
                     "distance_mm": {name_of(v): round(d, 1) for v, d in matched["distance_mm"].items()}}
    if labels:
        maps = locate_heatmaps(case.ct, detection.box, models.locate, overlap=options.overlap)
        at_truth = maps.candidates_at(np.array([centres[v] for v in labels]), radius_mm=EVIDENCE_RADIUS_MM)
        row["locate"]["evidence"] = {k: round(v, 3) for k, v in network_evidence(at_truth.scores, labels).items()}

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

    if mask is None:
        return row
    segmentation = segment_vertebrae(case.ct, [(v, centres[v]) for v in labels], models.segment,
                                     floor=options.segment_floor, bone_floor=options.bone_floor)
    on_input = resample_onto(image_from_array(segmentation.labels, segmentation.grid), geometry, nearest=True,
                             default=0)
    dices = dice_per_label(sitk.GetArrayFromImage(on_input), mask, labels)
    row["segment"] = {"dice": _mean(list(dices.values())), "per_label": {name_of(v): round(d, 3)
                                                                         for v, d in dices.items()}}
    return row


def points_figures(points_json: Path, centres_mm: dict[int, np.ndarray]) -> dict[str, Any]:
    """End-to-end figures of a centroid-only case: the evaluator's identification and localisation on points.

    ``id_rate`` = hits / annotated vertebrae (DESIGN.md's rule); ``localisation_mm`` = the mean distance of
    each annotated vertebra's predicted point, over those predicted (VerSe's matched definition: without a
    mask there is no image diagonal to penalise a miss with).
    """
    from spine.gc import points_to_centroids, read_points

    predicted, _ = points_to_centroids(read_points(points_json))
    hits = identification(predicted, centres_mm)
    distances = [float(np.linalg.norm(predicted[v] - c)) for v, c in centres_mm.items() if v in predicted]
    return {"id_rate": _mean([float(h) for h in hits.values()]), "localisation_mm": _mean(distances),
            "hits": int(sum(hits.values())), "vertebrae": len(centres_mm),
            "false_positive_labels": len(set(predicted) - set(centres_mm)), "dice": None}


def label_confidence(points_json: Path, centres_mm: dict[int, np.ndarray]) -> list[list]:
    """The pipeline's claims that the reference can judge, ``[name, confidence, right]`` head to foot: the
    confidence its points file gives each label (GC ``probability``; of a name given twice, the point the evaluator
    keeps, :func:`spine.gc.points_by_label`) and whether it is right. A label the reference annotates is right when
    DESIGN.md's rule identifies it; a label it does not annotate is wrong when its point lies within ``FOUND_MM``
    of an annotated centre (another vertebra's name on an annotated vertebra, e.g. C2 called C3 where only C1-C2
    are annotated) and cannot be judged otherwise (left out: the annotation may simply stop short of it)."""
    from spine.gc import points_by_label, read_points

    kept, _ = points_by_label(read_points(points_json))
    points = {v: np.asarray(p.point_mm, dtype=np.float64) for v, p in kept.items()}
    hits = identification(points, centres_mm)
    centres = np.array(list(centres_mm.values())).reshape(-1, 3)
    claims = []
    for v in sorted(kept, key=anatomical_rank):
        if v in centres_mm:
            right = hits[v]
        elif len(centres) and np.linalg.norm(centres - points[v], axis=1).min() <= FOUND_MM:
            right = False
        else:
            continue
        claims.append([name_of(v), round(float(kept[v].probability), 4), right])
    return claims


def confidence_summary(claims: Sequence[Sequence]) -> dict[str, Any]:
    """Pooled ``label_confidence`` claims: how many, how many wrong, the ECE (``evaluation.metrics.calibration``),
    and how the pipeline's doubt threshold (``algorithm.measure.HIGH_CONFIDENCE``: no grade under it) splits them:
    wrong labels it still calls confident, right ones it doubts (item 5 of the real-CT issue: a wrong label must
    not say 0.94)."""
    from algorithm.measure import HIGH_CONFIDENCE
    from evaluation.metrics import calibration

    p = np.array([float(c[1]) for c in claims])
    right = np.array([bool(c[2]) for c in claims])
    _, ece = calibration(p, right)
    return {"labels": len(p), "wrong": int((~right).sum()), "ece": round(ece, 4), "threshold": HIGH_CONFIDENCE,
            "wrong_confident": int((~right & (p >= HIGH_CONFIDENCE)).sum()),
            "right_doubted": int((right & (p < HIGH_CONFIDENCE)).sum())}


def end_to_end(real: RealCase, models_dir: Path, case: Case, workdir: Path,
               options: Options | None = None) -> dict[str, Any]:
    """``python -m algorithm predict`` in a fresh process, scored by the project's evaluator."""
    from evaluation.score import CaseFiles, score_case
    from spine.verse import write_centroid_json

    out = workdir / real.name
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "algorithm", "predict", str(real.ct), "--output", str(out),
                           "--models", str(models_dir), "--device", "cpu", "--no-qc", "-q",
                           *pipeline_flags(options or Options())],
                          cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    stem = next(out.glob("*_report.json")).name[: -len("_report.json")]
    report = json.loads((out / f"{stem}_report.json").read_text(encoding="utf-8"))
    timing = {"predicted": [v["name"] for v in report.get("vertebrae", [])], "wall_s": round(wall, 2),
              "pipeline_s": report.get("total_s"), "peak_rss_mib": report.get("peak_rss_mib")}
    centres = {v: np.asarray(c) for v, c in case.centroids_mm.items() if v in EVALUATED}
    timing["labels"] = label_confidence(out / f"{stem}_points.json", centres)
    if real.mask is None:
        return {**points_figures(out / f"{stem}_points.json", centres), **timing}
    reference_ctd = workdir / f"{real.name}_reference_ctd.json"
    write_centroid_json(reference_ctd, case.centroids_mm, case.geometry)
    scored = score_case(CaseFiles(real.name, real.mask, reference_ctd, out / f"{stem}_seg-vert_msk.nii.gz",
                                  out / f"{stem}_points.json"))
    return {"dice": scored["dice"], "id_rate": scored["id_rate"], "localisation_mm": scored["localisation_mm"],
            "hits": scored["hits"], "vertebrae": scored["vertebrae"],
            "false_positive_labels": scored["false_positive_labels"], "status": scored["status"], **timing}


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


def reformat_cases(cases: Sequence[RealCase], names: list[str] | None, folder: Path) -> list[RealCase]:
    """Every applicable reformat (``export.reformat``) of every case, written under ``folder``: all of them for a
    masked case, the crops (``CENTROID_ONLY``) for one with centroids only (OpenKBP: its neck without the skull, and
    a chest CT's top)."""
    from export.reformat import reformats
    from spine.image import write_image
    from spine.verse import write_centroid_json

    out = []
    for real in cases:
        for recipe, variant in reformats(real.load(), names):
            stem = folder / variant.case_id
            ct, ctd = Path(f"{stem}_ct.nii.gz"), Path(f"{stem}_ctd.json")
            mask = None if variant.mask is None else Path(f"{stem}_seg-vert_msk.nii.gz")
            write_image(variant.ct, ct)
            if variant.mask is not None:
                write_image(variant.mask, mask)
            write_centroid_json(ctd, variant.centroids_mm, variant.geometry)
            out.append(RealCase(variant.case_id, ct, mask, ctd, reference=real.reference, complete=real.complete,
                                note=f"{real.name} reformatted: {recipe.name}"))
    return out


def models_training(models_dir: Path) -> dict[str, str]:
    """Each model's ``trained_on`` metadata (which data, which real cases it saw): the three stages, and the optional
    outline, sacrum and skull-base models."""
    import onnxruntime as ort

    from spine.modelmeta import ModelMeta

    out = {}
    for stage in ("detect", "locate", "segment", "outline", "sacrum", "skull"):  # the last three where the folder has
        if stage in ("outline", "sacrum", "skull") and not (models_dir / f"{stage}.onnx").is_file():
            continue
        session = ort.InferenceSession(str(models_dir / f"{stage}.onnx"), providers=["CPUExecutionProvider"])
        meta = ModelMeta.from_props(session.get_modelmeta().custom_metadata_map, source=stage)
        out[stage] = meta.trained_on
    return out


def seen_by(training: dict[str, str], name: str) -> list[str]:
    """The stages whose training data names this case (a name after "unseen:" in the text is not seen); a reformat
    (``<case>~<variant>``) was seen where its case was."""
    name = name.split("~")[0]
    return [stage for stage, text in training.items() if name in _names_in(text.split("unseen:")[0])]


def _names_in(text: str) -> set[str]:
    """The case names a ``trained_on`` text mentions, as whole words (``openkbp-pt_2`` is not in ``openkbp-pt_28``)."""
    return {word.strip(".-") for word in re.findall(r"[\w.~-]+", text)}


def format_table(rows: dict[str, dict[str, Any]], training: dict[str, str]) -> str:
    """A Markdown table of the rows, then their means and how many were labelled whole (end-to-end id 1)."""
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
    for key in ("region_ok", "level_ok"):
        means[f"locate.evidence.{key}"] = [r["locate"]["evidence"][key] for r in rows.values()
                                           if "evidence" in r.get("locate", {})]
    summary = {k: _mean(v) for k, v in means.items()}
    whole = [r["end_to_end"].get("id_rate") == 1.0 for r in rows.values() if "end_to_end" in r]
    lines.append("")
    lines.append("means over cases: " + ", ".join(f"{k} {f(v)}" for k, v in summary.items()))
    claims = [c for r in rows.values() for c in r.get("end_to_end", {}).get("labels", [])]
    if claims:
        c = confidence_summary(claims)
        lines.append(f"label confidence (end to end, the labels the reference can judge): {c['labels']} labels, "
                     f"{c['wrong']} wrong, ECE {c['ece']:.3f}; wrong at >= {c['threshold']:.2f}: "
                     f"{c['wrong_confident']} of {c['wrong']}; right under it: {c['right_doubted']} of "
                     f"{c['labels'] - c['wrong']}")
    if whole:
        lines.append(f"every vertebra labelled right (end to end): {sum(whole)} of {len(whole)} cases")
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
    parser.add_argument("--reformats", nargs="*", metavar="NAME",
                        help="also every masked case in the forms users meet (export.reformat: "
                             f"{', '.join(REFORMATS)}; none named: all), and every --openkbp case in those of them "
                             "that need no mask (top-cropped, from-c6)")
    parser.add_argument("--openkbp", choices=("dev", "fit", "validation"), action="append",
                        help="the project's annotated OpenKBP head-and-neck CTs of this set (centroids only): dev to "
                             "choose on, fit (what models train on), validation the LOCKED set: report it once, never "
                             "choose on it")
    parser.add_argument("--only-openkbp", action="store_true", help="leave out the masked real cases")
    parser.add_argument("--variants-only", action="store_true",
                        help="with --reformats: score the variants only, not the cases they come from")
    parser.add_argument("--no-end-to-end", action="store_true", help="stage figures only")
    parser.add_argument("--peak-threshold", type=float, metavar="P",
                        help="stage figures with this locate candidate threshold instead of the model's own")
    add_pipeline_settings(parser)  # the pipeline's own settings, as predict has them (module docstring)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.variants_only and args.reformats is None:
        parser.error("--variants-only needs --reformats")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    models_dir = args.models or find_model_dir().directory
    models = load_models(ModelSource(Path(models_dir), "bench"), device="cpu")
    training = models_training(Path(models_dir))
    try:
        cases = [] if args.only_openkbp else [*find_real_cases(args.cases), *_extra_cases(args)]
    except ValueError as error:  # an unknown case name: one line, not a traceback
        parser.error(str(error))
    groups: dict[str, list[RealCase]] = {"real CTs": cases}
    for split in args.openkbp or []:
        title = f"OpenKBP {split}" + {"dev": " (development set)", "fit": " (seen in training where a model says so)",
                                      LOCKED_SPLIT: " (LOCKED set)"}[split]
        groups[title] = openkbp_cases(split)
        if split == LOCKED_SPLIT:
            log.warning("scoring the LOCKED OpenKBP split: report these figures once; choose nothing on them")
    options = pipeline_options(args, peak_threshold=args.peak_threshold)
    rows: dict[str, dict[str, Any]] = {}
    tables: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        if args.reformats is not None:
            try:
                variants = {"reformats": reformat_cases(cases, args.reformats or None, Path(tmp))}
                for split in args.openkbp or []:  # the neck without the skull; a chest CT's top
                    variants[f"OpenKBP {split}, reformatted"] = reformat_cases(openkbp_cases(split),
                                                                               args.reformats or None, Path(tmp))
                groups.update(variants)
            except ValueError as error:
                parser.error(str(error))
            if args.variants_only:
                groups = {title: members for title, members in groups.items() if title in variants}
        if not any(groups.values()):
            print("no real case found", file=sys.stderr)
            return 1
        for title, members in groups.items():
            tables[title] = []
            for real in members:
                log.info("%s: %s", real.name, real.note)
                case = real.load()
                rows[real.name] = stage_figures(case, real, models, options)
                if not args.no_end_to_end:
                    rows[real.name]["end_to_end"] = end_to_end(real, Path(models_dir), case, Path(tmp), options)
                log.info("%s: %s", real.name, json.dumps(rows[real.name])[:600])
                tables[title].append(real.name)
    print("models trained on:")
    for stage, text in training.items():
        print(f"  {stage}: {text if len(text) <= 600 else text[:600] + ' ... (--json has it whole)'}")
    for title, names in tables.items():
        if names:
            print(f"\n## {title}\n")
            print(format_table({name: rows[name] for name in names}, training))
    if args.json:
        args.json.write_text(json.dumps({"models": str(models_dir), "trained_on": training,
                                         "options": {**pipeline_values(options),
                                                     "peak_threshold": options.peak_threshold},
                                         "cases": rows},
                                        indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the algorithm: wall time and peak memory per stage, per case, one fresh process per case.

Cases: the example CT (``examples/totalsegmentator-example/ct.nii.gz``) and a synthetic
512x512x400 CT built from it (resampled to 0.78 x 0.78 x 1.0 mm and padded with air, int16,
the size of a typical abdominal scan). Each case runs in its own subprocess (models loaded,
CT read, GC exec-mode inference and outputs written), which reports per stage its wall time
and its peak resident memory (``VmHWM`` of ``/proc/self/status``, reset between stages).

Models: the bundled ``algorithm/models`` when present, else the test fixture models (built
with torch; analytic stand-ins, so only the timings of the plumbing mean anything); the
table says which.

    python bench/algorithm.py                         # both cases on the CPU
    python bench/algorithm.py --device cuda --json bench.json
    python bench/algorithm.py --cases synthetic --size 512 512 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # run as a script, this file (bench/algorithm.py) would shadow the algorithm package
EXAMPLE = REPO / "examples" / "totalsegmentator-example" / "ct.nii.gz"
CASES = ("example", "synthetic")

log = logging.getLogger("bench.algorithm")


def _size(text: str) -> int:
    value = int(text)
    if not 16 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"size must be in 16..4096, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/algorithm.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--models", type=Path, metavar="DIR", help="model folder (default: bundled, else fixtures)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="execution provider (cpu)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases to run")
    parser.add_argument("--size", nargs=3, type=_size, default=(512, 512, 400), metavar=("X", "Y", "Z"),
                        help="voxels of the synthetic CT (512 512 400)")
    parser.add_argument("--threads", type=int, help="CPU threads per model (default: all)")
    parser.add_argument("--no-force", action="store_true",
                        help="when detect finds no spine, stop there (default: still time locate over the whole scan "
                             "and segment 17 vertebrae, marked with *)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--child", nargs=3, metavar=("CT", "MODELS", "DEVICE"), help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------- one case (child process)


def run_child(ct: Path, models_dir: Path, device: str, threads: int | None, force: bool) -> dict[str, Any]:
    """Run one case in this process and return its stage records (printed as JSON by ``main``)."""
    from algorithm.inputs import load_ct
    from algorithm.models import ModelSource, load_models
    from algorithm.outputs import commit_outputs
    from algorithm.pipeline import gc_outputs, predict_case
    from algorithm.report import StageTimer
    from spine.layout import AlgorithmLayout

    timer = StageTimer()
    with timer.stage("load models"):
        models = load_models(ModelSource(models_dir, "bench"), device=device, threads=threads)  # type: ignore[arg-type]
    with timer.stage("read"):
        image = load_ct(ct)
    result = predict_case(image, models)
    with tempfile.TemporaryDirectory() as out, timer.stage("write"):
        commit_outputs(gc_outputs(result, AlgorithmLayout(output_dir=Path(out))))
    stages = timer.to_list()
    stages[2:2] = result.timer.to_list()
    if force and not result.spine_found:
        stages += forced_stages(image, models)
    return {"size": list(image.GetSize()), "providers": models.providers, "stages": stages,
            "vertebrae": [v.name for v in result.vertebrae], "note": result.note}


def forced_stages(image: Any, models: Any) -> list[dict[str, Any]]:
    """Locate over the whole scan and segment 17 vertebrae on its centre line, whatever detect said.

    For models that find no spine in the case (untrained placeholders, or a case without one),
    so that the cost of the later stages is still measured; an upper bound (the whole scan is
    larger than any spine box). Stage names carry a ``*``.
    """
    import numpy as np

    from algorithm.detect import SpineBox
    from algorithm.locate import locate_vertebrae
    from algorithm.report import StageTimer
    from algorithm.segment import segment_vertebrae
    from spine.image import Geometry, image_from_array, resample_onto

    geometry = Geometry.of(image)
    corners = geometry.index_to_world(np.array([[a, b, c] for a in (0, geometry.size[0] - 1)
                                                for b in (0, geometry.size[1] - 1) for c in (0, geometry.size[2] - 1)]))
    box = SpineBox(tuple(corners.min(axis=0)), tuple(corners.max(axis=0)))
    centre = corners.mean(axis=0)
    vertebrae = [(label, centre + np.array([0.0, 0.0, 30.0 * (12 - i)]))
                 for i, label in enumerate(range(8, 25))]  # T1..L5, 30 mm apart
    timer = StageTimer()
    with timer.stage("locate*"):
        locate_vertebrae(image, box, models.locate)
    with timer.stage("segment*"):
        segmentation = segment_vertebrae(image, vertebrae, models.segment)
    with timer.stage("resample*"):
        resample_onto(image_from_array(segmentation.labels, segmentation.grid), geometry, nearest=True)
    return timer.to_list()


# --------------------------------------------------------------------------- parent


def synthetic_ct(path: Path, size: tuple[int, int, int]) -> Path:
    """The example CT resampled onto a ``size`` grid at 0.78 x 0.78 x 1.0 mm (air outside), int16 .mha."""
    import SimpleITK as sitk

    example = sitk.ReadImage(str(EXAMPLE))
    spacing = (0.78, 0.78, 1.0)
    centre = example.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in example.GetSize()])
    direction = example.GetDirection()
    matrix = [direction[0:3], direction[3:6], direction[6:9]]
    half = [(n - 1) / 2 * s for n, s in zip(size, spacing, strict=True)]
    origin = [centre[r] - sum(matrix[r][c] * half[c] for c in range(3)) for r in range(3)]
    image = sitk.Resample(example, list(size), sitk.Transform(), sitk.sitkLinear, origin, spacing, direction,
                          -1024.0, sitk.sitkInt16)
    sitk.WriteImage(image, str(path), False)
    return path


def resolve_models(requested: Path | None, work: Path) -> tuple[Path, str]:
    from algorithm.models import BUNDLED_MODEL_DIR, has_stage_files

    if requested is not None:
        return requested, f"given ({requested})"
    if has_stage_files(BUNDLED_MODEL_DIR):
        return BUNDLED_MODEL_DIR, "bundled (algorithm/models)"
    sys.path.insert(0, str(REPO / "test"))
    from algorithm_fixtures import build_fixture_models

    return build_fixture_models(work / "fixture-models"), "test fixtures (no bundled models: plumbing timings only)"


def run_case(ct: Path, models: Path, device: str, threads: int | None, force: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(ct), str(models), device]
    if threads:
        command += ["--threads", str(threads)]
    if not force:
        command += ["--no-force"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{ct}: benchmark child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'case':<10} {'voxels':<14} {'stage':<12} {'wall s':>8} {'peak RSS MiB':>13}"]
    for case, result in results.items():
        voxels = "x".join(map(str, result["size"]))
        for record in result["stages"]:
            rss = record["peak_rss_mib"]
            lines.append(f"{case:<10} {voxels:<14} {record['stage']:<12} {record['wall_s']:>8.2f} "
                         f"{rss if rss is not None else float('nan'):>13.0f}")
        total = sum(r["wall_s"] for r in result["stages"])
        peak = max((r["peak_rss_mib"] or 0.0) for r in result["stages"])
        lines.append(f"{case:<10} {voxels:<14} {'TOTAL':<12} {total:>8.2f} {peak:>13.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        ct, models, device = args.child
        print(json.dumps(run_child(Path(ct), Path(models), device, args.threads, not args.no_force)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not EXAMPLE.is_file():
        print(f"error: {EXAMPLE}: the example CT is missing", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="verse-gc-bench-") as tmp:
        work = Path(tmp)
        models, which = resolve_models(args.models, work)
        cases: dict[str, Path] = {}
        if "example" in args.cases:
            cases["example"] = EXAMPLE
        if "synthetic" in args.cases:
            log.info("building the synthetic %s CT ...", "x".join(map(str, args.size)))
            cases["synthetic"] = synthetic_ct(work / "synthetic.mha", tuple(args.size))
        results = {}
        for case, ct in cases.items():
            log.info("running %s ...", case)
            results[case] = run_case(ct, models, args.device, args.threads, not args.no_force)
    providers = next(iter(results.values()))["providers"] if results else []
    print(f"models: {which}; device: {args.device} (providers {providers}); CPUs: {os.cpu_count()}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"models": which, "device": args.device, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

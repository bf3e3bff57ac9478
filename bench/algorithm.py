"""Benchmark the algorithm: wall time and peak memory per stage, per case, one fresh process per case.

Cases: the example CT (``examples/totalsegmentator-example/ct.nii.gz``) and a synthetic
512x512x400 CT built from it (resampled to 0.78 x 0.78 x 1.0 mm and padded with air, int16,
the size of a typical abdominal scan). Each case runs in its own subprocess (models loaded,
CT read, GC exec-mode inference and outputs written), which reports per stage its wall time
and its peak resident memory (``VmHWM`` of ``/proc/self/status``, reset between stages).

Baselines measured in the same run, each case alternating with them (``--repeat`` runs each, in the order
ABBA so that a load drifting over the run weighs on both alike; medians):

- the **I/O floor**: a fresh process that reads the same CT and writes outputs of the same size (an empty
  label map and points file, through the same writers), no model; the ratio says what the models and the
  rules cost over what any algorithm container pays;
- with ``--baseline REF``, the same case run by the tree of commit ``REF`` (a temporary ``git worktree``, its
  own bench child and, unless ``--models`` is given, its own bundled models): the ratio says what the
  changes since ``REF`` cost. Alternating the two on the same cores keeps a drifting load from favouring
  either; still, on shared cores the same code comes out up to 10 % apart in medians of three runs
  (docs/benchmarks.md), so a smaller time ratio says nothing there.

The issue's budget (``GOAL_S`` seconds and ``GOAL_MIB`` MiB per case on 2 CPU cores) is printed beside.

Models: the bundled ``algorithm/models`` when present, else the test fixture models (built
with torch; analytic stand-ins, so only the timings of the plumbing mean anything); the
table says which.

    python bench/algorithm.py                         # both cases on the CPU
    python bench/algorithm.py --device cuda --json bench.json
    python bench/algorithm.py --cases synthetic --size 512 512 1000
    python bench/algorithm.py --baseline main~3 --repeat 2   # against an earlier commit, alternating
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # run as a script, this file (bench/algorithm.py) would shadow the algorithm package
EXAMPLE = REPO / "examples" / "totalsegmentator-example" / "ct.nii.gz"
CASES = ("example", "synthetic")
GOAL_S = 180.0
"""Wall-time budget of one case on 2 CPU cores (the real-CT issue's done-when)."""
GOAL_MIB = 4096.0
"""Peak-memory budget of one case."""

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
    parser.add_argument("--baseline", metavar="REF", help="also run each case on the tree of this git commit, "
                        "alternating with this tree (its own bundled models unless --models is given)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="runs of each case (and of each baseline), alternating; medians reported (1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--child", nargs=3, metavar=("CT", "MODELS", "DEVICE"), help=argparse.SUPPRESS)
    parser.add_argument("--floor-child", metavar="CT", help=argparse.SUPPRESS)
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


def run_floor_child(ct: Path) -> dict[str, Any]:
    """The I/O floor in this process: read the CT as the algorithm does and write an empty label map of its
    size and an empty points file through the algorithm's own writers; no model is loaded."""
    import SimpleITK as sitk

    from algorithm.inputs import load_ct
    from algorithm.outputs import commit_outputs
    from algorithm.pipeline import CaseResult, gc_outputs
    from algorithm.report import StageTimer
    from spine.image import Geometry
    from spine.layout import AlgorithmLayout

    timer = StageTimer()
    with timer.stage("read"):
        image = load_ct(ct)
    with tempfile.TemporaryDirectory() as out, timer.stage("write"):
        labels = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        labels.CopyInformation(image)
        empty = CaseResult(Geometry.of(image), labels, ())
        commit_outputs(gc_outputs(empty, AlgorithmLayout(output_dir=Path(out))))
    return {"size": list(image.GetSize()), "providers": [], "stages": timer.to_list(), "vertebrae": [], "note": ""}


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


@contextmanager
def baseline_tree(ref: str, work: Path) -> Iterator[Path]:
    """A detached ``git worktree`` of commit ``ref`` under ``work``, removed afterwards."""
    tree = work / "baseline"
    done = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"--baseline {ref}: git worktree failed: {done.stderr.strip().splitlines()[-1:]}")
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def run_case(ct: Path, models: Path | None, device: str, threads: int | None, force: bool, *,
             tree: Path = REPO, floor: bool = False) -> dict[str, Any]:
    """One case in a fresh process of ``tree``'s bench child (its own models when ``models`` is None), or the I/O
    floor (``floor``); adds ``process_s``, the child's whole wall time, imports and model loading included."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    script = str(tree / "bench" / "algorithm.py")
    if floor:
        command = [sys.executable, script, "--floor-child", str(ct)]
    else:
        command = [sys.executable, script, "--child", str(ct), str(models or tree / "algorithm" / "models"), device]
        if threads:
            command += ["--threads", str(threads)]
        if not force:
            command += ["--no-force"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{ct}: benchmark child of {tree} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = elapsed
    return result


def totals(result: dict[str, Any]) -> tuple[float, float]:
    """A run's summed stage wall time (s) and its peak resident memory over the stages (MiB)."""
    return (sum(r["wall_s"] for r in result["stages"]),
            max((r["peak_rss_mib"] or 0.0) for r in result["stages"]) if result["stages"] else 0.0)


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Medians over repeated runs of one case: ``{kind}_s``, ``{kind}_process_s`` and ``{kind}_mib`` for each kind
    of run (``this``, ``floor``, ``baseline``)."""
    out: dict[str, float] = {}
    for kind, results in runs.items():
        if not results:
            continue
        out[f"{kind}_s"] = statistics.median(totals(r)[0] for r in results)
        out[f"{kind}_process_s"] = statistics.median(r["process_s"] for r in results)
        out[f"{kind}_mib"] = statistics.median(totals(r)[1] for r in results)
    return out


def ratio_table(summaries: dict[str, dict[str, float]], baseline: str | None) -> str:
    """Per case: this tree's median time and memory, the I/O floor's, the baseline's, their ratios and the
    budget."""
    head = f"{'case':<10} {'':<9} {'stages s':>9} {'process s':>10} {'peak MiB':>9}"
    lines = [head]
    for case, s in summaries.items():
        for kind, name in (("this", "this tree"), ("floor", "I/O floor"), ("baseline", baseline or "")):
            if f"{kind}_s" in s:
                lines.append(f"{case:<10} {name[:9]:<9} {s[f'{kind}_s']:>9.2f} {s[f'{kind}_process_s']:>10.2f} "
                             f"{s[f'{kind}_mib']:>9.0f}")
        parts = [f"x{s['this_process_s'] / s['floor_process_s']:.1f} the I/O floor's process time, "
                 f"x{s['this_mib'] / s['floor_mib']:.2f} its memory"]
        if "baseline_s" in s:
            parts.append(f"x{s['this_s'] / s['baseline_s']:.3f} the baseline's stage time, "
                         f"x{s['this_mib'] / s['baseline_mib']:.3f} its memory")
        parts.append(f"budget {GOAL_S:.0f} s / {GOAL_MIB:.0f} MiB: "
                     f"{'within' if s['this_process_s'] <= GOAL_S and s['this_mib'] <= GOAL_MIB else 'OVER'}")
        lines.append(f"{case:<10} {'ratios':<9} " + "; ".join(parts))
    return "\n".join(lines)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'case':<10} {'voxels':<14} {'stage':<12} {'wall s':>8} {'peak RSS MiB':>13}"]
    for case, result in results.items():
        voxels = "x".join(map(str, result["size"]))
        for record in result["stages"]:
            rss = record["peak_rss_mib"]
            lines.append(f"{case:<10} {voxels:<14} {record['stage']:<12} {record['wall_s']:>8.2f} "
                         f"{rss if rss is not None else float('nan'):>13.0f}")
        total, peak = totals(result)
        lines.append(f"{case:<10} {voxels:<14} {'TOTAL':<12} {total:>8.2f} {peak:>13.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        ct, models, device = args.child
        print(json.dumps(run_child(Path(ct), Path(models), device, args.threads, not args.no_force)))
        return 0
    if args.floor_child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        print(json.dumps(run_floor_child(Path(args.floor_child))))
        return 0
    if args.repeat < 1:
        print(f"error: --repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        return 2
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
        with _maybe_baseline(args.baseline, work) as tree:
            results, runs = {}, {}
            for case, ct in cases.items():
                runners = _runners(ct, models, args, tree)
                runs[case] = {kind: [] for kind in runners}
                for repeat in range(args.repeat):
                    log.info("running %s (%d of %d) ...", case, repeat + 1, args.repeat)
                    order = list(runners) if repeat % 2 == 0 else list(runners)[::-1]  # ABBA: a drifting load cancels
                    for kind in order:
                        runs[case][kind].append(runners[kind]())
                results[case] = runs[case]["this"][-1]
    summaries = {case: summary(r) for case, r in runs.items()}
    providers = next(iter(results.values()))["providers"] if results else []
    print(f"models: {which}; device: {args.device} (providers {providers}); CPUs: {os.cpu_count()}")
    print(table(results))
    print(f"\nmedians of {args.repeat} run(s) each, alternating; stage time is the sum of the stages above, process "
          "time the child's whole life (imports and model loading included):")
    print(ratio_table(summaries, args.baseline))
    if args.json:
        args.json.write_text(json.dumps({"models": which, "device": args.device, "baseline": args.baseline,
                                         "results": results, "runs": runs, "summary": summaries}, indent=2))
    return 0


def _runners(ct: Path, models: Path, args: argparse.Namespace, tree: Path | None) -> dict[str, Any]:
    """One case's runs by kind: this tree, the I/O floor and, with a baseline tree, the baseline (its own models
    unless ``--models`` named some)."""
    force = not args.no_force
    runners = {"this": lambda: run_case(ct, models, args.device, args.threads, force),
               "floor": lambda: run_case(ct, None, args.device, None, False, floor=True)}
    if tree is not None:
        runners["baseline"] = lambda: run_case(ct, args.models, args.device, args.threads, force, tree=tree)
    return runners


@contextmanager
def _maybe_baseline(ref: str | None, work: Path) -> Iterator[Path | None]:
    if ref is None:
        yield None
        return
    with baseline_tree(ref, work) as tree:
        yield tree


if __name__ == "__main__":
    sys.exit(main())

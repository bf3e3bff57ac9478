"""Benchmark of the evaluator against the I/O floor: one case, 20 cases, and memory.

The case: a 512x512x400 label map at 0.7x0.7x1 mm with 20 vertebra-like shapes (body,
arch, transverse and spinous processes) stacked along z on a curved line; ground truth
``.nii.gz`` (as VerSe ships), prediction ``.mha`` (as GC jobs write), the prediction
shifted, partly eroded and dilated, missing one vertebra and with one false-positive label.

Measured in one run, every figure against its own floor, each a separate subprocess timed
by wall clock (shared cores are noisy: runs are interleaved and the median is reported):

1. one case: the whole evaluator process (folder mode) vs a process that only reads both
   volumes into arrays (SimpleITK), median of ``--repeat`` (5) each;
2. ``--cases`` (20) cases: the evaluator's throughput vs reading the same volumes in a
   process pool of the same size (the pool the evaluator chose, from its log);

   both against two floors: the plain read (each volume copied into a fresh array) and a lean
   one that reads as the evaluator does (views of the images, freed memory kept);
3. peak memory: the largest resident set of any process of the one-case run and of the
   20-case run (a pool worker), vs the two volumes' in-memory size.

Optional: MedPy as documented (``--peer``; ``dc`` and ``hd95`` per label on full volumes,
``--peer-labels K`` timed and extrapolated); a definition check of our per-vertebra Dice
and HD95 against a plain full-volume SciPy implementation (``--check-labels K``, HD95 of
K labels, ~15 s each at full size; 0 skips it).

    python bench/evaluation.py            # full size, a few minutes on 2 cores
    python bench/evaluation.py --quick    # 192x192x160, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
CASE = "sub-bench001"
LABELS = tuple(range(5, 25))  # C5..L5: 20 vertebrae
MISSING_LABEL = 14  # T7: not predicted
FALSE_POSITIVE_LABEL = 25  # L6: predicted, not in the ground truth


# --------------------------------------------------------------------------- synthetic case


def vertebra(shape_zyx: tuple[int, int, int], centre_mm: np.ndarray, spacing_zyx: np.ndarray,
             scale: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """A vertebra-like mask in its own box: elliptic body, posterior ring, transverse and spinous processes.

    ``centre_mm`` is the body centre (z, y, x) in mm from the volume corner; +y is posterior.
    Returns (box, boolean mask of the box).
    """
    half_mm = np.array([10.0, 45.0, 40.0]) * scale
    extent_y = np.array([-20.0, 60.0]) * scale  # the posterior elements reach further back
    low = np.floor((centre_mm - np.array([half_mm[0], -extent_y[0], half_mm[2]])) / spacing_zyx).astype(int)
    high = np.ceil((centre_mm + np.array([half_mm[0], extent_y[1], half_mm[2]])) / spacing_zyx).astype(int) + 1
    low = np.maximum(low, 0)
    high = np.minimum(high, shape_zyx)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    z, y, x = (np.arange(s.start, s.stop) * sp - c for s, sp, c in zip(box, spacing_zyx, centre_mm, strict=True))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    s = scale
    body = ((x / (20 * s)) ** 2 + (y / (15 * s)) ** 2 <= 1) & (np.abs(z) <= 8 * s)
    ring_r = np.sqrt(x**2 + (y - 24 * s) ** 2)
    arch = (ring_r >= 8 * s) & (ring_r <= 12.5 * s) & (y >= 14 * s) & (np.abs(z) <= 5 * s)
    transverse = (np.abs(x) <= 36 * s) & (np.abs(y - 22 * s) <= 3 * s) & (np.abs(z) <= 3 * s)
    spinous = (np.abs(x) <= 3 * s) & (y >= 34 * s) & (y <= 55 * s) & (np.abs(z + 0.25 * (y - 34 * s)) <= 4 * s)
    return box, body | arch | transverse | spinous


def synthesise(size_xyz: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) uint8 label maps in (z, y, x) order."""
    rng = np.random.default_rng(seed)
    shape = (size_xyz[2], size_xyz[1], size_xyz[0])
    spacing = np.array(spacing_xyz[::-1], dtype=np.float64)
    extent = np.array(shape) * spacing
    gt = np.zeros(shape, dtype=np.uint8)
    pitch = extent[0] / (len(LABELS) + 0.5)
    scale = pitch / 20.0
    for n, label in enumerate(LABELS):  # C5 at the top (high z), L5 at the bottom
        z = extent[0] - pitch * (n + 0.75)
        t = n / (len(LABELS) - 1)
        y = extent[1] * 0.40 + 12.0 * scale * math.sin(2 * math.pi * t)  # lordosis/kyphosis
        x = extent[2] * 0.5 + rng.normal(0, 1.5)
        level_scale = scale * (0.7 + 0.3 * t)
        box, mask = vertebra(shape, np.array([z, y, x]), spacing, level_scale)
        region = gt[box]
        region[mask & (region == 0)] = label

    prediction = np.roll(gt, (1, 1, -1), axis=(0, 1, 2))  # shifted by one voxel along every axis
    boxes = ndimage.find_objects(prediction)
    cross = ndimage.generate_binary_structure(3, 1)
    for n, label in enumerate(LABELS):
        box = boxes[label - 1]
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        region = prediction[padded]
        own = region == label
        if label == MISSING_LABEL:
            region[own] = 0
        elif n % 3 == 1:  # under-segmented by one voxel
            region[own & ~ndimage.binary_erosion(own, cross)] = 0
        elif n % 3 == 2:  # over-segmented into the background by one voxel
            region[ndimage.binary_dilation(own, cross) & (region == 0)] = label
    z0, y0, x0 = (np.array(shape) * [0.04, 0.5, 0.5]).astype(int)
    prediction[z0:z0 + 6, y0:y0 + 10, x0:x0 + 10] = FALSE_POSITIVE_LABEL
    return gt, prediction


def write_case(folder: Path, array: np.ndarray, spacing_xyz: tuple[float, float, float], suffix: str) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-100.0, -150.0, 200.0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CASE}_seg-vert_msk{suffix}"
    sitk.WriteImage(image, str(path), True)
    return path


def replicate(path: Path, count: int) -> list[Path]:
    """``count`` cases sharing ``path``'s data (hard links, else copies): names differ, bytes do not."""
    out = []
    for n in range(count):
        target = path.with_name(path.name.replace(CASE, f"sub-many{n:03d}"))
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        out.append(target)
    return out


# --------------------------------------------------------------------------- timed subprocesses

MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "rc": done.returncode, "stderr": done.stderr[-3000:]}))
"""
"""Runs a command and reports its wall time and the largest resident set of it and its children."""

FLOOR = """
import sys
from concurrent.futures import ProcessPoolExecutor
import SimpleITK as sitk

lean = sys.argv[2] == "lean"

def start():
    if lean:  # evaluation.workers.retain_freed_memory's three mallopt calls, without importing the package
        import ctypes, ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        for option, value in ((-8, 1), (-4, 0), (-1, 2**31 - 1)):  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD
            libc.mallopt(option, value)

def read(path):
    image = sitk.ReadImage(path)
    return (sitk.GetArrayViewFromImage(image) if lean else sitk.GetArrayFromImage(image)).shape

workers, paths = int(sys.argv[1]), sys.argv[3:]
if workers == 1:
    start()
    for path in paths:
        read(path)
else:
    with ProcessPoolExecutor(workers, initializer=start) as pool:
        list(pool.map(read, paths))
"""
"""The I/O floor: read the volumes into arrays, inline or in a pool of the evaluator's size. ``plain``: a
plain read (a copy into a fresh array, as the issue defines the floor); ``lean``: the evaluator's own way
of reading (a view of the image, freed memory kept for the next volume), a floor no faster reader of
these files with SimpleITK could go under."""

PEER = """
import json, sys, time
import numpy as np
import SimpleITK as sitk
from medpy.metric.binary import dc, hd95

pred_path, gt_path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
gt_image = sitk.ReadImage(gt_path)
gt = sitk.GetArrayFromImage(gt_image)
pred = sitk.GetArrayFromImage(sitk.ReadImage(pred_path))
spacing = gt_image.GetSpacing()[::-1]
t_read = time.perf_counter() - t0
labels = [int(v) for v in np.unique(gt) if v != 0]
timed, dice, hd = [], {}, {}
for label in labels[:limit] if limit > 0 else labels:
    t = time.perf_counter()
    p, g = pred == label, gt == label
    dice[label] = float(dc(p, g))
    hd[label] = float(hd95(p, g, voxelspacing=spacing)) if p.any() else None
    timed.append(time.perf_counter() - t)
print(json.dumps({"read_s": t_read, "labels": labels, "per_label_s": timed, "dice": dice, "hd95": hd}))
"""


def measured(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall time and peak RSS (MiB, any process of the run) of ``command``; exits on failure."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env,
                         cwd=REPO, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{command[:4]} failed ({result['rc']}): {result['stderr']}")
    return result


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return elapsed, result.stdout


# --------------------------------------------------------------------------- plain definitions


def plain_dice(p: np.ndarray, g: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g))


def plain_hd95(p: np.ndarray, g: np.ndarray, spacing_zyx: tuple[float, ...]) -> float:
    """Full-volume definition: 6-cross erosion (outside = background), SciPy EDT, directed P95, max."""
    cross = ndimage.generate_binary_structure(3, 1)
    s_p = p & ~ndimage.binary_erosion(p, cross, border_value=0)
    s_g = g & ~ndimage.binary_erosion(g, cross, border_value=0)
    p_to_g = ndimage.distance_transform_edt(~s_g, sampling=spacing_zyx)[s_p]
    g_to_p = ndimage.distance_transform_edt(~s_p, sampling=spacing_zyx)[s_g]
    return float(max(np.percentile(p_to_g, 95), np.percentile(g_to_p, 95)))


def definition_check(gt: np.ndarray, pred: np.ndarray, spacing_xyz: tuple[float, float, float],
                     ours: dict, check_labels: int) -> dict[str, float | int]:
    from spine.labels import name_of

    spacing_zyx = tuple(spacing_xyz[::-1])
    dice_diff, hd_diff, hd_checked = 0.0, 0.0, 0
    for label in LABELS:
        mine = ours["per_vertebra"][name_of(label)]
        p, g = pred == label, gt == label
        dice_diff = max(dice_diff, abs(plain_dice(p, g) - mine["dice"]))
        if mine["predicted"] and (check_labels <= 0 or hd_checked < check_labels):
            hd_diff = max(hd_diff, abs(plain_hd95(p, g, spacing_zyx) - mine["hd95"]))
            hd_checked += 1
    return {"dice_max_abs_diff": dice_diff, "hd95_max_abs_diff_mm": hd_diff, "hd95_labels_checked": hd_checked}


# --------------------------------------------------------------------------- main


def evaluator(predictions: Path, ground_truth: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "evaluation", "folders", "--predictions", str(predictions), "--ground-truth",
            str(ground_truth), "--output", str(output), "--no-progress", *extra]


def pool_size(stderr: str) -> int:
    """The evaluator's pool size, from its log line ("... with N workers (...)")."""
    for line in stderr.splitlines():
        if " workers (" in line:
            return int(line.split(" workers (")[0].rsplit(" ", 1)[-1])
    raise SystemExit(f"no worker count in the evaluator's log: {stderr[-500:]}")


def one_case(gt_dir: Path, pred_dir: Path, gt_path: Path, pred_path: Path, workdir: Path, repeat: int,
             env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Interleaved runs of the floor and the evaluator on one case: medians and peaks."""
    floors, leans, ours = [], [], []
    for _ in range(repeat):
        floors.append(measured([sys.executable, "-c", FLOOR, "1", "plain", str(gt_path), str(pred_path)], env))
        leans.append(measured([sys.executable, "-c", FLOOR, "1", "lean", str(gt_path), str(pred_path)], env))
        ours.append(measured(evaluator(pred_dir, gt_dir, workdir / "metrics.json"), env))
    floor_s = float(np.median([r["wall_s"] for r in floors]))
    lean_s = float(np.median([r["wall_s"] for r in leans]))
    ours_s = float(np.median([r["wall_s"] for r in ours]))
    return ({"floor_s": floor_s, "ours_s": ours_s, "ratio": ours_s / floor_s,
             "lean_floor_s": lean_s, "lean_ratio": ours_s / lean_s,
             "floor_runs_s": [round(r["wall_s"], 3) for r in floors],
             "ours_runs_s": [round(r["wall_s"], 3) for r in ours],
             "floor_peak_mb": max(r["peak_rss_mb"] for r in floors),
             "ours_peak_mb": max(r["peak_rss_mb"] for r in ours)}, ours[-1])


def many_cases(gt_path: Path, pred_path: Path, workdir: Path, count: int, env: dict[str, str],
               workers: int | None) -> dict[str, Any]:
    """``count`` cases: the evaluator (pool of its own choosing, or ``workers``) vs reading them in that pool."""
    gt_dir, pred_dir = workdir / "many-gt", workdir / "many-pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gts = replicate(shutil.copy(gt_path, gt_dir / gt_path.name), count)
    preds = replicate(shutil.copy(pred_path, pred_dir / pred_path.name), count)
    (gt_dir / gt_path.name).unlink()
    (pred_dir / pred_path.name).unlink()
    extra = ["--workers", str(workers)] if workers else []
    ours = measured(evaluator(pred_dir, gt_dir, workdir / "many.json", *extra), env)
    size = pool_size(ours["stderr"])
    paths = [str(p) for pair in zip(gts, preds, strict=True) for p in pair]
    floor = measured([sys.executable, "-c", FLOOR, str(size), "plain", *paths], env)
    lean = measured([sys.executable, "-c", FLOOR, str(size), "lean", *paths], env)
    return {"cases": count, "workers": size, "floor_s": floor["wall_s"], "ours_s": ours["wall_s"],
            "ratio": ours["wall_s"] / floor["wall_s"], "lean_floor_s": lean["wall_s"],
            "lean_ratio": ours["wall_s"] / lean["wall_s"], "cases_per_s": count / ours["wall_s"],
            "floor_peak_mb": floor["peak_rss_mb"], "ours_peak_mb": ours["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 400), metavar=("X", "Y", "Z"),
                        help="volume size in voxels (default 512 512 400)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 1.0), metavar=("X", "Y", "Z"),
                        help="voxel spacing in mm (default 0.7 0.7 1)")
    parser.add_argument("--quick", action="store_true", help="small run: 192x192x160 voxels")
    parser.add_argument("--repeat", type=int, default=5, help="one-case runs of floor and evaluator (median)")
    parser.add_argument("--cases", type=int, default=20, help="cases of the throughput run (0 skips it)")
    parser.add_argument("--workers", type=int, help="pool size of the throughput run (default: the evaluator's)")
    parser.add_argument("--peer", action="store_true", help="also time MedPy (minutes at full size)")
    parser.add_argument("--peer-labels", type=int, default=2, metavar="K",
                        help="time MedPy on K labels and extrapolate (0 = all; default 2)")
    parser.add_argument("--check-labels", type=int, default=2, metavar="K",
                        help="labels for the full-volume HD95 check (0 = skip the check; default 2)")
    parser.add_argument("--workdir", type=Path, help="where to write the volumes (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = (192, 192, 160) if args.quick else tuple(args.size)
    spacing = tuple(float(s) for s in args.spacing)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="verse-bench-"))
    try:
        t = time.perf_counter()
        gt, pred = synthesise(size, spacing, args.seed)  # type: ignore[arg-type]
        gt_path = write_case(workdir / "gt", gt, spacing, ".nii.gz")  # type: ignore[arg-type]
        pred_path = write_case(workdir / "pred", pred, spacing, ".mha")  # type: ignore[arg-type]
        volumes_mb = (gt.nbytes + pred.nbytes) / 2**20
        print(f"case: {size[0]}x{size[1]}x{size[2]} voxels at {spacing} mm, {len(LABELS)} vertebrae, ground truth "
              f"{gt_path.stat().st_size / 1e6:.1f} MB .nii.gz, prediction {pred_path.stat().st_size / 1e6:.1f} MB "
              f".mha, {volumes_mb:.0f} MiB in memory (made in {time.perf_counter() - t:.1f} s); {os.cpu_count()} "
              "CPUs, shared: figures are noisy")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        single, last = one_case(workdir / "gt", workdir / "pred", gt_path, pred_path, workdir, args.repeat, env)
        record = json.loads((workdir / "metrics.json").read_text())["case"][CASE]
        results: dict[str, Any] = {"size": list(size), "spacing_mm": list(spacing), "vertebrae": len(LABELS),
                                   "cpu_count": os.cpu_count(), "volumes_mb": volumes_mb, "one_case": single}
        print(f"1. one case, median of {args.repeat}: floor {single['floor_s']:.2f} s, evaluator "
              f"{single['ours_s']:.2f} s = {single['ratio']:.2f} x floor (runs {single['ours_runs_s']} vs "
              f"{single['floor_runs_s']}); lean floor {single['lean_floor_s']:.2f} s = {single['lean_ratio']:.2f} x")
        if args.cases > 0:
            many = many_cases(gt_path, pred_path, workdir, args.cases, env, args.workers)
            results["many_cases"] = many
            print(f"2. {many['cases']} cases, {many['workers']} workers: reading them in that pool "
                  f"{many['floor_s']:.2f} s, evaluator {many['ours_s']:.2f} s = {many['ratio']:.2f} x "
                  f"({many['cases_per_s']:.2f} cases/s); lean floor {many['lean_floor_s']:.2f} s = "
                  f"{many['lean_ratio']:.2f} x")
        peak = max(single["ours_peak_mb"], results.get("many_cases", {}).get("ours_peak_mb", 0.0))
        results["peak_mb"] = peak
        print(f"3. peak memory of any evaluator process: {peak:.0f} MiB = {peak / volumes_mb:.2f} x the two volumes "
              f"({volumes_mb:.0f} MiB); the floor's {single['floor_peak_mb']:.0f} MiB "
              f"= {single['floor_peak_mb'] / volumes_mb:.2f} x")
        print(f"   evaluator log: {next(line for line in last['stderr'].splitlines() if 'workers (' in line)}")

        if args.peer:
            peer_check(gt_path, pred_path, record, args.peer_labels, single["ours_s"], env, results)
        if args.check_labels > 0:
            t = time.perf_counter()
            check = definition_check(gt, pred, spacing, record, args.check_labels)  # type: ignore[arg-type]
            print(f"definition check vs plain full-volume SciPy: Dice max abs diff {check['dice_max_abs_diff']:.2e} "
                  f"({len(LABELS)} labels), HD95 max abs diff {check['hd95_max_abs_diff_mm']:.2e} mm "
                  f"({check['hd95_labels_checked']} labels) [{time.perf_counter() - t:.0f} s]")
            results.update(check)
        print(f"case scores: dice {record['dice']:.4f}, hd95 {record['hd95']:.3f} mm (matched "
              f"{record['hd95_matched']:.3f}), id_rate {record['id_rate']:.3f}, hd_missing {record['hd_missing']}, "
              f"false_positive_labels {record['false_positive_labels']}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def peer_check(gt_path: Path, pred_path: Path, record: dict[str, Any], peer_labels: int, ours_s: float,
               env: dict[str, str], results: dict[str, Any]) -> None:
    """MedPy as documented, timed (extrapolated from ``peer_labels`` labels) and compared on Dice."""
    try:
        import medpy  # noqa: F401
    except ImportError:
        print("peer: MedPy not installed (pip install medpy); skipped")
        return
    elapsed, out = timed([sys.executable, "-c", PEER, str(pred_path), str(gt_path), str(peer_labels)], env)
    peer = json.loads(out)
    per_label = peer["per_label_s"]
    n_all = len(peer["labels"])
    extrapolated = len(per_label) < n_all
    peer_total = elapsed + (n_all - len(per_label)) * float(np.mean(per_label)) if extrapolated else elapsed
    note = (f"extrapolated linearly from {len(per_label)} of {n_all} labels ({np.mean(per_label):.1f} s per label, "
            f"measured {elapsed:.1f} s)" if extrapolated else "measured, all labels")
    print(f"peer, MedPy dc + hd95: {peer_total:7.2f} s = {peer_total / ours_s:.1f} x ours ({note})")
    from spine.labels import name_of

    diffs = [abs(peer["dice"][str(v)] - record["per_vertebra"][name_of(v)]["dice"])
             for v in LABELS if str(v) in peer["dice"]]
    print(f"    MedPy vs ours, Dice max abs diff: {max(diffs):.2e} "
          "(MedPy's hd95 pools both directions, ours takes the max of the directed ones)")
    results.update(peer_s=peer_total, peer_extrapolated=extrapolated, peer_labels_timed=len(per_label),
                   peer_over_ours=peer_total / ours_s)


if __name__ == "__main__":
    sys.exit(main())

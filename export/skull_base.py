"""Train the skull-base model: where the spinal canal enters the skull (the foramen magnum), from real CTs.

The skull is to the top of the spine what the sacrum is to its foot: C1 lies just below the foramen
magnum, so a chain that starts there starts at C1 (:mod:`algorithm.skull`). No vertebra labels are needed
to learn where it is: every OpenKBP head-and-neck CT carries its clinical spinal-cord contour, and a
radiotherapy cord contour starts where the canal leaves the skull. The target is the centre of the
contour's top slice, a Gaussian heatmap of ``SIGMA_MM``; on the annotated ``fit`` and ``dev`` sets it lies
a median 7 mm above and 6 mm behind the annotated C1 centre (sd 7 mm in height: the contours' own spread).

Training cases (``training_cases``): the OpenKBP ``train`` split less the ``dev`` annotation set (kept to
choose on) and the locked ``validation`` split (never opened here). Negatives: patches away from the
foramen magnum, the same CTs with the skull masked away above a random height below it (how a chest or
neck CT that starts under the skull looks: the crop box's edge must not be the answer), and CTs without a
skull (the real abdomen, chest and lumbar CTs beside the data, synthetic phantoms).

Usage: ``python -m export.skull_base --out runs/skull [--iterations N] [--resume]``, then
``--export algorithm/models/skull.onnx`` from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from export.cord import CordLine
from export.real_cases import ANNOTATIONS, shared_data_dir
from spine.image import read_image
from spine.modelmeta import Intensity, ModelMeta
from spine.preprocess import crop_patch, gaussian_heatmap

__all__ = ["CHANNEL", "PATCH_ZYX", "SIGMA_MM", "SPACING_MM", "Volume", "load_volume",
           "skull_base_meta", "training_cases"]

log = logging.getLogger(__name__)

SPACING_MM = 4.0
"""Isotropic grid of the model: coarse (the head-and-neck CTs have 3.5-5.4 mm pixels), fine enough for a
point that is placed within a few millimetres."""
PATCH_ZYX = (48, 48, 48)
"""192 mm a side: the skull base and the upper neck in one view."""
SIGMA_MM = 6.0
CHANNEL = "skull_base"
MIN_BELOW_MM, MAX_BELOW_MM = 30.0, 140.0
"""Masked negatives: the skull cleared away above a height this far below the foramen magnum."""


@dataclass
class Volume:
    """A CT on the model's identity grid: HU (z, y, x) int16, the grid's origin, the target point or None."""

    name: str
    hu: np.ndarray
    origin_mm: np.ndarray
    point_mm: np.ndarray | None

    def index_of(self, point_mm: np.ndarray) -> np.ndarray:
        return ((np.asarray(point_mm) - self.origin_mm) / SPACING_MM)[::-1]


def load_volume(name: str, ct_path: Path, point_mm: np.ndarray | None) -> Volume:
    """The CT resampled (linear) onto an identity-direction grid of ``SPACING_MM`` covering it."""
    image = read_image(ct_path)
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in size])).T.reshape(-1, 3)])
    low, high = corners.min(axis=0), corners.max(axis=0)
    shape = np.maximum(np.ceil((high - low) / SPACING_MM).astype(int), 1)
    out = sitk.Resample(image, [int(s) for s in shape], sitk.Transform(), sitk.sitkLinear,
                        tuple(float(v) for v in low + SPACING_MM / 2), (SPACING_MM,) * 3,
                        (1, 0, 0, 0, 1, 0, 0, 0, 1), -1024.0, sitk.sitkInt16)
    return Volume(name, sitk.GetArrayFromImage(out), low + SPACING_MM / 2, point_mm)


def _numbers(folder: Path) -> set[int]:
    return {int(p.name.split("_")[1]) for p in folder.glob("pt_*_ctd.json")}


def training_cases(shared: Path) -> tuple[list[tuple[str, Path, np.ndarray | None]], list[tuple[str, Path]]]:
    """(positives: name, CT, foramen-magnum point; skull-free negatives: name, CT) from the shared data."""
    kbp = shared / "openkbp-headneck" / "train"
    held = _numbers(ANNOTATIONS / "dev")
    positives = []
    for ct in sorted(kbp.glob("pt_*_ct.nii.gz"), key=lambda p: int(p.name.split("_")[1])):
        number = int(ct.name.split("_")[1])
        cord = kbp / f"pt_{number}_spinal-cord.nii.gz"
        if number in held or not cord.is_file():
            continue
        point = CordLine.of(sitk.ReadImage(str(cord))).top_mm()
        if point is not None:
            positives.append((f"openkbp-pt_{number}", ct, point))
    negatives = [("totalsegmentator-example", shared / "totalsegmentator-example" / "ct.nii.gz"),
                 ("totalsegmentator-aorta", shared / "totalsegmentator-aorta" / "ct.nii.gz"),
                 ("tptbox-lumbar", shared / "tptbox-lumbar" / "sub-ct_label-22_ct.nii.gz"),
                 ("verse-sub-verse014", shared / "verse-sub-verse014" / "sub-verse014_ct.nii.gz")]
    return positives, [(n, p) for n, p in negatives if p.is_file()]


def skull_base_meta(trained_on: str, notes: str = "", *, commit: str = "", version: str = "") -> ModelMeta:
    """The model's self-description: a detect-stage (whole-CT, coarse) model with one channel."""
    return ModelMeta(stage="detect", spacing_zyx_mm=(SPACING_MM,) * 3, patch_shape_zyx=PATCH_ZYX,
                     input_channels=("ct",), channels=(CHANNEL,), intensity=Intensity(),
                     heatmap_sigma_mm=SIGMA_MM, peak_threshold=0.5, trained_on=trained_on, notes=notes,
                     commit=commit, version=version)


def _patch(volume: Volume, start: np.ndarray, clear_above: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) ``PATCH_ZYX`` at array index ``start`` (may reach outside: air); above world height
    ``clear_above`` the CT is air and the target empty."""
    shape = np.array(PATCH_ZYX)
    hu = crop_patch(volume.hu, start + shape / 2, PATCH_ZYX, pad_value=-1024)[0].astype(np.float32)
    target = np.zeros(PATCH_ZYX, dtype=np.float32)
    z_world = volume.origin_mm[2] + (start[0] + np.arange(shape[0])) * SPACING_MM
    if clear_above is not None:
        hu[z_world > clear_above] = -1024
    elif volume.point_mm is not None:
        target = gaussian_heatmap(PATCH_ZYX, volume.index_of(volume.point_mm) - start, SIGMA_MM, (SPACING_MM,) * 3)
    return Intensity().apply(hu), target


def sample(volumes: list[Volume], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One training patch: half around a foramen magnum (shifted up to 18 voxels, skull box edge moved by a
    random mask above it), a quarter the same CT with the skull cleared away, a quarter anywhere."""
    shape = np.array(PATCH_ZYX)
    positives = [v for v in volumes if v.point_mm is not None]
    draw = rng.random()
    if draw < 0.75:
        volume = positives[rng.integers(len(positives))]
        centre = volume.index_of(volume.point_mm)
        if draw < 0.5:
            start = np.round(centre - shape / 2 + rng.integers(-18, 19, 3)).astype(int)
            x, target = _patch(volume, start, None)
            if rng.random() < 0.5:  # the crop box's top edge somewhere above, not a fixed tell
                cut = volume.point_mm[2] + rng.uniform(12, 80)
                z_world = volume.origin_mm[2] + (start[0] + np.arange(shape[0])) * SPACING_MM
                x[z_world > cut] = Intensity().background
            return x, target
        clear = volume.point_mm[2] - rng.uniform(MIN_BELOW_MM, MAX_BELOW_MM)
        top = round((clear - volume.origin_mm[2]) / SPACING_MM)
        start = np.array([top - int(rng.integers(shape[0] // 3, shape[0])),
                          round(centre[1] - shape[1] / 2) + int(rng.integers(-12, 13)),
                          round(centre[2] - shape[2] / 2) + int(rng.integers(-12, 13))])
        return _patch(volume, start, clear)
    volume = volumes[rng.integers(len(volumes))]
    start = np.array([int(rng.integers(min(0, s - p), max(1, s - p + 1)))
                      for s, p in zip(volume.hu.shape, shape, strict=True)])
    x, target = _patch(volume, start, None)
    return x, target


def train(volumes: list[Volume], out: Path, iterations: int, *, resume: bool, seed: int = 0,
          batch: int = 4, lr: float = 2e-3) -> Path:
    import torch

    from export.networks import NetworkConfig, UNet3D
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    net = UNet3D(1, 1, NetworkConfig(base_channels=8, depth=4, output_bias=-4.0))
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "skull.pt"
    start, history = 0, []
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        start, history = state["iteration"], state["history"]
    rng = np.random.default_rng(seed + start)
    t0 = time.time()
    for it in range(start, iterations):
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * it / iterations))
        xs, ys = zip(*(sample(volumes, rng) for _ in range(batch)), strict=True)
        x = torch.from_numpy(np.stack(xs)[:, None])
        y = torch.from_numpy(np.stack(ys)[:, None])
        logits = net(x)
        weight = 1.0 + 50.0 * y
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
        if (it + 1) % 50 == 0 or it + 1 == iterations:
            log.info("iteration %d/%d loss %.4f (%.1f s)", it + 1, iterations, np.mean(history[-50:]),
                     time.time() - t0)
            torch.save({"network": net.state_dict(), "optimiser": optimiser.state_dict(), "iteration": it + 1,
                        "history": history}, checkpoint)
    return checkpoint


def export(checkpoint: Path, target: Path, trained_on: str, notes: str) -> Path:
    """The checkpoint as ONNX (sigmoid probabilities) with its metadata; ORT parity against torch."""
    import onnxruntime as ort
    import torch

    from export.networks import NetworkConfig, ProbabilityModel, UNet3D
    from export.onnx_export import _export_graph, _write_metadata, git_commit
    net = UNet3D(1, 1, NetworkConfig(base_channels=8, depth=4, output_bias=-4.0))
    state = torch.load(checkpoint, weights_only=False)
    net.load_state_dict(state["network"])
    model = ProbabilityModel(net).eval()
    meta = skull_base_meta(trained_on, notes, commit=git_commit(), version=f"0.1.0+skull.it{state['iteration']}")
    tmp = target.with_suffix(".tmp.onnx")
    _export_graph(model, meta, tmp)
    _write_metadata(tmp, meta, "verse-gc skull base (foramen magnum) heatmap")
    x = np.random.default_rng(0).normal(size=(1, 1, *PATCH_ZYX)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    if np.abs(got - expected).max() > 1e-4:
        raise RuntimeError(f"ONNX parity failed: {np.abs(got - expected).max():.2g}")
    tmp.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.skull_base", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint skull.pt, cases.json)")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--resume", action="store_true", help="go on from the run folder's checkpoint")
    parser.add_argument("--export", type=Path, help="write the run's checkpoint as this ONNX file and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shared = shared_data_dir()
    if shared is None:
        parser.error("the shared data folder is needed (VERSE_GC_DATA or ../shared/data)")
    positives, negatives = training_cases(shared)
    trained_on = (f"{len(positives)} real OpenKBP train-split head-and-neck CTs, the foramen magnum from their "
                  f"cord contours (the dev annotation set and the validation split left out): "
                  f"{', '.join(n for n, _, _ in positives)}; real CTs without a skull: "
                  f"{', '.join(n for n, _ in negatives)}")
    if args.export:
        export(args.out / "skull.pt", args.export, trained_on,
               "foramen magnum heatmap at 4 mm, sigma 6 mm; trained by export.skull_base")
        log.info("wrote %s", args.export)
        return 0
    volumes = [load_volume(n, p, point) for n, p, point in positives] + \
              [load_volume(n, p, None) for n, p in negatives]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cases.json").write_text(json.dumps({"positives": [n for n, _, _ in positives],
                                                      "negatives": [n for n, _ in negatives]}, indent=1))
    log.info("%d CTs with a foramen magnum, %d without a skull", len(positives), len(negatives))
    train(volumes, args.out, args.iterations, resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

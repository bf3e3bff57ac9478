"""Fixture models and phantoms for the algorithm's tests: real ONNX files, outputs known analytically.

The three stage models are tiny torch modules without learned weights, exported with
``torch.onnx.export(..., dynamo=False)`` and stamped with :class:`spine.modelmeta.ModelMeta`
metadata exactly as ``export`` does, then run by ONNX Runtime like the real ones:

- detect: ``sigmoid((hu - 150) / 50)``: every bone-dense voxel is "spine";
- locate: a matched filter for the phantom's vertebral bodies (balls of bone): the fraction of
  the largest cube inside a body that is bone around each voxel (to the 4th power: 1 near a
  body's centre, small elsewhere) times the bone map blurred by a Gaussian (peaks exactly on a
  ball's centre, about 0.7 there);
  the 26 channels gate that peak by the body's mean density, which the phantom sets per label
  (:func:`vertebra_hu`), so the per-label scores name the right vertebra;
- segment: ``sigmoid((hu - 300) / 50) * sigmoid(20 (heatmap - 0.4))``: bone within about
  11 mm of the centroid (the heatmap channel's Gaussian, sigma 8 mm).

:func:`make_phantom` builds the matching CT: bodies of bone stacked along the world z axis
(one per label, density per label), joined by a posterior bar, in a soft-tissue cylinder, plus
a dense blob outside the body that the detect stage must ignore (not the largest component).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spine.image import Geometry
from spine.labels import LOCATE_CHANNELS, name_of
from spine.modelmeta import Intensity, ModelMeta

__all__ = [
    "BODY_RADIUS_MM",
    "PHANTOM_LABELS",
    "Phantom",
    "add_metadata",
    "build_fixture_models",
    "detect_meta",
    "export_module",
    "fixture_model_dir",
    "gc_input",
    "locate_meta",
    "make_phantom",
    "segment_meta",
    "vertebra_hu",
]

BODY_RADIUS_MM = 9.0
BODY_STEP_MM = 32.0
PHANTOM_LABELS: tuple[int, ...] = (19, 20, 21, 22, 23, 24)  # T12, L1..L5
INTENSITY = Intensity(hu_min=-1000.0, hu_max=2000.0, center=0.0, scale=1000.0)
# A direction with permuted and flipped axes (index axes point P, I, R): nothing like RAS or LPS.
PIR_DIRECTION = (0.0, 0.0, -1.0,
                 1.0, 0.0, 0.0,
                 0.0, -1.0, 0.0)


def vertebra_hu(label: int) -> float:
    """Density of a phantom vertebral body: 400 HU for C1, 40 HU more per locate channel."""
    return 400.0 + 40.0 * LOCATE_CHANNELS.index(label)


# --------------------------------------------------------------------------- metadata


def detect_meta(**changes: object) -> ModelMeta:
    values: dict[str, object] = dict(stage="detect", spacing_zyx_mm=(3.0, 3.0, 3.0), patch_shape_zyx=(16, 16, 16),
                                     input_channels=("ct",), channels=("spine",), intensity=INTENSITY,
                                     trained_on="fixture", version="fixture-1")
    values.update(changes)
    return ModelMeta(**values)  # type: ignore[arg-type]


def locate_meta(**changes: object) -> ModelMeta:
    values: dict[str, object] = dict(stage="locate", spacing_zyx_mm=(3.0, 3.0, 3.0), patch_shape_zyx=(32, 32, 32),
                                     input_channels=("ct",), channels=tuple(name_of(c) for c in LOCATE_CHANNELS),
                                     intensity=INTENSITY, heatmap_sigma_mm=4.0, trained_on="fixture",
                                     version="fixture-1")
    values.update(changes)
    return ModelMeta(**values)  # type: ignore[arg-type]


def segment_meta(**changes: object) -> ModelMeta:
    values: dict[str, object] = dict(stage="segment", spacing_zyx_mm=(1.0, 1.0, 1.0), patch_shape_zyx=(32, 32, 32),
                                     input_channels=("ct", "heatmap"), channels=("vertebra",), intensity=INTENSITY,
                                     heatmap_sigma_mm=8.0, trained_on="fixture", version="fixture-1")
    values.update(changes)
    return ModelMeta(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- torch modules


def _modules():  # torch is imported lazily: only building fixtures needs it
    import torch
    from torch import nn

    def separable(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
        """Convolve with ``kernel`` (1-D, odd length) along z, y and x (zero padded)."""
        out = x
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = len(kernel)
            padding = [0, 0, 0]
            padding[axis] = len(kernel) // 2
            weights = torch.tensor(np.asarray(kernel, dtype=np.float32)).reshape(shape)
            out = nn.functional.conv3d(out, weights, padding=tuple(padding))
        return out

    def box(side: int) -> np.ndarray:
        return np.full(side, 1.0 / side)

    def gaussian(sigma_vox: float) -> np.ndarray:
        d = np.arange(-int(np.ceil(2 * sigma_vox)), int(np.ceil(2 * sigma_vox)) + 1)
        kernel = np.exp(-0.5 * (d / sigma_vox) ** 2)
        return kernel / kernel.sum()

    class Detect(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(x * 20.0 - 3.0)  # (hu - 150) / 50 with x = hu / 1000

    class Locate(nn.Module):
        def __init__(self, spacing_mm: float, channel_hu: Sequence[float]) -> None:
            super().__init__()
            # The largest cube inside a body (half diagonal <= radius) and a small one for its density.
            self.fill = box(2 * int(BODY_RADIUS_MM / np.sqrt(3.0) / spacing_mm) + 1)
            self.mean = box(2 * int(3.0 / spacing_mm) + 1)
            self.blur = gaussian(0.5 * BODY_RADIUS_MM / spacing_mm)  # peaks exactly on a ball's centre
            self.register_buffer("mu", torch.tensor(np.asarray(channel_hu) / 1000.0,
                                                    dtype=torch.float32).reshape(1, -1, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bone = torch.sigmoid(x * 20.0 - 6.0)  # (hu - 300) / 50
            fill = separable(bone, self.fill)
            mean = separable(x, self.mean)
            gate = torch.exp(-((mean - self.mu) ** 2) / (2 * 0.012**2))
            gate = gate / (gate.amax(dim=1, keepdim=True) + 1e-6)
            peak = fill * fill
            return peak * peak * separable(bone, self.blur) * gate

    class Segment(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(x[:, :1] * 20.0 - 6.0) * torch.sigmoid((x[:, 1:2] - 0.4) * 20.0)

    class Linear(nn.Module):
        """Voxel-wise affine map: channel k = (k + 1) * x + k (for the tiling-equals-direct test)."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, channels, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.arange(1, channels + 1, dtype=torch.float32).reshape(-1, 1, 1, 1, 1))
                self.conv.bias.copy_(torch.arange(channels, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    return Detect, Locate, Segment, Linear


def add_metadata(path: Path, meta: ModelMeta, extra: dict[str, str] | None = None) -> Path:
    """Stamp ``meta`` (and ``extra`` raw props) into an ONNX file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in {**meta.to_props(), **(extra or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def export_module(module: object, meta: ModelMeta, path: Path, *, dynamic_batch: bool = True,
                  batch: int = 1) -> Path:
    """Export a torch module for ``meta``'s input shape with ``dynamo=False``, then add the metadata."""
    import torch

    module.eval()  # type: ignore[attr-defined]
    example = torch.zeros((batch, len(meta.input_channels), *meta.patch_shape_zyx))
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():  # constant kernels traced as constants: intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is the legacy exporter, on purpose
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return add_metadata(path, meta)


def build_fixture_models(folder: Path) -> Path:
    """Write ``detect.onnx``, ``locate.onnx`` and ``segment.onnx`` (module docstring) into ``folder``."""
    detect, locate, segment, _ = _modules()
    meta_locate = locate_meta()
    export_module(detect(), detect_meta(), folder / "detect.onnx")
    export_module(locate(meta_locate.spacing_zyx_mm[0], [vertebra_hu(c) for c in LOCATE_CHANNELS]), meta_locate,
                  folder / "locate.onnx")
    export_module(segment(), segment_meta(), folder / "segment.onnx")
    return folder


def build_linear_model(path: Path, meta: ModelMeta) -> Path:
    """A voxel-wise affine model with ``len(meta.channels)`` outputs (see ``Linear``)."""
    *_, linear = _modules()
    return export_module(linear(len(meta.channels)), meta, path)


@functools.cache
def fixture_model_dir() -> Path:
    """The fixture models, built once per process in a temporary folder (removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="verse-gc-fixture-models-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return build_fixture_models(folder)


# --------------------------------------------------------------------------- phantom


@dataclass(frozen=True)
class Phantom:
    """A CT with known vertebrae: ``centres_mm`` {label: LPS point}, ``truth`` label map of the bodies."""

    image: sitk.Image
    centres_mm: dict[int, np.ndarray]
    truth: sitk.Image


def make_phantom(
    *,
    labels: Sequence[int] = PHANTOM_LABELS,
    spacing_mm: Sequence[float] = (0.9, 1.1, 2.0),
    direction: Sequence[float] = PIR_DIRECTION,
    extent_mm: Sequence[float] = (140.0, 120.0, 230.0),
    centre_mm: Sequence[float] = (12.0, -30.0, 250.0),
    with_spine: bool = True,
    pixel_type: int = sitk.sitkInt16,
) -> Phantom:
    """Phantom spine CT (module docstring) on any grid; ``extent_mm`` is the world box (x, y, z) it covers."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    extent = np.asarray(extent_mm, dtype=np.float64)
    world_extent_per_axis = np.abs(matrix.T) @ extent  # extent along each index axis
    size = np.maximum(np.round(world_extent_per_axis / spacing).astype(int), 1)
    centre = np.asarray(centre_mm, dtype=np.float64)
    origin = centre - matrix @ (spacing * (size - 1) / 2.0)
    geometry = Geometry(tuple(int(s) for s in size), tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                        tuple(float(o) for o in origin), tuple(float(d) for d in matrix.ravel()))  # type: ignore[arg-type]

    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in geometry.shape_zyx), indexing="ij")
    index = np.stack([i, j, k], axis=-1)
    world = (index * spacing.astype(np.float32)) @ (matrix.T.astype(np.float32)) + origin.astype(np.float32)
    del index, i, j, k
    rel = world - centre.astype(np.float32)
    x, y, z = rel[..., 0], rel[..., 1], rel[..., 2]
    hu = np.full(geometry.shape_zyx, -1000.0, dtype=np.float32)
    hu[x**2 + y**2 <= 55.0**2] = 40.0
    truth = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    centres: dict[int, np.ndarray] = {}
    if with_spine:
        count = len(labels)
        top = (count - 1) / 2.0 * BODY_STEP_MM
        bar = (x**2 + (y - 12.0) ** 2 <= 5.0**2) & (np.abs(z) <= top + 5.0)
        hu[bar] = 250.0  # dense enough for detect (> 150 HU), not bone for locate and segment (< 300 HU)
        for n, label in enumerate(labels):
            cz = top - n * BODY_STEP_MM
            body = x**2 + y**2 + (z - cz) ** 2 <= BODY_RADIUS_MM**2
            hu[body] = vertebra_hu(label)
            truth[body] = label
            centres[int(label)] = centre + np.array([0.0, 0.0, cz])
    blob = (x - 62.0) ** 2 + (y + 40.0) ** 2 + z**2 <= 6.0**2
    hu[blob] = 900.0
    image = geometry.apply_to(sitk.Cast(sitk.GetImageFromArray(hu), pixel_type))
    truth_image = geometry.apply_to(sitk.GetImageFromArray(truth))
    return Phantom(image, centres, truth_image)


# --------------------------------------------------------------------------- GC layout


def gc_input(root: Path, image: sitk.Image, *, variant: str | None = "socket", name: str = "1c3e0f.mha") -> Path:
    """Lay a CT out as GC does under ``root``: ``images/ct/<name>`` and, unless ``variant`` is None,
    ``inputs.json`` naming it under ``socket`` (new platform) or ``interface`` (old)."""
    import json

    folder = root / "images" / "ct"
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / name), True)
    if variant is not None:
        socket = {"slug": "ct-image", "kind": "Image", "relative_path": "images/ct", "super_kind": "Image",
                  "title": "CT image", "pk": 1}
        value = {variant: socket, "image": {"pk": "0ad", "name": "case_ct.mha"}, "file": None, "value": None}
        (root / "inputs.json").write_text(json.dumps([value]))
    return folder / name


def all_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` (hidden ones included), sorted: what a test expects to be empty."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

"""Stage 1, detect: a coarse spine probability map over the whole CT -> the spine's box in world mm.

The CT is resampled once at the detect model's (coarse) spacing onto its identity-direction
model grid, run through the model in Gaussian-weighted tiles, thresholded; the largest
26-connected component is the spine and its bounding box, widened by a margin, is where
the later stages work. No spine is not an error: :func:`detect_spine` returns a
:class:`Detection` whose ``box`` is None and whose ``reason`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import cc3d
import numpy as np
import SimpleITK as sitk

from algorithm.models import StageModel
from algorithm.tiling import sliding_window
from spine.image import Geometry
from spine.preprocess import AIR_HU, model_grid

__all__ = [
    "DETECT_MARGIN_MM",
    "DETECT_THRESHOLD",
    "MIN_SPINE_VOLUME_ML",
    "Detection",
    "SpineBox",
    "crop_grid",
    "detect_spine",
    "largest_component_box",
    "resample_ct",
    "run_on_grid",
    "spine_axis",
    "sub_grid",
]

log = logging.getLogger(__name__)

DETECT_THRESHOLD = 0.5
"""Spine probability above which a voxel counts as spine."""
DETECT_MARGIN_MM = 20.0
"""Added on every side of the detected spine's box: the coarse map's blur plus half a vertebra."""
MIN_SPINE_VOLUME_ML = 2.0
"""A largest component smaller than this (a few cm^3, less than one vertebral body) is no spine."""


@dataclass(frozen=True)
class SpineBox:
    """Axis-aligned box in LPS world mm: ``low_mm <= p <= high_mm`` (x, y, z)."""

    low_mm: tuple[float, float, float]
    high_mm: tuple[float, float, float]

    @property
    def size_mm(self) -> tuple[float, float, float]:
        return tuple(float(h - lo) for lo, h in zip(self.low_mm, self.high_mm, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, list[float]]:
        return {"low_mm": [round(v, 2) for v in self.low_mm], "high_mm": [round(v, 2) for v in self.high_mm]}


@dataclass(frozen=True)
class Detection:
    """The detect stage's result: the box (None when no spine) and numbers to log."""

    box: SpineBox | None
    reason: str
    max_probability: float
    spine_volume_ml: float
    axis_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    """``(N, 3)`` LPS points along the detected spine, head to feet (:func:`spine_axis`)."""


def resample_ct(image: sitk.Image, grid: Geometry, *, default: float = AIR_HU) -> np.ndarray:
    """Linear resampling of the CT onto ``grid`` straight to float32 ``(z, y, x)``.

    The input keeps its own pixel type (no whole-volume float copy); only the output, on the
    (coarse or cropped) stage grid, is allocated.
    """
    resampled = sitk.Resample(image, list(grid.size), sitk.Transform(), sitk.sitkLinear, grid.origin_mm,
                              grid.spacing_mm, grid.direction, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def run_on_grid(image: sitk.Image, grid: Geometry, model: StageModel, *, overlap: float) -> np.ndarray:
    """A whole-grid stage (detect, locate): the CT on ``grid``, mapped as the model says, through
    Gaussian-weighted sliding windows; returns ``(channels, z, y, x)`` float32."""
    meta = model.meta
    network_input = meta.intensity.apply(resample_ct(image, grid))[None]
    return sliding_window(network_input, model.run, meta.patch_shape_zyx, len(meta.channels), overlap=overlap,
                          pad_value=meta.intensity.background, batch_size=model.batch_size)


def sub_grid(grid: Geometry, start_zyx: Sequence[int], shape_zyx: Sequence[int]) -> Geometry:
    """The part of an identity-direction ``grid`` starting at array index ``start_zyx`` (may lie outside)."""
    spacing = np.asarray(grid.spacing_mm)
    index_xyz = np.asarray(start_zyx, dtype=np.float64)[::-1]
    origin = np.asarray(grid.origin_mm) + grid.matrix @ (index_xyz * spacing)
    size = tuple(int(s) for s in shape_zyx)[::-1]
    return Geometry(size=size, spacing_mm=grid.spacing_mm,  # type: ignore[arg-type]
                    origin_mm=tuple(float(o) for o in origin), direction=grid.direction)  # type: ignore[arg-type]


def crop_grid(grid: Geometry, box: SpineBox) -> Geometry:
    """The part of an identity-direction ``grid`` inside ``box`` (voxels aligned with ``grid``'s).

    Raises ValueError when the box misses the grid.
    """
    low = np.floor(grid.world_to_index(np.asarray(box.low_mm)) + 1e-6).astype(int)
    high = np.ceil(grid.world_to_index(np.asarray(box.high_mm)) - 1e-6).astype(int)
    last = np.asarray(grid.size) - 1
    if np.any(high < 0) or np.any(low > last) or np.any(high < low):
        raise ValueError(f"box {box} lies outside the grid")
    low, high = np.clip(low, 0, last), np.clip(high, 0, last)
    return sub_grid(grid, tuple(low[::-1]), tuple((high - low + 1)[::-1]))


def largest_component_box(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int], int] | None:
    """Bounding box of the largest 26-connected component of a boolean ``(z, y, x)`` mask.

    Returns ``(low_zyx, high_zyx, voxels)`` with inclusive corners, or None for an empty mask.
    """
    if not mask.any():
        return None
    components = cc3d.connected_components(mask.astype(np.uint8, copy=False), connectivity=26)
    stats = cc3d.statistics(components)
    counts = np.asarray(stats["voxel_counts"])
    counts[0] = 0
    best = int(np.argmax(counts))
    box = stats["bounding_boxes"][best]
    low = tuple(int(s.start) for s in box)
    high = tuple(int(s.stop) - 1 for s in box)
    return low, high, int(counts[best])  # type: ignore[return-value]


def spine_axis(probability: np.ndarray, spine: np.ndarray, grid: Geometry) -> np.ndarray:
    """``(N, 3)`` LPS points, one per axial slice of ``grid`` that holds spine voxels, head to feet: the
    probability-weighted centre of that slice's ``spine`` voxels (``(z, y, x)`` arrays on the identity-
    direction ``grid``). It runs through the middle of the column (body and arch), a seed from which the
    segment model outlines each vertebra where the locate network finds none (:mod:`algorithm.recentre`)."""
    points = []
    for k in range(spine.shape[0]):
        jj, ii = np.nonzero(spine[k])
        if len(jj) == 0:
            continue
        weight = probability[k, jj, ii].astype(np.float64)
        points.append((k, float(weight @ jj / weight.sum()), float(weight @ ii / weight.sum())))
    if not points:
        return np.zeros((0, 3))
    world = grid.index_to_world(np.asarray(points, dtype=np.float64)[:, ::-1])
    return world[np.argsort(-world[:, 2], kind="stable")]


def detect_spine(
    image: sitk.Image,
    model: StageModel,
    *,
    overlap: float = 0.5,
    threshold: float = DETECT_THRESHOLD,
    margin_mm: float = DETECT_MARGIN_MM,
) -> Detection:
    """Run the detect stage on a CT (any orientation and spacing)."""
    meta = model.meta
    grid = model_grid(Geometry.of(image), meta.spacing_zyx_mm)
    probability = run_on_grid(image, grid, model, overlap=overlap)[0]
    max_probability = float(probability.max()) if probability.size else 0.0
    spine = probability >= threshold
    found = largest_component_box(spine)
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    if found is None:
        return Detection(None, f"no voxel reaches spine probability {threshold} (max {max_probability:.3f})",
                         max_probability, 0.0)
    low_zyx, high_zyx, voxels = found
    volume_ml = voxels * voxel_ml
    if volume_ml < MIN_SPINE_VOLUME_ML:
        return Detection(None, f"largest spine component is {volume_ml:.2f} ml, below {MIN_SPINE_VOLUME_ML} ml",
                         max_probability, volume_ml)
    corners = np.array([low_zyx, high_zyx], dtype=np.float64)[:, ::-1]  # -> (i, j, k) indices
    world = grid.index_to_world(corners)  # identity direction: corner 0 is the minimum
    half_voxel = 0.5 * np.asarray(grid.spacing_mm)
    low = world.min(axis=0) - half_voxel - margin_mm
    high = world.max(axis=0) + half_voxel + margin_mm
    box = SpineBox(tuple(float(v) for v in low), tuple(float(v) for v in high))  # type: ignore[arg-type]
    log.info("detect: spine %.1f ml, box %s mm (max probability %.3f)", volume_ml,
             "x".join(f"{s:.0f}" for s in box.size_mm), max_probability)
    inside = np.zeros_like(spine)
    inside[low_zyx[0]:high_zyx[0] + 1, low_zyx[1]:high_zyx[1] + 1, low_zyx[2]:high_zyx[2] + 1] = True
    return Detection(box, "", max_probability, volume_ml, spine_axis(probability, spine & inside, grid))

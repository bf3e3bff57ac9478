"""Preprocessing that training and inference must share exactly.

A model works on an identity-direction grid at its own spacing (``ModelMeta``); this
module brings an image onto that grid, crops and pastes fixed-shape patches, and draws
the Gaussian heatmaps the networks are trained to output. Every step returns what is
needed to undo it: :func:`to_model_grid` returns the model grid's :class:`Geometry`, so a
result on that grid goes back with :func:`spine.image.resample_onto` onto the input's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from spine.image import Geometry, array_of, axis_aligned_geometry, resample_onto

__all__ = [
    "AIR_HU",
    "crop_patch",
    "gaussian_heatmap",
    "model_grid",
    "to_model_grid",
    "world_to_zyx",
    "zyx_to_world",
]

AIR_HU = -1024.0


def model_grid(geometry: Geometry, spacing_zyx_mm: Sequence[float]) -> Geometry:
    """Identity-direction grid at ``spacing_zyx_mm`` (array order) covering ``geometry``."""
    z, y, x = (float(s) for s in spacing_zyx_mm)
    return axis_aligned_geometry(geometry, (x, y, z))


def to_model_grid(
    image: sitk.Image,
    spacing_zyx_mm: Sequence[float],
    *,
    nearest: bool = False,
    default: float = AIR_HU,
) -> tuple[np.ndarray, Geometry]:
    """Resample ``image`` onto its model grid; return the ``(z, y, x)`` array and that grid.

    CT: linear interpolation, air outside. Label maps: ``nearest=True, default=0``.
    Undo with ``resample_onto(image_from_array(result, grid), Geometry.of(image), ...)``.
    """
    grid = model_grid(Geometry.of(image), spacing_zyx_mm)
    if not nearest and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return array_of(resample_onto(image, grid, nearest=nearest, default=default)), grid


def world_to_zyx(grid: Geometry, points_mm: np.ndarray) -> np.ndarray:
    """LPS world points (..., 3) -> continuous array coordinates (..., 3) in ``(z, y, x)``."""
    return grid.world_to_index(points_mm)[..., ::-1]


def zyx_to_world(grid: Geometry, zyx: np.ndarray) -> np.ndarray:
    """Continuous array coordinates ``(z, y, x)`` (..., 3) -> LPS world points (..., 3)."""
    return grid.index_to_world(np.asarray(zyx, dtype=np.float64)[..., ::-1])


def gaussian_heatmap(
    shape_zyx: Sequence[int],
    center_zyx: Sequence[float],
    sigma_mm: float,
    spacing_zyx_mm: Sequence[float],
) -> np.ndarray:
    """``exp(-|x - c|^2 / (2 sigma^2))`` on a grid, distances in mm; peak 1 at the centre.

    Separable: three 1-D Gaussians multiplied, so it costs O(sum of the shape) exps.
    """
    axes = []
    for size, centre, spacing in zip(shape_zyx, center_zyx, spacing_zyx_mm, strict=True):
        d_mm = (np.arange(int(size), dtype=np.float32) - np.float32(centre)) * np.float32(spacing)
        axes.append(np.exp(-(d_mm**2) / np.float32(2.0 * sigma_mm**2)))
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def crop_patch(
    array: np.ndarray,
    center_zyx: Sequence[float],
    shape_zyx: Sequence[int],
    *,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Fixed-shape patch of ``array`` centred on ``center_zyx``; outside is ``pad_value``.

    Returns the patch and its start corner (may be negative) in ``array`` coordinates:
    ``array[start + p] == patch[p]`` wherever ``start + p`` lies inside ``array``.
    """
    shape = tuple(int(s) for s in shape_zyx)
    start = tuple(round(float(c) - s / 2.0) for c, s in zip(center_zyx, shape, strict=True))
    patch = np.full(shape, pad_value, dtype=array.dtype)
    src, dst = [], []
    for a0, size, full in zip(start, shape, array.shape, strict=True):
        lo, hi = max(a0, 0), min(a0 + size, full)
        if hi <= lo:
            return patch, (start[0], start[1], start[2])
        src.append(slice(lo, hi))
        dst.append(slice(lo - a0, hi - a0))
    patch[tuple(dst)] = array[tuple(src)]
    return patch, (start[0], start[1], start[2])

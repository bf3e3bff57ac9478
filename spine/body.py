"""Where a vertebral body's centre lies in a vertebra's mask.

A vertebra's mask holds its body and its posterior elements, so its centre of mass sits 10-15 mm
behind the body's centre (the point VerSe annotates). The body is the thickest part of the mask:
the centre of the voxels lying deepest inside it is 1-2 mm from VerSe's annotations on the real
masks at hand (``export.real_cases``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["DEPTH_FRACTION", "deepest_centre_zyx"]

DEPTH_FRACTION = 0.6
"""Voxels at least this fraction of the mask's greatest depth make up the body's core."""


def deepest_centre_zyx(inside: np.ndarray, spacing_zyx_mm: Sequence[float], *,
                       depth_fraction: float = DEPTH_FRACTION) -> np.ndarray:
    """Centre ``(3,)`` (voxel index, ``(z, y, x)``) of the deepest part of the boolean mask ``inside``.

    ``d(v)`` is the Euclidean distance (mm, spacing-aware) from voxel ``v`` to the nearest voxel outside
    the mask (the array's border counts as outside); the result is the mean index of the voxels with
    ``d(v) >= depth_fraction * max d``. Raises ValueError for an empty mask.
    """
    if not 0.0 < depth_fraction < 1.0:
        raise ValueError(f"depth_fraction must be in (0, 1), got {depth_fraction}")
    inside = np.asarray(inside, dtype=bool)
    if not inside.any():
        raise ValueError("empty mask has no centre")
    depth = ndimage.distance_transform_edt(np.pad(inside, 1), sampling=tuple(float(s) for s in spacing_zyx_mm))
    deep = depth >= depth_fraction * float(depth.max())
    return np.argwhere(deep).mean(axis=0) - 1.0

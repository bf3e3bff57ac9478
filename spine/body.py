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

__all__ = ["C2_DENS_SHIFT_MM", "DEPTH_FRACTION", "c2_centroid", "deepest_centre_zyx"]

DEPTH_FRACTION = 0.6
"""Voxels at least this fraction of the mask's greatest depth make up the body's core."""
C2_DENS_SHIFT_MM = (1.2, 3.0)
"""From C2's body centre (the deepest part of its mask) to VerSe's C2 centroid, which is that of its body and dens:
(along the spine towards the head, forwards) in mm. The mean of the two manual VerSe masks with C2 in
``../shared/data/verse-label-masks`` (sub-gl003: 0.9, 2.0; sub-gl017: 1.5, 4.0); on C3-T1 of the same masks the
deepest centre lies within 1.1 mm of the annotation along the spine and 2.2 mm front to back."""


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


def c2_centroid(body_centre_mm: Sequence[float], head_direction: Sequence[float]) -> np.ndarray:
    """VerSe's C2 centroid (LPS mm) from the centre of C2's body: :data:`C2_DENS_SHIFT_MM` along ``head_direction``
    (the spine's local axis, towards the head) and forwards (LPS -y, made square to that axis)."""
    up = np.asarray(head_direction, dtype=np.float64)
    up = up / np.linalg.norm(up)
    front = np.array([0.0, -1.0, 0.0])
    forwards = front - (front @ up) * up  # LPS -y less its part along the axis
    length = float(np.linalg.norm(forwards))
    forwards = forwards / length if length > 1e-6 else np.zeros(3)  # a spine lying front to back: none square to it
    along, ahead = C2_DENS_SHIFT_MM
    return np.asarray(body_centre_mm, dtype=np.float64) + along * up + ahead * forwards

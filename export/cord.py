"""A radiotherapy CT's spinal-cord contour read as a line: the contour's centre on each axial slice.

The OpenKBP head-and-neck CTs carry the clinical cord contour (``pt_N_spinal-cord.nii.gz``). Two trainers read
it: the pseudo-labels check that every vertebral body lies just in front of the cord on its own slice
(:mod:`export.pseudo_labels`), and the skull-base model takes the contour's top, where the cord meets the
foramen magnum, as its target (:mod:`export.skull_base`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = ["CordLine"]


@dataclass(frozen=True)
class CordLine:
    """The cord contour's centre per axial slice: world z (mm) and the centre's LPS x, y (mm), in slice order."""

    z_mm: np.ndarray
    xy_mm: np.ndarray

    @classmethod
    def of(cls, cord: sitk.Image) -> CordLine:
        """The centre (mean voxel) of the contour on every slice that holds some of it."""
        array = sitk.GetArrayViewFromImage(cord)
        z, xy = [], []
        for k in np.flatnonzero(np.asarray(array).any(axis=(1, 2))):
            j, i = np.argwhere(array[k]).mean(axis=0)
            point = cord.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
            z.append(point[2])
            xy.append(point[:2])
        return cls(np.asarray(z, dtype=np.float64), np.asarray(xy, dtype=np.float64).reshape(-1, 2))

    def at(self, z_mm: float, within_mm: float) -> np.ndarray | None:
        """The centre (x, y) on the slice nearest ``z_mm``, or None if no slice lies within ``within_mm``."""
        if not len(self.z_mm):
            return None
        nearest = int(np.argmin(np.abs(self.z_mm - z_mm)))
        return self.xy_mm[nearest] if abs(self.z_mm[nearest] - z_mm) <= within_mm else None

    def top_mm(self) -> np.ndarray | None:
        """LPS mm centre of the contour's highest slice (largest z: the foramen magnum); None when empty."""
        if not len(self.z_mm):
            return None
        top = int(np.argmax(self.z_mm))
        return np.array([*self.xy_mm[top], self.z_mm[top]])

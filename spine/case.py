"""One annotated spine CT, whatever data set it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spine.image import Geometry

__all__ = ["Case"]


@dataclass
class Case:
    """A CT with its vertebra mask and centroids.

    - ``ct``: HU image (any pixel type), its geometry is the case's geometry;
    - ``mask``: VerSe-id label map on the same grid, or None when unlabelled;
    - ``centroids_mm``: {VerSe id: LPS world point (3,)}; annotated vertebral-body
      centres when the source has them (not recomputed from the mask);
    - ``source``: where it was read from (or "synthetic:<seed>").
    """

    case_id: str
    ct: sitk.Image
    mask: sitk.Image | None = None
    centroids_mm: dict[int, np.ndarray] = field(default_factory=dict)
    source: str | Path = ""

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.ct)

    def __post_init__(self) -> None:
        if self.mask is not None and not Geometry.of(self.mask).same_as(Geometry.of(self.ct)):
            raise ValueError(f"{self.case_id}: mask and CT are on different grids")

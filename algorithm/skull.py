"""The skull base at the head of the chain: C1 lies just under the foramen magnum.

The sacrum ends the chain at its foot (:mod:`algorithm.sacrum`); the skull ends it at its head, and where a
CT shows the skull base it says which vertebra the chain starts with. An optional detect-stage model
(``skull.onnx``, :data:`algorithm.models.SKULL_FILE`; trained by :mod:`export.skull_base` on real
head-and-neck CTs, with the foramen magnum taken from their clinical spinal-cord contours) maps the
foramen magnum over the top of the CT. Where its peak reaches the model's ``peak_threshold``:

1. candidates more than :data:`ABOVE_MM` above the foramen magnum leave the chain: nothing below the skull
   is above it (on real head-and-neck CTs the locate network puts candidates in the skull base's dense
   bone, 25-36 mm above C1, and the decoder then named them C1 and every real vertebra one or two
   levels too low);
2. C1 is placed where it lies under the foramen magnum (:data:`C1_OFFSET_MM`) and fixed there, as a user's
   ``--fix`` would fix it (the decoder keeps the rest of the chain consistent with it: spacing, skipped
   levels). Candidates within :data:`C1_CLEAR_MM` of that point are C1 itself and give way to it: C1's
   ring has no body for the outlines to centre on, and the locate network often misses it.

A CT without a skull (chest, abdomen, lumbar scans) leaves the model's peak low and the chain alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from algorithm.detect import SpineBox, crop_grid, run_on_grid
from algorithm.models import StageModel
from spine.image import Geometry
from spine.preprocess import model_grid, zyx_to_world

__all__ = ["ABOVE_MM", "C1_CLEAR_MM", "C1_OFFSET_MM", "SEARCH_BELOW_MM", "SkullBase", "anchor",
           "find_skull_base"]

log = logging.getLogger(__name__)

ABOVE_MM = 12.0
"""How far above the foramen magnum a candidate may lie and stay: annotated C1 centres lie 0-16 mm below the
model's point on the OpenKBP fit and dev sets; the skull base's false candidates 20 mm and more above C1."""
C1_OFFSET_MM = np.array([0.0, -7.0, -7.5])
"""C1's centre relative to the model's foramen magnum point, LPS (x, y, z) mm: the median over the 28 annotated
OpenKBP ``fit`` CTs (sd 0.7, 3.4, 3.8 mm; over the 24 ``dev`` CTs, which the model did not see, 0, -5.4,
-6.2 mm)."""
C1_CLEAR_MM = 8.0
"""Candidates this close to the placed C1 are C1 (C1 to C2 centres: 11-16 mm on the annotated CTs)."""
SEARCH_BELOW_MM = 150.0
"""The model looks from this far below the detected spine's top up to the CT's top: the foramen magnum lies
above the highest vertebra, so the rest of a long CT need not be read."""


@dataclass(frozen=True)
class SkullBase:
    """The model's foramen magnum: its peak value and LPS point, and whether it counts as found."""

    peak: float
    point_mm: np.ndarray
    found: bool

    def to_dict(self) -> dict[str, object]:
        return {"found": self.found, "peak": round(self.peak, 3),
                "point_mm": [round(float(v), 1) for v in self.point_mm]}


def _search_grid(image: sitk.Image, model: StageModel, box: SpineBox | None) -> Geometry:
    grid = model_grid(Geometry.of(image), model.meta.spacing_zyx_mm)
    if box is None:
        return grid
    corners = grid.index_to_world(np.array([[0, 0, 0], np.asarray(grid.size) - 1], dtype=np.float64))
    low, high = corners.min(axis=0), corners.max(axis=0)
    low[2] = max(low[2], box.high_mm[2] - SEARCH_BELOW_MM)
    try:
        return crop_grid(grid, SpineBox(tuple(low), tuple(high)))  # type: ignore[arg-type]
    except ValueError:
        return grid


def find_skull_base(image: sitk.Image, model: StageModel, box: SpineBox | None = None, *,
                    overlap: float = 0.25) -> SkullBase:
    """The model's foramen magnum over the CT's top (above ``box``'s top less :data:`SEARCH_BELOW_MM`): the
    heatmap's maximum, placed at the value-weighted centre of the voxels above half of it around the peak."""
    grid = _search_grid(image, model, box)
    heat = run_on_grid(image, grid, model, overlap=overlap)[0]
    peak_index = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = float(heat[peak_index])
    window = tuple(slice(max(0, i - 3), i + 4) for i in peak_index)
    local = heat[window]
    weight = np.where(local >= 0.5 * peak, local, 0.0).astype(np.float64)
    offsets = np.array([s.start for s in window], dtype=np.float64)
    zyx = np.argwhere(np.ones_like(local, dtype=bool)) + offsets
    centre = (weight.reshape(-1) @ zyx) / max(float(weight.sum()), 1e-12)
    point = zyx_to_world(grid, centre[None])[0]
    found = peak >= model.meta.peak_threshold
    log.info("skull base: %s (peak %.2f, threshold %.2f) at %s mm", "found" if found else "not in view", peak,
             model.meta.peak_threshold, np.round(point, 1).tolist())
    return SkullBase(peak, point, found)


def anchor(positions_mm: np.ndarray, base: SkullBase) -> tuple[np.ndarray, np.ndarray | None]:
    """``(keep, c1)``: which candidates stay (below the skull base, and not C1 itself), and where C1 lies (LPS mm;
    None, and every candidate kept, when no skull base was found or every candidate lies above it)."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    everything = np.ones(len(positions), dtype=bool)
    if not base.found:
        return everything, None
    below = positions[:, 2] <= base.point_mm[2] + ABOVE_MM
    if len(positions) and not below.any():  # a chain wholly above a skull base: the skull base is misread
        log.warning("skull base: every candidate lies above it; the anchor is not used")
        return everything, None
    c1 = base.point_mm + C1_OFFSET_MM
    at_c1 = np.linalg.norm(positions - c1, axis=1) <= C1_CLEAR_MM
    keep = below & ~at_c1
    log.info("skull base: C1 placed at %s mm; %d candidate(s) above the skull base and %d at C1 give way",
             np.round(c1, 1).tolist(), int((~below).sum()), int((below & at_c1).sum()))
    return keep, c1

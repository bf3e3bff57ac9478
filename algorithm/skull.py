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
3. C2 lies one C1-C2 step under C1 (:data:`C2_OFFSET_MM`). Where no candidate lies within :data:`C2_SEEN_MM` of
   that point, the outlines missed it (its body and dens sit inside C1's ring at 3.5-5 mm pixels) and the
   vertebra below took its place: a candidate goes there (:func:`missing_c2`), without level evidence and not
   fixed, for the decoder to weigh like any other. On 11 of the 52 annotated OpenKBP ``dev`` and ``fit`` CTs no
   candidate lay within 12 mm of C2's point, and 8 of those chains came out one level low from C2 down.
4. Candidates in the neck's height (down to :data:`NECK_LOW_MM` under the foramen magnum) more than
   :data:`NECK_SIDE_MM` to its left or right leave the chain too: the neck's bodies lie in the midline under the
   foramen, and an outline beside them (a lateral mass, a transverse process, the clavicle's end) stretches the chain
   sideways, so the decoder took it for a vertebra and left a real one out (``fit`` pt_48's C3, beside a candidate
   34 mm to its left at the challenge's crop box's lower edge).

Where every candidate lies above a skull base that was found, the detect stage's box missed the neck (on two
``fit`` CTs it sat on the back of the skull, C2 outside it, and the locate network put all its candidates in
the skull and the face): the locate stage looks again in a box hung under the foramen magnum
(:func:`neck_detection`), where the annotated bodies of C1-T3 lie on the 52 annotated OpenKBP CTs
(:data:`NECK_LOW_MM`, :data:`NECK_HIGH_MM`). So it does where the foramen magnum lies beside the box (outside
its left-right or front-back extent, :func:`beside_the_box`) and no candidate lies below that neck box: the cord
runs down from the foramen through the neck's spine, so a box around that spine holds it beside it (``fit``
pt_48: the box sat in the face, 34 mm in front of the foramen, and nothing but C1 was labelled); a candidate
below the neck box is a lower spine the box did find, which looking again there would lose
(:func:`missed_the_neck`).

A CT without a skull (chest, abdomen, lumbar scans) leaves the model's peak low and the chain alone. A CT cut
just under the skull base can raise it to 0.5 at its top edge (the dev CTs with the head cleared away 20 mm
under C1: 0.01-0.50); there the point has no skull above it, so a skull base also needs :data:`MIN_BONE_ML` of
bone in the half-ball of :data:`BONE_RADIUS_MM` above its point (the occipital bone, the clivus, the petrous
bones: 6.8-35 ml on the 52 annotated OpenKBP CTs; 0-10.5 ml on those cut CTs, 0 where the peak reached 0.5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from algorithm.detect import Detection, SpineBox, crop_grid, resample_ct, run_on_grid
from algorithm.models import StageModel
from spine.image import Geometry
from spine.preprocess import model_grid, zyx_to_world

__all__ = ["ABOVE_MM", "BONE_HU", "BONE_RADIUS_MM", "C1_CLEAR_MM", "C1_OFFSET_MM", "C2_OFFSET_MM", "C2_SEEN_MM",
           "CONTEXT_MM", "MIN_BONE_ML", "NECK_HIGH_MM", "NECK_LOW_MM", "NECK_SIDE_MM", "SkullBase", "above_the_neck",
           "anchor", "beside_the_box", "beside_the_neck", "bone_above_ml", "find_skull_base", "missed_the_neck",
           "missing_c2", "neck_box", "neck_detection", "search_grid"]

log = logging.getLogger(__name__)

ABOVE_MM = 12.0
"""How far above the foramen magnum a candidate may lie and stay: annotated C1 centres lie 0-16 mm below the
model's point on the OpenKBP fit and dev sets; the skull base's false candidates 20 mm and more above C1."""
C1_OFFSET_MM = np.array([0.0, -7.0, -7.5])
"""C1's centre relative to the model's foramen magnum point, LPS (x, y, z) mm: the median over the 28 annotated
OpenKBP ``fit`` CTs (sd 0.7, 3.4, 3.8 mm; over the 24 ``dev`` CTs, which the model did not see, 0, -5.4,
-6.2 mm)."""
C1_CLEAR_MM = 10.0
"""Candidates this close to the placed C1 are C1 (C1 to C2 centres: 10.7-19.2 mm apart on the 36 annotated OpenKBP
``dev`` and ``fit`` CTs with both). At 8 mm, a candidate on fit pt_33's C1, 9.4 mm from the placed point (3.5 mm
lower, 8.7 mm beside it), stayed, took C2's label, and every level below came out one too high."""
C2_OFFSET_MM = np.array([0.0, -7.5, -12.5])
"""C2's centre relative to C1's, LPS (x, y, z) mm: the median over the 21 annotated OpenKBP ``fit`` CTs with both
(sd 0.9, 1.5, 2.3 mm). Added to the placed C1 it lies 1.6-11.4 mm from the annotated C2 on the 36 ``dev`` and
``fit`` CTs with one, and nearer to it than to C1 or C3 on every one."""
C2_SEEN_MM = 12.0
"""A candidate this close to C2's point under the placed C1 is taken for C2 (the point lies up to 11.4 mm from the
annotated C2)."""
NECK_LOW_MM = np.array([-45.0, -60.0, -200.0])
NECK_HIGH_MM = np.array([45.0, 50.0, ABOVE_MM + 8.0])
"""The box under the foramen magnum (LPS offsets, mm) where :func:`neck_detection` looks for the neck: the
annotated bodies of C1-T3 lie -7..7 (x), -27..29 (y), -150..3 (z) mm from the skull-base model's point on the
52 annotated OpenKBP ``dev`` and ``fit`` CTs; the margins leave the locate network and the outlines context."""
NECK_SIDE_MM = 20.0
"""A candidate in the neck's height farther than this to the left or right of the foramen magnum is no vertebral body
(:func:`anchor`): the annotated bodies of C1-T3 lie within 7 mm of it on the 52 annotated OpenKBP CTs (heads tilted
included: :data:`NECK_LOW_MM`); the margin is about three times that."""
NECK_AXIS_STEP_MM = 8.0
BONE_HU = 300.0
BONE_RADIUS_MM = 40.0
MIN_BONE_ML = 4.0
"""Bone (``BONE_HU`` and above) a skull base has in the half-ball of ``BONE_RADIUS_MM`` above its point (module
docstring)."""

@dataclass(frozen=True)
class SkullBase:
    """The model's foramen magnum: its peak value and LPS point, and whether it counts as found."""

    peak: float
    point_mm: np.ndarray
    found: bool
    bone_ml: float = 0.0
    """Bone in the half-ball above the point (:data:`MIN_BONE_ML`)."""

    def to_dict(self) -> dict[str, object]:
        return {"found": self.found, "peak": round(self.peak, 3), "bone_ml": round(self.bone_ml, 1),
                "point_mm": [round(float(v), 1) for v in self.point_mm]}


def bone_above_ml(image: sitk.Image, point_mm: np.ndarray, *, radius_mm: float = BONE_RADIUS_MM,
                  hu: float = BONE_HU, step_mm: float = 2.0) -> float:
    """Volume (ml) of voxels at ``hu`` or more within ``radius_mm`` of ``point_mm`` and above it (LPS +z), the CT
    resampled linearly at ``step_mm`` (outside the CT: air)."""
    n = round(2 * radius_mm / step_mm)
    origin = np.asarray(point_mm, dtype=np.float64) + np.array([-radius_mm, -radius_mm, 0.0]) + step_mm / 2
    grid = Geometry(size=(n, n, n // 2), spacing_mm=(step_mm,) * 3,  # type: ignore[arg-type]
                    origin_mm=tuple(float(v) for v in origin), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    values = resample_ct(image, grid)
    z, y, x = np.ogrid[:n // 2, :n, :n]
    offset = origin - np.asarray(point_mm, dtype=np.float64)
    distance2 = ((x * step_mm + offset[0]) ** 2 + (y * step_mm + offset[1]) ** 2 + (z * step_mm + offset[2]) ** 2)
    return float(np.count_nonzero((values >= hu) & (distance2 <= radius_mm ** 2)) * step_mm ** 3 / 1000.0)


CONTEXT_MM = 60.0
"""With a spine box: the model reads the CT this far beside and behind or in front of the box (the foramen magnum
lies over the spine), from the box's bottom to the CT's top."""


def search_grid(image: sitk.Image, model: StageModel, box: SpineBox | None = None) -> Geometry:
    """The model's grid over the CT, or over the part of it above ``box``'s bottom and within :data:`CONTEXT_MM`
    of the box sideways (a third of the windows on an abdominal CT).

    Not only the part above the box's top less some margin: the box reaches the top of the head when the detect
    model fires on the skull, and a window cut off just under the foramen magnum sees nothing it knows (the dev
    set's whole-head CT: peak 0.00 searched from 150 mm under the box's top, 0.83 over the CT)."""
    grid = model_grid(Geometry.of(image), model.meta.spacing_zyx_mm)
    if box is None:
        return grid
    corners = grid.index_to_world(np.array([[0, 0, 0], np.asarray(grid.size) - 1], dtype=np.float64))
    low = np.array(box.low_mm) - [CONTEXT_MM, CONTEXT_MM, 0.0]
    high = np.array([box.high_mm[0] + CONTEXT_MM, box.high_mm[1] + CONTEXT_MM, corners[:, 2].max()])
    try:
        return crop_grid(grid, SpineBox(tuple(low), tuple(high)))  # type: ignore[arg-type]
    except ValueError:
        return grid


def find_skull_base(image: sitk.Image, model: StageModel, box: SpineBox | None = None, *,
                    overlap: float = 0.25) -> SkullBase:
    """The model's foramen magnum over :func:`search_grid`: the heatmap's maximum, placed at the value-weighted
    centre of the voxels above half of it around the peak; found where it reaches the model's threshold and the
    CT shows bone above it."""
    grid = search_grid(image, model, box)
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
    bone = bone_above_ml(image, point) if peak >= model.meta.peak_threshold else 0.0
    found = peak >= model.meta.peak_threshold and bone >= MIN_BONE_ML
    log.info("skull base: %s (peak %.2f, threshold %.2f; bone above %.1f ml, at least %.1f) at %s mm",
             "found" if found else "not in view", peak, model.meta.peak_threshold, bone, MIN_BONE_ML,
             np.round(point, 1).tolist())
    return SkullBase(peak, point, found, bone)


def anchor(positions_mm: np.ndarray, base: SkullBase) -> tuple[np.ndarray, np.ndarray | None]:
    """``(keep, c1)``: which candidates stay (below the skull base, and not C1 itself), and where C1 lies (LPS mm;
    None, and every candidate kept, when no skull base was found or every candidate lies above it)."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    everything = np.ones(len(positions), dtype=bool)
    if not base.found:
        return everything, None
    if above_the_neck(positions, base):  # even looked for under it (locate_stage): the skull base is misread
        log.warning("skull base: every candidate lies above it; the anchor is not used")
        return everything, None
    below = positions[:, 2] <= base.point_mm[2] + ABOVE_MM
    c1 = base.point_mm + C1_OFFSET_MM
    at_c1 = np.linalg.norm(positions - c1, axis=1) <= C1_CLEAR_MM
    beside = beside_the_neck(positions, base)
    keep = below & ~at_c1 & ~beside
    log.info("skull base: C1 placed at %s mm; %d candidate(s) above the skull base, %d at C1 and %d beside the neck "
             "give way", np.round(c1, 1).tolist(), int((~below).sum()), int((below & at_c1).sum()),
             int((below & ~at_c1 & beside).sum()))
    return keep, c1


def beside_the_neck(positions_mm: np.ndarray, base: SkullBase, *, side_mm: float = NECK_SIDE_MM) -> np.ndarray:
    """``(N,)`` bool: which positions lie in the neck's height (down to :data:`NECK_LOW_MM` under the foramen magnum)
    more than ``side_mm`` to the left or right of it (module docstring, item 4)."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    offset = positions - base.point_mm
    return (offset[:, 2] >= NECK_LOW_MM[2]) & (np.abs(offset[:, 0]) > side_mm)


def missing_c2(c1_mm: np.ndarray, positions_mm: np.ndarray, *, seen_mm: float = C2_SEEN_MM) -> np.ndarray | None:
    """C2's point under a placed C1 (LPS mm) when no candidate lies within ``seen_mm`` of it, else None (module
    docstring, item 3)."""
    point = np.asarray(c1_mm, dtype=np.float64) + C2_OFFSET_MM
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    if len(positions) and float(np.linalg.norm(positions - point, axis=1).min()) <= seen_mm:
        return None
    log.info("skull base: no candidate within %.0f mm of C2's point under C1; one goes at %s mm", seen_mm,
             np.round(point, 1).tolist())
    return point


def above_the_neck(positions_mm: np.ndarray, base: SkullBase) -> bool:
    """Whether a skull base was found and every candidate lies more than :data:`ABOVE_MM` above it (none given:
    False): then the spine box missed the neck (module docstring)."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    return bool(base.found and len(positions) and np.all(positions[:, 2] > base.point_mm[2] + ABOVE_MM))


def beside_the_box(base: SkullBase, box: SpineBox | None) -> bool:
    """Whether a found skull base's foramen magnum lies outside ``box``'s left-right or front-back extent (LPS x,
    y): then the spine box missed the neck (module docstring). Its height says nothing: the box may start under
    the skull base."""
    if not base.found or box is None:
        return False
    point = np.asarray(base.point_mm, dtype=np.float64)
    return bool(any(point[a] < box.low_mm[a] or point[a] > box.high_mm[a] for a in (0, 1)))


def neck_box(base: SkullBase) -> SpineBox:
    """The box hung under the foramen magnum (:data:`NECK_LOW_MM`, :data:`NECK_HIGH_MM`)."""
    point = np.asarray(base.point_mm, dtype=np.float64)
    return SpineBox(tuple(float(v) for v in point + NECK_LOW_MM),  # type: ignore[arg-type]
                    tuple(float(v) for v in point + NECK_HIGH_MM))


def missed_the_neck(positions_mm: np.ndarray, base: SkullBase, box: SpineBox | None) -> str | None:
    """Why the detect stage's ``box`` missed the neck under a found skull base (module docstring), or None: every
    candidate lies above the skull base (:func:`above_the_neck`), or the foramen magnum lies beside the box
    (:func:`beside_the_box`) and no candidate lies below the neck box (:func:`neck_box`)."""
    if above_the_neck(positions_mm, base):
        return "every candidate lies above the foramen magnum"
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    if beside_the_box(base, box) and not np.any(positions[:, 2] < neck_box(base).low_mm[2]):
        return "the foramen magnum lies beside the spine box"
    return None


def neck_detection(base: SkullBase, why: str = "every candidate lies above the foramen magnum") -> Detection:
    """The spine box of :func:`neck_box`, its axis straight down from the point every :data:`NECK_AXIS_STEP_MM`:
    where the locate stage looks again when the detect stage's box missed the neck (``why``: the detection's
    ``reason``, and the log's)."""
    point = np.asarray(base.point_mm, dtype=np.float64)
    box = neck_box(base)
    heights = np.arange(point[2], box.low_mm[2], -NECK_AXIS_STEP_MM)
    axis = np.column_stack([np.full_like(heights, point[0]), np.full_like(heights, point[1]), heights])
    log.warning("skull base: %s at %s mm: the spine box missed the neck; looking again under it", why,
                np.round(point, 1).tolist())
    return Detection(box, why, base.peak, 0.0, axis)

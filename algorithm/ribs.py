"""Which vertebra candidates bear ribs: region evidence for the decoder that does not come from a network.

VerSe's rule for the thoracolumbar junction is anatomical: a vertebra with a rib of 38-40 mm or more
is thoracic. The last rib-bearing vertebra is T12 (or T13, T11 on variant spines), the first without
is L1. The locate network gives the decoder little level evidence on CTs unlike its training data
(``bench/real.py``: on the unseen aortic crop a chain of eleven vertebrae was labelled two levels
high), while the ribs are plainly there in the CT. So:

1. The CT around the chain of candidates is resampled to :data:`GRID_MM` and bone is thresholded
   (:data:`BONE_HU` after a light smoothing).
2. Bone farther than :data:`SHELL_MM`\\ [0] from the spine's centre line (left-right, LPS x) is split
   into connected parts; each part's *reach* is its largest lateral distance.
3. Where a part crosses the shell :data:`SHELL_MM` behind the bodies' centres, a rib or a transverse
   process leaves the spine. Each crossing is given to the lowest vertebra whose centre lies no more
   than :data:`CROSSING_RISE_MM` below the crossing's top, measured along the spine's sagittal lean
   (:func:`rise_above`: at C7-T1 the column rises forwards by 12-24 degrees, and the first rib's crossing,
   15-30 mm behind T1's centre, lies higher than T1 along z; measured along z it went to C7).
4. A crossing whose part reaches :data:`RIB_REACH_MM` is a rib; lumbar transverse processes end
   within 50 mm of the midline (43-50 mm on the real CTs at hand). A crossing taller than
   :data:`MAX_CROSSING_MM`, or of a part larger than :data:`MAX_PART_ML`, is a plate (the sacrum's
   ala running into the ilium), not a rib.

5. A narrow view (VerSe's sagittal lumbar scans are 100-105 mm wide, 50 mm each side of the spine) cuts every
   rib before :data:`RIB_REACH_MM`. A rib-like crossing whose bone leaves the CT sideways
   :data:`SIDE_EDGE_MM` or more beside the centre line is a rib there: a lumbar transverse process ends
   inside such a view (36-47 mm on the real CTs at hand; long ones reach 50 mm and would read as ribs
   in a view cut just inside their tips, a risk the evidence's weight bounds), a rib runs on. A sliver
   under :data:`MIN_LEAVING_MM` tall leaving the view is a plate's edge, not a rib.

6. At the top of a run of ribs, a crossing that reaches clearly less far than the ribs below it may be C7's
   transverse process joined to bone beside it rather than T1's first rib: it speaks only against lumbar
   (:data:`TOP_BEARING_LIKELIHOOD`).

7. A rib read only from bone leaving the view sideways (step 5) is not taken where the candidate's other side
   is seen and shows no rib: an off-centre slab (the aortic crop's ends 49 mm out on one side, 66 mm on the
   other) cuts a long transverse process as it would a rib, while a rib on one side only is rare.

8. At pixels coarser than :data:`RIB_RESOLVED_MM` across a rib's course, C7's transverse process runs into the
   first rib: on the OpenKBP necks at hand (3.9-5.1 mm pixels) all 6 annotated C7s read rib-bearing, and 25 of
   the 35 C7s (11 of the 37 C6s) of their skull-anchored labellings. There the top of a run of ribs, whatever its
   reach, is C7 or T1 alike and speaks only against lumbar (:data:`TOP_BEARING_LIKELIHOOD`).

A candidate with a rib on either side is *rib-bearing*; otherwise each side where the CT covers a rib's
course (to :data:`SIDE_EDGE_MM` + :data:`SEEN_MARGIN_MM` beside the spine, so that a rib would have left
the view or shown its length) and shows none counts against a thoracic level, but only below the lowest
rib-bearing candidate (the thoracolumbar junction; above it a first rib is short and a rib can go to a
neighbour); where the CT does not cover it, nothing is known.
:func:`region_likelihood` turns that into cervical / thoracic / lumbar likelihoods that multiply the
network's region posterior (:meth:`algorithm.locate.Candidates.regions`). It is evidence, not a rule:
the decoder still weighs it against the chain prior and the network, so a lumbar rib or a missed
floating rib costs a factor, not the labelling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk

from algorithm.detect import resample_ct
from algorithm.labelling.curve import centre_line_by_height
from spine.image import Geometry

__all__ = [
    "BONE_HU",
    "CROSSING_RISE_MM",
    "GRID_MM",
    "MAX_CROSSING_MM",
    "RIB_REACH_MM",
    "RIB_RESOLVED_MM",
    "SHELL_MM",
    "SHORT_RIB_MM",
    "SIDE_EDGE_MM",
    "TOP_BEARING_LIKELIHOOD",
    "TOP_REACH_FRACTION",
    "RibEvidence",
    "region_likelihood",
    "rib_evidence",
    "rise_above",
    "sagittal_directions",
]

log = logging.getLogger(__name__)

GRID_MM = 1.5
"""Isotropic grid of the rib search: a rib is 8-12 mm tall and 5-8 mm thick."""
BONE_HU = 200.0
"""Bone threshold after smoothing (sigma :data:`SMOOTH_MM`): ribs' cortex stays above it at 1.5-3 mm
slices; muscle, fat and kidneys stay below. Contrast-filled vessels do not, hence the posterior gate."""
SMOOTH_MM = 1.05
"""Gaussian sigma of the smoothing before the threshold (0.7 of a search-grid voxel)."""
PADDING_HU = -1500.0
"""Below this the CT holds no tissue nor air: the value outside the reconstructed field of view (scanners
write -2048 or -3024 there), so a rib there is out of view, not absent."""
SHELL_MM = (36.0, 46.0)
"""Lateral band (mm from the spine's centre line) where ribs and transverse processes leave the spine:
outside the bodies (half-width at most 25 mm) and the costovertebral joints (20-30 mm)."""
RIB_REACH_MM = 60.0
"""A rib of 38 mm or more (VerSe's rule) from a head 20-25 mm beside the midline reaches 60 mm or more."""
MAX_CROSSING_MM = 20.0
"""Tallest shell crossing taken for a rib (ribs: 10-14 mm on the real CTs at hand; the sacrum's ala and
the ilium: 22-31 mm)."""
MAX_PART_ML = 25.0
"""Largest bone part taken for a rib inside the searched box (ribs: 0.4-11 ml on the real CTs at hand; an
iliac wing: 46-51 ml)."""
CROSSING_RISE_MM = 5.0
"""The top of a rib's crossing lies at most this far above its vertebra's body centre, and above the
next lower one's: a rib leaves its joint beside the upper body or the disc above and slopes down, so
the crossing's top edge (its medial, highest part) is nearest the head."""
FRONT_MM = 40.0
"""Bone more than this in front of the bodies' centres is ignored (sternum, costal cartilage, contrast)."""
MARGIN_MM = np.array([110.0, 60.0, 30.0])
"""Half-extent of the searched box beyond the chain (x: lateral, y: anterior/posterior, z)."""
BACK_MM = 90.0
"""How far behind the bodies' centres the box reaches (ribs' angles lie 40-80 mm behind them)."""
SIDE_EDGE_MM = 48.0
"""A rib-like crossing whose bone reaches this far beside the centre line and leaves the CT there, sideways,
is a rib cut by a narrow view (module docstring, step 5): on a sagittal slab of the bundled example the T12
ribs leave at 49-51 mm; lumbar transverse processes end at 36-47 mm on the real CTs at hand (verse014's,
cut by its 80 mm slab at 36-45 mm, stay unknown)."""
MIN_LEAVING_MM = 6.0
"""Least height of a crossing that leaves the view sideways to count as a rib (ribs are 8-12 mm tall; the
example slab's T12 ribs cross 7.5-10.5 mm tall): a sliver 1.5 mm tall leaving the slab beside L5 is the
edge of the sacrum's ala or the ilium, and read as a rib it made L5 the lowest rib-bearing vertebra."""
SEEN_MARGIN_MM = 3.0
"""Absence of a rib counts where the CT covers the point :data:`SIDE_EDGE_MM` + this beside the spine: a
rib there would have run out of the view (a rib) or ended in it (reach below :data:`RIB_REACH_MM`)."""
RIB_RESOLVED_MM = 3.0
"""Coarsest voxel footprint along the patient's left-right and front-back axes (LPS x and y, where a rib leaves the
spine) at which the top of a run of ribs is read as a first rib (module docstring, step 8): the bundled example
(3 mm voxels) reads its T11 and T12 ribs and L1-L4's free sides right; on the OpenKBP necks (3.9-5.1 mm) C7's
process reads as a rib."""
SEEN_POSTERIOR_MM = 40.0
"""How far behind the body's centre that point lies (where ribs pass: 29-41 mm on the real CTs at hand),
on both sides."""
EDGE_MM = 5.0
"""A part this close to where the CT ends may run on outside it (partial volume fades it at the edge)."""

BEARING_LIKELIHOOD = np.array([0.1, 1.0, 0.05])
"""Likelihood of a rib crossing given a cervical, thoracic or lumbar vertebra: cervical ribs and the
first rib beside C7, lumbar ribs at L1, and long transverse processes are rare."""
TOP_BEARING_LIKELIHOOD = np.array([1.0, 1.0, 0.05])
"""Likelihood, given each region, of a short crossing at the top of a run of ribs (:meth:`RibEvidence.top_of_ribs`):
it speaks against lumbar only. On the real neck CTs at hand (3.5-5 mm pixels) a bone part reaching 61-87 mm from
the midline crosses the shell at C7's own level (along the spine within 6 mm of its centre) in 8 of the 11
annotated down to C7, above the first rib at T1 (mostly 78-130 mm); read as a rib it made C7 "T1" and shifted the
chain by a level. A first rib that reaches about as far as the ribs below it keeps :data:`BEARING_LIKELIHOOD`: it
is the cervicothoracic anchor of a chest CT. The lowest rib, which places the thoracolumbar junction, is never the
top of a run."""
TOP_REACH_FRACTION = 0.8
"""A top-of-run crossing is short, and doubtful, below this fraction of the median reach of the ribs below it."""
SHORT_RIB_MM = 50.0
"""A crossing reaching this far but not :data:`RIB_REACH_MM` says nothing: lumbar transverse processes end
within 50 mm of the midline (36-47 mm on the real CTs at hand), a short floating T12 rib can end here (the
bundled example's right T12 rib: 52.7 mm)."""
FREE_SIDE_LIKELIHOOD = np.array([1.0, 0.3, 1.0])
"""Likelihood of seeing no rib on one side given the region (both sides: its square). Absence counts only
below the lowest rib-bearing candidate, so "thoracic" there means a T12 (T11, T13) whose rib on that side
is missing or ends within :data:`SHORT_RIB_MM`: a floating rib shorter than VerSe's 38 mm, uncommon.
At 0.5 (both sides 0.25), the one free vertebra under the ribs was outweighed by a locate network that
had lost count by one on the example with its sacrum cropped away (the two labellings 0.2 nats apart)."""
LEAN_REACH_MM = 40.0
"""The column's lean at a vertebra is read from the centres within this height of it (two or three neighbours
each way in the neck and chest)."""
MIN_PAIR_DZ_MM = 8.0
"""Pairs of centres closer than this in height (a duplicate, a candidate beside another) give no slope."""
MAX_LEAN_DEG = 40.0
"""The largest lean of the column from upright, in the sagittal plane, that :func:`rise_above` allows (the
cervicothoracic junction of the real neck CTs at hand: 12-24 degrees between annotated C6, C7 and T1)."""


@dataclass(frozen=True)
class RibEvidence:
    """Per candidate (input order), on the patient's right and left: ``reach_mm`` ``(N, 2)`` the farthest
    reach of a rib-like crossing (0: none; :data:`RIB_REACH_MM` at least for a rib leaving a narrow view);
    ``seen`` ``(N, 2)`` whether the CT covers a rib's course there; ``resolved`` whether the CT's voxels are fine
    enough (:data:`RIB_RESOLVED_MM`) to tell the first rib from C7's transverse process."""

    reach_mm: np.ndarray
    seen: np.ndarray
    resolved: bool = True

    @property
    def bearing(self) -> np.ndarray:
        """``(N,)`` a rib on either side."""
        return np.any(self.reach_mm >= RIB_REACH_MM, axis=1)

    def top_of_ribs(self, heights_mm: np.ndarray) -> np.ndarray:
        """``(N,)`` the highest (by the candidates' ``heights_mm``, LPS z) rib-bearing candidate where others below
        it bear ribs and its crossing reaches less than :data:`TOP_REACH_FRACTION` of their median reach, or
        whatever its reach where the CT is not :attr:`resolved`: the top of a run of ribs that may be C7's process
        joined to bone beside it rather than T1's first rib (:data:`TOP_BEARING_LIKELIHOOD`)."""
        top = np.zeros(len(self.reach_mm), dtype=bool)
        bearing = np.flatnonzero(self.bearing)
        if len(bearing) < 2:
            return top
        highest = bearing[np.argmax(np.asarray(heights_mm, dtype=np.float64)[bearing])]
        reach = self.reach_mm.max(axis=1)
        if not self.resolved or reach[highest] < TOP_REACH_FRACTION * float(
                np.median(reach[bearing[bearing != highest]])):
            top[highest] = True
        return top

    def statuses(self) -> list[str]:
        """Per candidate, for the run report: "rib", "no rib", "no rib on one side" or "unknown"."""
        names = {0: "unknown", 1: "no rib on one side", 2: "no rib"}
        return ["rib" if bearing else names[int(free)] for bearing, free in zip(self.bearing, self.free_sides,
                                                                                strict=True)]

    @property
    def free(self) -> np.ndarray:
        """``(N, 2)`` the sides where the CT covers where a rib would be and shows none reaching
        :data:`SHORT_RIB_MM`."""
        return self.seen & (self.reach_mm < SHORT_RIB_MM)

    @property
    def free_sides(self) -> np.ndarray:
        """``(N,)`` 0-2: on how many sides :attr:`free` holds (0 where bearing)."""
        return np.where(self.bearing, 0, np.sum(self.free, axis=1))


def region_likelihood(evidence: RibEvidence, heights_mm: np.ndarray | None = None) -> np.ndarray:
    """``(N, 3)`` cervical / thoracic / lumbar likelihoods of each candidate's rib evidence (1 where none); with the
    candidates' ``heights_mm`` (LPS z), a short crossing at the top of a run of ribs
    (:meth:`RibEvidence.top_of_ribs`) reads :data:`TOP_BEARING_LIKELIHOOD`."""
    likelihood = FREE_SIDE_LIKELIHOOD[None, :] ** evidence.free_sides[:, None].astype(np.float64)
    likelihood[evidence.bearing] = BEARING_LIKELIHOOD
    if heights_mm is not None:
        likelihood[evidence.top_of_ribs(heights_mm)] = TOP_BEARING_LIKELIHOOD
    return likelihood


def rib_evidence(image: sitk.Image, positions_mm: np.ndarray) -> RibEvidence:
    """Rib crossings of each candidate (module docstring); fewer than two candidates: nothing known."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    n = len(positions)
    reach = np.zeros((n, 2))
    seen = np.zeros((n, 2), dtype=bool)
    unknown = np.zeros((n, 2), dtype=bool)
    leaves = np.zeros((n, 2), dtype=bool)
    measured = np.zeros((n, 2))  # the reach of the bone itself, before step 5
    if n < 2:
        return RibEvidence(reach, seen)
    order = np.argsort(positions[:, 2], kind="stable")  # feet to head (LPS: +z is the head)
    chain = positions[order]
    grid = _search_grid(chain)
    ct = resample_ct(image, grid, default=-5000.0)
    covered = ct > PADDING_HU
    ct[~covered] = -1000.0
    x, y, z = (grid.origin_mm[a] + GRID_MM * np.arange(grid.size[a]) for a in range(3))
    line = centre_line_by_height(chain)
    centre_x = np.interp(z, line[:, 2], line[:, 0])
    centre_y = np.interp(z, line[:, 2], line[:, 1])
    side_of = np.sign(x[None, :] - centre_x[:, None])  # (z, x): +1 patient's left (LPS +x)
    lateral = np.abs(x[None, :] - centre_x[:, None])
    behind = y[None, :] - centre_y[:, None]  # (z, y): LPS +y is posterior
    volume = sitk.GetImageFromArray(ct)
    volume.SetSpacing((GRID_MM,) * 3)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(volume, SMOOTH_MM))
    bone = ((smooth > BONE_HU) & (lateral[:, None, :] >= SHELL_MM[0]) & (behind[:, :, None] > -FRONT_MM))
    parts = cc3d.connected_components(bone, connectivity=26)
    zz, yy, xx = np.nonzero(parts)
    labels = parts[zz, yy, xx]
    reach_of = np.zeros(int(parts.max()) + 1)
    np.maximum.at(reach_of, labels, lateral[zz, xx])
    plate = np.bincount(labels, minlength=len(reach_of)) * GRID_MM**3 / 1000.0 > MAX_PART_ML
    # A part that runs out of the CT (or the box) may be a rib cut short: its reach says nothing.
    cut_of = np.zeros(len(reach_of), dtype=bool)
    cut_of[labels[_at_edge(covered)[zz, yy, xx]]] = True
    # One that leaves it sideways far enough out is a rib cut by a narrow view (step 5).
    leaves_of = np.zeros(len(reach_of), dtype=bool)
    leaves_of[labels[_at_edge(covered, axes=(2,))[zz, yy, xx]]] = True
    leaves_of &= reach_of >= SIDE_EDGE_MM
    shell = (parts > 0) & (lateral[:, None, :] <= SHELL_MM[1]) & (behind[:, :, None] >= 0.0)
    crossings = cc3d.connected_components(shell, connectivity=26)
    spacing = _local_spacing(chain)
    directions = sagittal_directions(chain)
    cz, cy, cx = np.nonzero(crossings)
    ids = crossings[cz, cy, cx]
    for k in np.unique(ids):
        here = ids == k
        heights = z[cz[here]]
        side = 1 if np.mean(side_of[cz[here], cx[here]]) > 0 else 0
        part = parts[cz[here], cy[here], cx[here]]
        if heights.max() - heights.min() + GRID_MM > MAX_CROSSING_MM or np.any(plate[part]):
            continue
        # The crossing's top above each vertebra's centre, measured along the spine (step 3).
        tops = rise_above(chain, y[cy[here]], heights, directions)
        owner = int(np.argmax(tops <= CROSSING_RISE_MM)) if np.any(tops <= CROSSING_RISE_MM) else len(chain)
        if owner == len(chain):
            # Above the chain's top: the rib of a vertebra above it, or the top one's own where the scan cuts
            # that vertebra (its centre is then the visible part's, too low): the top one's side is unknown.
            if tops[-1] <= spacing[-1]:
                unknown[order[-1], side] = True
            continue
        if -tops[owner] > spacing[owner]:
            continue  # below the chain's bottom
        part_reach = float(reach_of[part].max())
        measured[order[owner], side] = max(measured[order[owner], side], part_reach)
        if np.any(leaves_of[part]) and heights.max() - heights.min() + GRID_MM >= MIN_LEAVING_MM:
            part_reach = max(part_reach, RIB_REACH_MM)
            leaves[order[owner], side] = True
        reach[order[owner], side] = max(reach[order[owner], side], part_reach)
        if part_reach < RIB_REACH_MM and np.any(cut_of[part]):
            unknown[order[owner], side] = True
    for i, centre in enumerate(chain):
        for side, sign in ((0, -1.0), (1, 1.0)):
            point = centre + np.array([sign * (SIDE_EDGE_MM + SEEN_MARGIN_MM), SEEN_POSTERIOR_MM, 0.0])
            index = np.rint(grid.world_to_index(point)).astype(int)
            inside = bool(np.all(index >= 0) and np.all(index < np.asarray(grid.size)))
            seen[order[i], side] = (inside and bool(covered[index[2], index[1], index[0]])
                                    and not unknown[order[i], side])
    # Step 7: a rib read only from bone leaving the view, opposite a side seen free of ribs.
    lone = leaves & (measured < RIB_REACH_MM) & RibEvidence(reach, seen).free[:, ::-1]
    reach[lone] = measured[lone]
    bearing = np.any(reach[order] >= RIB_REACH_MM, axis=1)  # chain order, feet to head
    if bearing.any():
        # Where ribs are seen, their absence speaks only below the lowest rib: there it places the
        # thoracolumbar junction. Above it, a missing rib is a short first rib, one given to a neighbour,
        # or one the scan cuts, and says nothing of the region.
        lowest = int(np.argmax(bearing))
        seen[order[lowest:]] = False
    pixel = Geometry.of(image).pixel_mm
    evidence = RibEvidence(reach, seen, resolved=pixel <= RIB_RESOLVED_MM)
    if not evidence.resolved:
        log.info("ribs: voxels reaching %.1f mm across the patient are coarser than %.1f mm: the top of a run of ribs "
                 "may be C7's process run into the first rib", pixel, RIB_RESOLVED_MM)
    log.info("ribs: %d of %d candidates bear ribs (%d leaving the view sideways, %d of those not taken: the other "
             "side shows none), %d show none on both sides, %d on one", int(evidence.bearing.sum()), n,
             int(np.any(leaves, axis=1).sum()), int(np.any(lone, axis=1).sum()),
             int(np.sum(evidence.free_sides == 2)), int(np.sum(evidence.free_sides == 1)))
    return evidence


def rise_above(chain: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray, directions: np.ndarray | None = None
               ) -> np.ndarray:
    """``(N,)``: how far the highest of the points (LPS ``y_mm``, ``z_mm``) lies above each vertebra of ``chain``
    (``(N, 3)`` centres, feet to head), measured along the spine's local sagittal direction there.

    A rib leaves the spine at its vertebra's transverse process, 15-30 mm behind the body's centre. Where the
    column leans (the neck rises forwards by 12-24 degrees between the annotated C6, C7 and T1 of the real neck
    CTs at hand), what lies behind a body lies higher than it, by that distance times the lean's sine: measured
    along z, the first rib's crossing rose 10-20 mm above T1's centre and went to C7. Along the spine's own
    direction (:func:`sagittal_directions`; left-right lean is ignored: it lifts one side's crossing and lowers
    the other's) it is the rise above its own vertebra again. On an upright column this is the height difference
    along z. ``directions``: :func:`sagittal_directions` of ``chain``, when already at hand.
    """
    centres = np.asarray(chain, dtype=np.float64).reshape(-1, 3)
    directions = sagittal_directions(centres) if directions is None else directions
    offsets = np.stack([np.asarray(y_mm, dtype=np.float64), np.asarray(z_mm, dtype=np.float64)], axis=1)
    heights = np.einsum("nkc,nc->nk", offsets[None, :, :] - centres[:, None, 1:], directions)
    return heights.max(axis=1)


def sagittal_directions(chain: np.ndarray) -> np.ndarray:
    """``(N, 2)``: the spine's unit direction towards the head in the sagittal plane (LPS y, z) at each centre of
    ``chain`` (``(N, 3)``), from :func:`_sagittal_slope`."""
    centres = np.asarray(chain, dtype=np.float64).reshape(-1, 3)
    slopes = np.array([_sagittal_slope(centres, centre[2]) for centre in centres])  # dy/dz
    directions = np.stack([slopes, np.ones(len(centres))], axis=1)
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _sagittal_slope(centres: np.ndarray, height_mm: float) -> float:
    """dy/dz of the column at ``height_mm``: the median slope between pairs of the centres within
    :data:`LEAN_REACH_MM` of that height (Theil-Sen: a false candidate in front of or behind the bodies moves it
    little), clipped to :data:`MAX_LEAN_DEG`; 0 (upright) with fewer than two centres apart in height."""
    near = centres[np.abs(centres[:, 2] - height_mm) <= LEAN_REACH_MM]
    dz = near[None, :, 2] - near[:, None, 2]
    dy = near[None, :, 1] - near[:, None, 1]
    apart = dz > MIN_PAIR_DZ_MM
    if not apart.any():
        return 0.0
    limit = np.tan(np.radians(MAX_LEAN_DEG))
    return float(np.clip(np.median(dy[apart] / dz[apart]), -limit, limit))


def _at_edge(covered: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Voxels of ``covered`` within :data:`EDGE_MM` (along one of ``axes``, array order z y x) of one that is
    not, or of the box's faces."""
    edge = np.zeros_like(covered)
    steps = max(round(EDGE_MM / GRID_MM), 1)
    for axis in axes:
        for shift in range(1, steps + 1):
            edge |= ~np.roll(covered, shift, axis=axis) | ~np.roll(covered, -shift, axis=axis)
        face = [slice(None)] * 3
        for end in range(steps):
            for index in (end, -1 - end):
                face[axis] = index  # type: ignore[call-overload]
                edge[tuple(face)] = True
    return edge & covered


def _search_grid(chain: np.ndarray) -> Geometry:
    low = chain.min(axis=0) - MARGIN_MM
    high = chain.max(axis=0) + MARGIN_MM
    high[1] = chain[:, 1].max() + BACK_MM
    size = tuple(int(v) for v in np.ceil((high - low) / GRID_MM) + 1)
    return Geometry(size=size, spacing_mm=(GRID_MM,) * 3,  # type: ignore[arg-type]
                    origin_mm=tuple(float(v) for v in low),  # type: ignore[arg-type]
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _local_spacing(chain: np.ndarray) -> np.ndarray:
    """Each vertebra's spacing to its neighbours along z (the mean of the one or two gaps beside it)."""
    gaps = np.abs(np.diff(chain[:, 2]))
    left = np.concatenate([[np.nan], gaps])
    right = np.concatenate([gaps, [np.nan]])
    return np.nanmean(np.stack([left, right]), axis=0)

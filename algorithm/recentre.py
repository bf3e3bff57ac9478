"""Candidates moved onto the vertebral bodies a segment-stage model outlines, and a chain without holes.

The model is the pipeline's outline model (``outline.onnx`` when the model folder has one, else
``segment.onnx``: :attr:`algorithm.models.Models.outliner`); the rules and figures below were measured on
the outlines of the bundled ``outline.onnx`` (the segment stage's round 5).

On CTs unlike its training data the locate network's peaks go astray: some sit beside a body, some on
the aorta or a spinous process, and some bodies get none. The segment model transfers better (its
oracle Dice on unseen real CTs is 0.74-0.87, ``bench/real.py``): given a point, it outlines the
vertebra there, and the deepest part of that outline is the body's centre (:mod:`spine.body`). So:

1. :func:`recentre`: every seed moves to the body centre of the outline at it, for ``rounds`` rounds
   (a seed beside a body lands in it, then on its centre). A seed whose outline is smaller than
   :data:`MIN_VOLUME_ML` (nothing vertebra-like there: gut, vessel, a spinous process's tip) is
   dropped, and so is one whose CT is nearly uniform (:func:`spread_floor`: contrast-filled
   vessels, judged against the spine's own bone); centres closer than :data:`MERGE_MM` are one
   vertebra (the stronger seed's).
2. :func:`fill_chain`: along the chain, head to feet, a gap longer than :data:`GAP_FACTOR` times the
   neighbouring spacings gets seeds at its even subdivisions, and one spacing beyond each end gets a
   seed (at the foot also one spacing below the last large outline where only small pieces lie below it:
   :func:`below_a_small_foot`); each is recentred and kept when its outline is at least
   :data:`FILL_VOLUME_FRACTION` of the chain's median outline and it is no duplicate; :func:`spaced_by_size`
   then thins the chain, except that a vertebra found inside a gap, at least :data:`GAP_SPLIT` of the local
   spacing from both of its ends (:func:`splits_gap`), stays: the gap says one is missing there. Repeated
   until nothing is added.
3. :func:`behind_the_bodies`, before and after filling: small outlines behind the column of the large ones
   (laminae and processes a narrow view leaves) are dropped; :func:`on_spine_curve`, before and after
   filling: so are centres far off the spine through their neighbours (a spinous process, a vessel).
   :func:`column_outlines` is what runs before filling.
   Before thinning by size, two outlines of nearly one volume within each other's reach
   (:func:`alike_in_reach`) are recentred until they stop moving (:func:`settle`): either one vertebra
   outlined twice, which then merges, or two neighbours pulled towards each other, which then part.

The label scores of the moved candidates are read from the locate heatmaps at their new places
(:meth:`algorithm.locate.LocateMaps.candidates_at`), so the decoder sees the network's evidence there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk

from algorithm.detect import sub_grid
from algorithm.labelling.curve import centre_line_by_height, distance_to_spine_curve
from algorithm.models import StageModel
from algorithm.segment import SEGMENT_FLOOR, patch_input, patch_start
from spine.body import deepest_centre_zyx
from spine.image import Geometry
from spine.modelmeta import ModelMeta
from spine.preprocess import model_grid, zyx_to_world

__all__ = [
    "alike_in_reach",
    "behind_the_bodies",
    "below_a_small_foot",
    "FILL_VOLUME_FRACTION",
    "GAP_FACTOR",
    "MERGE_MM",
    "MIN_HU_SPREAD",
    "RELATIVE_HU_SPREAD",
    "MIN_VOLUME_ML",
    "Outline",
    "chain_gaps",
    "column_outlines",
    "cut_ends",
    "fill_chain",
    "merge_outlines",
    "on_spine_curve",
    "outline_vertebrae",
    "outside_view",
    "recentre",
    "settle",
    "spaced_by_size",
    "splits_gap",
    "spread_floor",
]

log = logging.getLogger(__name__)

MIN_VOLUME_ML = 4.0
"""Smallest outline taken for a vertebra: C3-C7 measure 8-15 ml in VerSe's masks, a lumbar one 40-80."""
MERGE_MM = 12.0
"""Two body centres closer than this are one vertebra (cervical centres lie 14 mm or more apart)."""
GAP_FACTOR = 1.4
"""A gap this many times longer than its neighbouring spacings hides at least one vertebra (1.6 until the
real neck CTs: C2's centroid sits high on its dens, so the C2-C3 step (21-29 mm) and the thoracic ones beside
a neck's lower gap lift the local median to 18-19 mm, and a 29 mm gap over a missing C5 read as none)."""
FILL_VOLUME_FRACTION = 0.4
"""A vertebra found by filling must outline at least this fraction of the chain's median volume
(partial outlines at the edge of the field of view stay smaller; the sacrum's S1 does not, and can
pass for an L6: the model card's limitations)."""
MAX_FILL_PASSES = 4
MIN_HU_SPREAD = 180.0
"""Least 10th-90th percentile HU spread of a vertebra's outline: 209-694 HU over the vertebrae of the four
real CTs at hand (3 mm to 1 mm), 84-160 HU over the outlines the segment model drew on a contrast-filled
aortic aneurysm (totalsegmentator-aorta, a case no model trained on; the value was chosen looking at it).
Lowered where the spine's own bone is that uniform (:data:`RELATIVE_HU_SPREAD`)."""
RELATIVE_HU_SPREAD = 0.6
"""Where the outlines around are low-contrast bone themselves (osteoporotic bone, a smooth kernel, thick
voxels: synthetic phantoms with vertebra spreads of 100-150 HU lost every vertebra but one to
:data:`MIN_HU_SPREAD`), an outline is too uniform only below this fraction of their median spread: a vessel
among bodies still is (the aorta crop's bodies spread 209-694 HU, so its floor stays 180), a spine of dull
bone keeps its bodies. Chosen a priori; checked on four phantoms generated after it was written (seeds
7100-7103: end-to-end id 0.00, 0.00, 0.18, 0.60 -> 1.00, 0.00, 0.82, 0.60) with every real CT unchanged."""
SPACING_FACTOR = 0.6
"""Body centres lie at least this many cube roots of a vertebra's volume apart (:func:`spaced_by_size`)."""
GAP_SPLIT = 0.5
"""A vertebra found in a gap (:func:`fill_chain`) stays, whatever :func:`spaced_by_size` says, when it lies at
least this fraction of the local spacing from both ends of the gap: the gap itself says a vertebra is missing
there. Cervical outlines carry their processes (C5-C7 of the real neck CTs at hand: 12-21 ml, centres a few
mm off the bodies'), so a 20 ml neighbour's reach (16 mm) swallowed the missing C5 of a neck whose 29 mm
C4-C6 gap the spacing had flagged, and the chain below it came out one level high."""
BEHIND_MM = 15.0
"""A small outline (under :data:`SMALL_FRACTION` of the chain's median) whose centre lies more than this
behind the line of the large ones is a posterior element, not a body (:func:`behind_the_bodies`): on a
sagittal slab of the bundled example four outlines of laminae and processes (9-29 ml against bodies of
47-63 ml) lay 20-36 mm behind the bodies, within :data:`OFF_CURVE_MM` of the curve."""
SMALL_FRACTION = 0.5
"""What "small" means for :data:`BEHIND_MM`: below this fraction of the median outline volume."""
OFF_CURVE_MM = 30.0
"""A body centre farther than this from the spine through its neighbours is no body: a spinous
process's outline lies 40-70 mm behind its body, a vessel's in front of it; bodies, even on a bent
column, lie within 25 mm of the line through their neighbours, and a lordotic one's within 30 mm of the arc
through them (:func:`algorithm.labelling.curve.distance_to_spine_curve`; ``test_recentre``'s property tests)."""
ALIKE_VOLUME = 0.8
"""Two outlines this close in volume (smaller over larger) are both vertebrae or both one: :func:`alike_in_reach`."""
SETTLE_ROUNDS = 4
"""At most this many more rounds of recentring for the column's vertebrae once found (:func:`settle`)."""
SETTLED_MM = 1.0
"""A vertebra has settled when a round moves its centre no more than this."""


@dataclass(frozen=True)
class Outline:
    """The segment model's outline at a seed: its body centre (LPS mm), its volume (ml), the spread of
    the CT inside it (HU between its 10th and 90th percentiles), and whether it runs out of the CT's field
    of view above or below (``cut``: (above, below); a vertebra the scan cuts, whose centre is that of its
    visible part)."""

    centre_mm: np.ndarray
    volume_ml: float
    hu_spread: float = 1000.0
    cut: tuple[bool, bool] = (False, False)


def spread_floor(outlines: Sequence[Outline]) -> float:
    """The least HU spread of bone among these outlines: :data:`MIN_HU_SPREAD`, or :data:`RELATIVE_HU_SPREAD`
    times their median spread where that is lower (a spine of low-contrast bone). Fewer than three outlines
    say nothing of the spine's bone (one may be a vessel alone): then :data:`MIN_HU_SPREAD`."""
    if len(outlines) < 3:
        return MIN_HU_SPREAD
    return min(MIN_HU_SPREAD, RELATIVE_HU_SPREAD * float(np.median([o.hu_spread for o in outlines])))


def outline_vertebrae(image: sitk.Image, model: StageModel, seeds_mm: Sequence[np.ndarray], *,
                      floor: float = SEGMENT_FLOOR) -> list[Outline | None]:
    """The outline of the vertebra at each seed (None where no voxel reaches ``floor``).

    The outline is the 26-connected component of the patch's ``probability >= floor`` that holds the
    seed's voxel, or the largest component when the seed lies outside all of them; its centre is the
    centre of its deepest part (:func:`spine.body.deepest_centre_zyx`).
    """
    meta = model.meta
    geometry = Geometry.of(image)
    full = model_grid(geometry, meta.spacing_zyx_mm)
    patch = np.asarray(meta.patch_shape_zyx, dtype=np.int64)
    voxel_ml = float(np.prod(meta.spacing_zyx_mm)) / 1000.0
    placed = [patch_start(full, seed, patch) for seed in seeds_mm]
    outlines: list[Outline | None] = []
    for first in range(0, len(placed), model.batch_size):
        group = placed[first:first + model.batch_size]
        grids = [sub_grid(full, tuple(int(v) for v in start), tuple(int(v) for v in patch)) for start, _ in group]
        batch = np.stack([patch_input(image, model, grid, centre) for grid, (_, centre) in zip(grids, group,
                                                                                             strict=True)])
        for grid, (_, centre), probability in zip(grids, group, model.run(batch)[:, 0], strict=True):
            hu = _hounsfield(batch[len(outlines) - first], meta)
            outlines.append(_outline(probability >= floor, hu, grid, centre, meta.spacing_zyx_mm, voxel_ml,
                                     outside_view(geometry, grid)))
    return outlines


def outside_view(geometry: Geometry, grid: Geometry) -> np.ndarray:
    """``(z, y, x)`` bool on the identity-direction ``grid``: voxels whose centre lies outside the CT."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid.shape_zyx), indexing="ij")
    index = geometry.world_to_index(grid.index_to_world(np.stack([x, y, z], axis=-1)))
    size = np.asarray(geometry.size, dtype=np.float64)
    return np.any((index < -0.5) | (index > size - 0.5), axis=-1)


CUT_REACH_VOXELS = 2
"""An outline ending this close below (or above) the end of the field of view is cut by it: the model's
probability fades over the last voxel or two before the padding."""


def cut_ends(inside: np.ndarray, outside: np.ndarray) -> tuple[bool, bool]:
    """Whether an outline (``inside``, on the same array as ``outside``) reaches the field of view's end
    above (+z: array axis 0 on an identity-direction grid) or below it, within :data:`CUT_REACH_VOXELS`; an
    outline that reaches the patch's own top or bottom inside the CT is not cut by the scan."""
    within = inside & ~outside  # an outline voxel in the padding beside a narrow CT says nothing of its ends
    above = below = False
    for step in range(1, CUT_REACH_VOXELS + 1):
        above |= bool(np.any(within[:-step] & outside[step:]))
        below |= bool(np.any(within[step:] & outside[:-step]))
    return above, below


def _hounsfield(network_input: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The CT channel of a segment input back in HU (clipped to the model's window)."""
    ct = network_input[list(meta.input_channels).index("ct")]
    return ct * np.float32(meta.intensity.scale) + np.float32(meta.intensity.center)


def _outline(mask: np.ndarray, hu: np.ndarray, grid: Geometry, centre_zyx: np.ndarray,
             spacing_zyx_mm: Sequence[float], voxel_ml: float, outside: np.ndarray | None = None) -> Outline | None:
    if not mask.any():
        return None
    components = cc3d.connected_components(mask, connectivity=26)
    seed = tuple(np.clip(np.rint(centre_zyx).astype(np.int64), 0, np.asarray(mask.shape) - 1))
    chosen = int(components[seed])
    stats = cc3d.statistics(components)
    if chosen == 0:
        counts = np.asarray(stats["voxel_counts"]).copy()
        counts[0] = 0
        chosen = int(np.argmax(counts))
    box = stats["bounding_boxes"][chosen]
    inside = components[box] == chosen
    zyx = deepest_centre_zyx(inside, spacing_zyx_mm) + np.array([s.start for s in box], dtype=np.float64)
    low, high = np.percentile(hu[box][inside], [10.0, 90.0])
    cut = (False, False)
    if outside is not None:
        whole = np.zeros(mask.shape, dtype=bool)
        whole[box] = inside
        cut = cut_ends(whole, outside)
    return Outline(zyx_to_world(grid, zyx[None])[0], float(inside.sum()) * voxel_ml, float(high - low), cut)


def merge_outlines(outlines: Sequence[Outline | None], *, kept: Sequence[Outline] = (),
                   min_volume_ml: float = MIN_VOLUME_ML, merge_mm: float = MERGE_MM) -> list[Outline]:
    """The outlines in order, without those below ``min_volume_ml``, those whose CT is too uniform for bone
    (:func:`spread_floor` over ``kept`` and these outlines) and those within ``merge_mm`` of one already kept
    (``kept`` first, then earlier ones in the list); returns only the newly kept."""
    chosen: list[Outline] = []
    floor = spread_floor([*kept, *(o for o in outlines if o is not None and o.volume_ml >= min_volume_ml)])
    for outline in outlines:
        if outline is None or outline.volume_ml < min_volume_ml or outline.hu_spread < floor:
            continue
        others = [*kept, *chosen]
        if others and min(float(np.linalg.norm(o.centre_mm - outline.centre_mm)) for o in others) < merge_mm:
            continue
        chosen.append(outline)
    return chosen


def recentre(image: sitk.Image, model: StageModel, seeds_mm: Sequence[np.ndarray], *, rounds: int = 2,
             kept: Sequence[Outline] = (), min_volume_ml: float = MIN_VOLUME_ML,
             merge_mm: float = MERGE_MM) -> list[Outline]:
    """Seeds (strongest first) -> distinct vertebrae's outlines (module docstring, step 1); ``kept``:
    vertebrae already found, which new ones may not duplicate."""
    points = [np.asarray(seed, dtype=np.float64) for seed in seeds_mm]
    outlines: list[Outline] = []
    for _ in range(max(rounds, 1)):
        if not points:
            return []
        outlines = merge_outlines(outline_vertebrae(image, model, points), kept=kept,
                                  min_volume_ml=min_volume_ml, merge_mm=merge_mm)
        points = [outline.centre_mm for outline in outlines]
    return outlines


def spaced_by_size(outlines: Sequence[Outline], *, factor: float = SPACING_FACTOR) -> list[Outline]:
    """Non-maximum suppression by size: larger outlines first, each kept unless it lies within
    ``factor * V**(1/3)`` (V the kept one's volume in mm^3) of one already kept; original order kept.

    A vertebra's body is about as tall as the cube root of its volume suggests, and the next body's
    centre lies at least a body height away (``factor`` 0.6: 23 mm for a 60 ml lumbar vertebra against
    35-40 mm spacing, 13 mm for a 10 ml cervical one against 15-18 mm). An outline between two bodies
    (a seed on the disc outlines parts of both) is smaller than either and falls within their reach.
    """
    order = sorted(range(len(outlines)), key=lambda i: -outlines[i].volume_ml)
    kept: list[int] = []
    for i in order:
        if all(np.linalg.norm(outlines[i].centre_mm - outlines[j].centre_mm)
               >= factor * (outlines[j].volume_ml * 1000.0) ** (1.0 / 3.0) for j in kept):
            kept.append(i)
    return [outlines[i] for i in sorted(kept)]


def on_spine_curve(outlines: Sequence[Outline], *, max_mm: float = OFF_CURVE_MM) -> list[Outline]:
    """The outlines whose centres lie within ``max_mm`` of the spine through the others
    (:func:`algorithm.labelling.curve.distance_to_spine_curve`); fewer than four are all kept."""
    distance = distance_to_spine_curve(np.array([outline.centre_mm for outline in outlines]))
    return [outline for outline, d in zip(outlines, distance, strict=True) if d <= max_mm]


def column_outlines(outlines: Sequence[Outline],
                    settling: Callable[[Sequence[Outline], Sequence[Outline]], list[Outline]] | None = None
                    ) -> list[Outline]:
    """The recentred outlines that make the column before the chain is filled: posterior elements out
    (:func:`behind_the_bodies`) before the spine curve is fitted (:func:`on_spine_curve`), then thinned by
    size (:func:`spaced_by_size`). Fitted with the laminae, the curve bent: on the example CT with its sacrum
    cropped, three lamina outlines 35 mm behind the bodies took a 63 ml L4 body off it. Between the curve and the
    thinning, ``settling`` (the image's :func:`settle`, given the outlines to move and the others) moves the
    outlines :func:`alike_in_reach` until they stop."""
    on_curve = on_spine_curve(behind_the_bodies(outlines))
    if settling is not None and (pairs := alike_in_reach(on_curve)):
        others = [o for i, o in enumerate(on_curve) if i not in pairs]
        moved = iter(settling([on_curve[i] for i in pairs], others))
        # the settled take the first of their places in the list (one that merged leaves its place empty)
        settled = {i: next(moved, None) for i in pairs}
        on_curve = [o for o in (settled.get(i, o) for i, o in enumerate(on_curve)) if o is not None]
    return spaced_by_size(on_curve)


def alike_in_reach(outlines: Sequence[Outline], *, factor: float = SPACING_FACTOR,
                   alike: float = ALIKE_VOLUME) -> list[int]:
    """Indices of the outlines that :func:`spaced_by_size` would weigh against one of nearly their size (volumes
    within ``alike`` of each other): one vertebra outlined twice, or two neighbours whose outlines were pulled
    towards each other. A disc's outline between two bodies is smaller than either and not among them."""
    found: set[int] = set()
    for i, a in enumerate(outlines):
        for j in range(i + 1, len(outlines)):
            b = outlines[j]
            small, large = sorted((a.volume_ml, b.volume_ml))
            if small < alike * large:
                continue
            if np.linalg.norm(a.centre_mm - b.centre_mm) < factor * (large * 1000.0) ** (1.0 / 3.0):
                found |= {i, j}
    return sorted(found)


def settle(image: sitk.Image, model: StageModel, outlines: Sequence[Outline], kept: Sequence[Outline] = (), *,
           rounds: int = SETTLE_ROUNDS, settled_mm: float = SETTLED_MM, merge_mm: float = MERGE_MM,
           min_volume_ml: float = MIN_VOLUME_ML) -> list[Outline]:
    """``outlines`` recentred, round by round, until their centres stop moving (``settled_mm``, at most ``rounds``
    rounds), in order; one that settles within ``merge_mm`` of one of ``kept`` (vertebrae found already) or of one
    before it is that vertebra. An outline that a round loses or shrinks under ``min_volume_ml`` keeps its last one:
    settling moves vertebrae, it does not judge them.

    A seed on the pedicles or on the posterior half of a tilted body outlines body and pedicles together, and
    that outline's centre lies behind the body's; each round moves it a few mm forwards, and two rounds
    (:func:`recentre`) can leave it there. verse014 cropped above L3: L4's outline (46 ml) settled 10 mm behind
    and below its centre, 18 mm from L5's (48 ml), and :func:`spaced_by_size` dropped it beside L5; an outline
    of L4's pedicles, 21 mm from its centre, took its place. Settled, the two are 26 mm apart, beyond L5's reach
    (22 mm), and L4's lies 6 mm from its centre. :func:`column_outlines` settles only outlines
    :func:`alike_in_reach`: settling every vertebra moved the necks' outlines as much the other way
    (``docs/benchmarks.md``)."""
    current = list(outlines)
    moving = list(range(len(current)))
    for _ in range(max(rounds, 0)):
        if not moving:
            break
        moved = outline_vertebrae(image, model, [current[i].centre_mm for i in moving])
        still = []
        for i, outline in zip(moving, moved, strict=True):
            if outline is None or outline.volume_ml < min_volume_ml:
                continue
            if float(np.linalg.norm(outline.centre_mm - current[i].centre_mm)) > settled_mm:
                still.append(i)
            current[i] = outline
        moving = still
    chosen: list[Outline] = []
    for outline in current:
        if all(float(np.linalg.norm(outline.centre_mm - other.centre_mm)) >= merge_mm for other in [*kept, *chosen]):
            chosen.append(outline)
    if len(chosen) < len(current):
        log.info("recentre: %d vertebrae settled onto another", len(current) - len(chosen))
    return chosen


def chain_gaps(centres_mm: np.ndarray, *, gap_factor: float = GAP_FACTOR) -> list[np.ndarray]:
    """Seeds for the vertebrae a head-to-feet ordered chain of body centres seems to skip.

    With ``d_i`` the distance between centres ``i`` and ``i+1`` and ``m_i`` the median of up to two
    spacings on each side of it, a gap with ``d_i > gap_factor * m_i`` gets ``k - 1`` seeds evenly
    between its ends, ``k = round(d_i / m_i)`` (at least 2); plus one seed a spacing beyond each end
    (``2 c_0 - c_1`` and ``2 c_n - c_(n-1)``). Fewer than two centres give no seed.
    """
    centres = np.asarray(centres_mm, dtype=np.float64).reshape(-1, 3)
    if len(centres) < 2:
        return []
    spacing = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    seeds = [2.0 * centres[0] - centres[1], 2.0 * centres[-1] - centres[-2]]
    for i, gap in enumerate(spacing):
        local = _local_spacing(spacing, i)
        if local is not None and local > 0 and gap > gap_factor * local:
            k = max(round(gap / local), 2)
            seeds += [centres[i] + (centres[i + 1] - centres[i]) * j / k for j in range(1, k)]
    return seeds


def _local_spacing(spacing: np.ndarray, i: int) -> float | None:
    """The median of up to two spacings on each side of step ``i`` of a chain (None: it has no other step)."""
    neighbours = np.concatenate([spacing[max(i - 2, 0):i], spacing[i + 1:i + 3]])
    return float(np.median(neighbours)) if len(neighbours) else None


def fill_chain(image: sitk.Image, model: StageModel, outlines: Sequence[Outline], *, rounds: int = 2,
               fill_volume_fraction: float = FILL_VOLUME_FRACTION) -> list[Outline]:
    """``outlines`` plus the vertebrae found in the chain's gaps and beyond its ends (module docstring,
    step 2), in their original order followed by the new ones."""
    found = list(outlines)
    geometry = Geometry.of(image)
    protected: set[int] = set()  # vertebrae found inside a gap: later passes keep them (GAP_SPLIT)
    for _ in range(MAX_FILL_PASSES):
        if len(found) < 2:
            break
        chain = sorted(found, key=lambda o: -float(o.centre_mm[2]))  # LPS: +z is the head
        centres = np.array([o.centre_mm for o in chain])
        least = fill_volume_fraction * float(np.median([o.volume_ml for o in found]))
        seeds = [seed for seed in [*chain_gaps(centres), *below_a_small_foot(chain)]
                 if geometry.contains_mm(seed)]
        added = recentre(image, model, seeds, rounds=rounds, kept=found, min_volume_ml=least)
        if not added:
            break
        log.info("recentre: %d vertebrae added in the chain's gaps or beyond its ends", len(added))
        on_curve = on_spine_curve([*found, *added])
        spaced = {id(o) for o in spaced_by_size(on_curve)}
        rescued = {id(o) for o in added if id(o) not in spaced and splits_gap(o.centre_mm, centres)}
        protected |= rescued
        before = len(found)
        found = [o for o in on_curve if id(o) in spaced or id(o) in protected]
        if len(found) == before and not rescued:
            break  # what was added was suppressed again: another pass would add the same
    return found


def below_a_small_foot(chain: Sequence[Outline], *, fraction: float = SMALL_FRACTION) -> list[np.ndarray]:
    """A seed one spacing below the lowest large outline of ``chain`` (head to feet; large: at least ``fraction``
    of the chain's median volume, as :func:`behind_the_bodies` has it) where only small ones lie below it, from
    the two lowest large ones; none otherwise.

    :func:`chain_gaps` seeds one spacing below the chain's lowest outline, whatever it is. Where the chain ends in
    pieces (a vertebra the field of view cuts, or the sacrum's side and a fragment below it) the body beside them
    may have no seed of its own, less than :data:`GAP_FACTOR` spacings below the last whole one. verse014 in 3 mm
    sagittal slices (a VerSe sagittal scan's) ended at L5 (47 ml), an outline of S1's side (17 ml, 24 mm below)
    and a sacral fragment (11 ml, 37 mm below L5); S1's body (39 ml where seeded one spacing below L5) was not in
    the chain, the fragment stayed as L5 and every level came out one high. Where no body hides, the seed lands
    on a piece again (a duplicate, not kept) or outside the CT. Only from large outlines: seeded below tptbox's
    L3 pedicles (22 ml, 36 mm behind its body), a seed found L4's and the chain lost L4's body. Only the foot:
    the head of a neck's chain is the skull anchor's (:mod:`algorithm.skull`)."""
    if len(chain) < 3:
        return []
    volumes = np.array([outline.volume_ml for outline in chain])
    large = np.flatnonzero(volumes >= fraction * float(np.median(volumes)))
    if len(large) < 2 or large[-1] == len(chain) - 1:
        return []
    return [2.0 * chain[large[-1]].centre_mm - chain[large[-2]].centre_mm]


def behind_the_bodies(outlines: Sequence[Outline], *, max_mm: float = BEHIND_MM,
                      fraction: float = SMALL_FRACTION) -> list[Outline]:
    """The outlines without the small ones lying behind the column of the large ones (:data:`BEHIND_MM`).

    The large outlines (at least ``fraction`` of the median volume) make the column: at a small outline's
    height their front-to-back position (LPS y) is interpolated along z (held at the ends); a small outline
    more than ``max_mm`` behind it (+y) goes. Fewer than three large outlines say nothing: all stay."""
    if len(outlines) < 4:
        return list(outlines)
    volumes = np.array([o.volume_ml for o in outlines])
    large = volumes >= fraction * float(np.median(volumes))
    if int(large.sum()) < 3:
        return list(outlines)
    column = centre_line_by_height(np.array([o.centre_mm for o, big in zip(outlines, large, strict=True) if big]))
    kept = []
    for outline, big in zip(outlines, large, strict=True):
        front_back = float(np.interp(outline.centre_mm[2], column[:, 2], column[:, 1]))
        if big or outline.centre_mm[1] - front_back <= max_mm:
            kept.append(outline)
    if len(kept) < len(outlines):
        log.info("recentre: %d small outline(s) behind the bodies dropped (posterior elements)",
                 len(outlines) - len(kept))
    return kept


def splits_gap(centre_mm: np.ndarray, chain_mm: np.ndarray, *, gap_factor: float = GAP_FACTOR,
               split: float = GAP_SPLIT) -> bool:
    """Whether a point lies inside a gap of the chain (centres in any order) that :func:`chain_gaps` flags
    (longer than ``gap_factor`` times the median of up to two spacings on each side) and at least ``split``
    times that median from both of the gap's ends (along the chain's height, LPS z)."""
    chain = np.asarray(chain_mm, dtype=np.float64).reshape(-1, 3)
    chain = chain[np.argsort(-chain[:, 2], kind="stable")]  # head to feet
    z = float(np.asarray(centre_mm, dtype=np.float64)[2])
    above = int(np.sum(chain[:, 2] > z)) - 1  # the lowest member above the point
    if above < 0 or above + 1 >= len(chain):
        return False
    spacing = np.linalg.norm(np.diff(chain, axis=0), axis=1)
    local = _local_spacing(spacing, above)
    if local is None:
        return False
    ends = np.linalg.norm(chain[[above, above + 1]] - np.asarray(centre_mm, dtype=np.float64), axis=1)
    return bool(spacing[above] > gap_factor * local and ends.min() >= split * local)

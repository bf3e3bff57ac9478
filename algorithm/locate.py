"""Stage 2, locate: per-vertebra heatmaps inside the spine box -> centroid candidates with label scores.

Only the spine box is resampled, at the locate model's spacing on its identity-direction model
grid (voxels aligned with the grid a whole-image resampling would give, as in training). The
model's channel-max heatmap is searched for local maxima; each peak above a threshold, at
least a minimum distance from every stronger peak, becomes a candidate whose label scores are
the channels' values there, in :data:`spine.labels.LOCATE_CHANNELS` order (a channel the
model lacks scores 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from algorithm.detect import Detection, SpineBox, crop_grid, run_on_grid
from algorithm.labelling.constraints import Fix
from algorithm.models import StageModel
from algorithm.ribs import RibEvidence, region_likelihood
from algorithm.sizes import size_likelihood
from spine.image import Geometry
from spine.labels import LOCATE_CHANNELS, Region, region_of
from spine.preprocess import model_grid, world_to_zyx, zyx_to_world

__all__ = [
    "COARSE_PIXEL_MM",
    "MAX_CANDIDATES",
    "PEAK_SEPARATION_MM",
    "PEAK_THRESHOLD",
    "Candidates",
    "LocateMaps",
    "channel_scores",
    "find_peaks",
    "is_coarse",
    "locate_heatmaps",
    "locate_vertebrae",
    "peak_candidates",
    "refine_peak",
]

log = logging.getLogger(__name__)

PEAK_THRESHOLD = 0.3
"""Default channel-max heatmap value a peak must reach (heatmaps are trained to peak at 1); a locate model
names its own in its metadata (``peak_threshold``), which :func:`locate_vertebrae` uses."""
PEAK_SEPARATION_MM = 10.0
"""Minimum distance between two candidates: about a third of a thoracic or lumbar vertebra's
height (25-35 mm centre to centre); cervical centres still lie 14 mm or more apart."""
REGION_CONFIDENT_PEAK = 0.3
"""A candidate's region posterior counts in full from this centre probability up (the default peak
threshold), less below it (:meth:`Candidates.regions`)."""
MAX_CANDIDATES = 40
"""At most this many candidates (the strongest) go to the decoder: 26 vertebrae plus spares."""
COARSE_PIXEL_MM = 3.0
"""A CT whose voxels reach further than this along the patient's left-right or front-back axis (LPS x or y) is coarse:
the network trained on finer CTs loses count there. On the real OpenKBP `dev` and `fit` necks (3.5-5.4 mm pixels) its
strongest level, taken per case as the median over the annotated bodies it peaks on, is right in 6 of the 15 cases
where it counts within two levels (one level off in 5, two in 4), and calls neck vertebrae lumbar in 8 more."""


@dataclass(frozen=True)
class Candidates:
    """Centroid candidates of one CT.

    - ``positions_mm``: ``(N, 3)`` LPS world mm;
    - ``scores``: ``(N, 26)`` heatmap values per label, columns in ``LOCATE_CHANNELS`` order;
    - ``peak``: ``(N,)`` channel-max heatmap value at the candidate (strongest first);
    - ``ribs``: the ribs each candidate bears (:mod:`algorithm.ribs`), evidence from outside the network,
      or None;
    - ``cut``: ``(N, 2)`` bool, whether each candidate's vertebra runs out of the field of view above,
      below (:mod:`algorithm.recentre`'s outlines), or None (not known);
    - ``anchor``: a label the image itself fixes (C1 under the skull base, :mod:`algorithm.skull`), which the
      decoder takes as it takes a user's fix, or None;
    - ``on_sacrum``: the sacrum lies right below the lowest candidate (:func:`algorithm.sacrum.rests_on_sacrum`),
      so the chain ends on the last lumbar vertebra (the decoder's item 10);
    - ``searched``: the detection (box and why) the candidates were found in when it is not the detect stage's
      (looked for again under the skull base, :func:`algorithm.skull.neck_detection`), so the run report names
      the box the vertebrae came from and why; None when it is the detect stage's;
    - ``sizes_ml``: ``(N,)`` each candidate's segmented volume (NaN: not measured), region evidence from outside
      the network (:mod:`algorithm.sizes`), or None: set only where the anatomy check doubts a labelling's region;
    - ``outlined``: ``(N,)`` bool, whose position is the body centre of an outline (:mod:`algorithm.recentre`), not
      a heatmap peak (the network's own centroid) nor a point a rule of anatomy placed (:meth:`with_point`: C1
      under the skull base, C2 under C1); None: none is;
    - ``coarse``: the CT's pixels are coarser than :data:`COARSE_PIXEL_MM` (left-right or front-back), where the
      network's levels are least to be trusted (:func:`is_coarse`; the decoder then doubts its count more,
      :data:`algorithm.labelling.COARSE_OFFSET_PROBABILITY`).
    """

    positions_mm: np.ndarray
    scores: np.ndarray
    peak: np.ndarray
    ribs: RibEvidence | None = None
    cut: np.ndarray | None = None
    anchor: Fix | None = None
    on_sacrum: bool = False
    searched: Detection | None = None
    sizes_ml: np.ndarray | None = None
    outlined: np.ndarray | None = None
    coarse: bool = False

    def __len__(self) -> int:
        return int(self.positions_mm.shape[0])

    def anchors(self) -> tuple[str, ...]:
        """The ends of the spine the CT itself shows, which fix a level whatever the network counts: the skull base over
        C1 (``anchor``), the sacrum under the last lumbar vertebra (``on_sacrum``). The ribs are not among them here:
        where the network's count is doubted (``coarse``) they are not resolved either
        (:attr:`algorithm.ribs.RibEvidence.resolved`), and there the rib reader misreads both ends of a run of ribs
        (C7's process taken for the first rib; on the OpenKBP necks cut where a chest CT starts, `dev` pt_15's T2 and
        T3 read free of ribs). Empty: the levels rest on the count, the chain's steps and where the view ends."""
        return tuple(name for name, found in (("skull base", self.anchor is not None), ("sacrum", self.on_sacrum))
                     if found)

    def regions(self, *, confident_peak: float = REGION_CONFIDENT_PEAK) -> np.ndarray:
        """``(N, 3)`` cervical / thoracic / lumbar probabilities: each candidate's label scores summed per
        region and normalised (with the factorised locate head the scores are the label softmax scaled
        by the centre probability, so this is the network's region posterior), blended towards uniform
        by ``w = min(peak / confident_peak, 1)``: ``w * posterior + (1 - w) / 3``.

        Where the network sees no vertebral-body centre (a candidate found by another model, at a peak
        of 0.01), its label softmax is an opinion about nothing: normalised, it would read as confident
        region evidence. The blend keeps what the network says where it says something. The ribs' likelihoods
        (:func:`algorithm.ribs.region_likelihood`) and, where measured, the sizes' (:mod:`algorithm.sizes`)
        multiply it.

        Where a candidate bears ribs, the ribs alone tell cervical from thoracic: its network cervical and thoracic
        probabilities are both taken at the larger of the two before the ribs' likelihoods multiply them. The
        network loses count at the cervicothoracic junction of real necks (on the OpenKBP `dev` and `fit` CTs, at
        the candidates within 8 mm of an annotated C3-C7 centre and peaking at 0.3 or more, its strongest level
        lies one or two levels too high at 21 of 35, right at 5), while a rib is read from the CT itself. The doubted
        top of a run of ribs (:meth:`algorithm.ribs.RibEvidence.top_of_ribs`: C7 or T1 alike) is flattened too, so
        it keeps no cervical-or-thoracic evidence at all: that is where the network lost count.
        """
        columns = [[i for i, label in enumerate(LOCATE_CHANNELS) if region_of(label) is region]
                   for region in (Region.CERVICAL, Region.THORACIC, Region.LUMBAR)]
        sums = np.stack([self.scores[:, c].sum(axis=1) for c in columns], axis=1).astype(np.float64)
        total = sums.sum(axis=1, keepdims=True)
        posterior = np.where(total > 0, sums / np.maximum(total, 1e-12), 1.0 / 3.0)
        weight = np.clip(np.asarray(self.peak, dtype=np.float64) / confident_peak, 0.0, 1.0)[:, None]
        combined = weight * posterior + (1.0 - weight) / 3.0
        if self.ribs is None and self.sizes_ml is None:
            return combined  # the network's alone: returned as it is, unnormalised by a product
        if self.ribs is not None:
            bearing = self.ribs.bearing
            combined[bearing, :2] = combined[bearing, :2].max(axis=1, keepdims=True)
            combined = combined * region_likelihood(self.ribs, self.positions_mm[:, 2])
        if self.sizes_ml is not None:
            combined = combined * size_likelihood(self.sizes_ml)
        return combined / combined.sum(axis=1, keepdims=True)

    def with_point(self, position_mm: np.ndarray) -> Candidates:
        """These candidates and one more in front, at ``position_mm``: a vertebra the image places by other means
        than the network (C1 under the skull base, C2 under it), so it carries no heatmap evidence, no cut and
        no ribs seen."""
        point = np.asarray(position_mm, dtype=np.float64).reshape(1, 3)
        ribs = self.ribs
        if ribs is not None:
            ribs = replace(ribs, reach_mm=np.vstack([np.zeros((1, 2)), ribs.reach_mm]),
                           seen=np.vstack([np.zeros((1, 2), dtype=bool), ribs.seen]))
        sizes = None if self.sizes_ml is None else np.concatenate([[np.nan], self.sizes_ml])
        outlined = None if self.outlined is None else np.concatenate([[False], self.outlined])
        return replace(self, positions_mm=np.vstack([point, self.positions_mm]), sizes_ml=sizes, outlined=outlined,
                       scores=np.vstack([np.zeros((1, self.scores.shape[1]), dtype=self.scores.dtype), self.scores]),
                       peak=np.concatenate([[0.0], self.peak]), ribs=ribs,
                       cut=None if self.cut is None else np.vstack([np.zeros((1, 2), dtype=bool), self.cut]))

    def with_fixed(self, label: int, position_mm: np.ndarray) -> Candidates:
        """:meth:`with_point`, the new candidate fixed as ``label`` (the decoder takes it as a user's fix)."""
        added = self.with_point(position_mm)
        return replace(added, anchor=Fix(label, tuple(float(v) for v in added.positions_mm[0])))  # type: ignore[arg-type]

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 3)), np.zeros((0, len(LOCATE_CHANNELS)), dtype=np.float32), np.zeros(0))


def is_coarse(image: sitk.Image) -> bool:
    """Whether ``image``'s voxels reach further than :data:`COARSE_PIXEL_MM` across the patient
    (:attr:`spine.image.Geometry.pixel_mm`: a sagittal slab's slice thickness counts along x)."""
    return Geometry.of(image).pixel_mm > COARSE_PIXEL_MM


def find_peaks(
    heatmap: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    threshold: float = PEAK_THRESHOLD,
    min_separation_mm: float = PEAK_SEPARATION_MM,
    max_peaks: int = MAX_CANDIDATES,
) -> np.ndarray:
    """Local maxima of a ``(z, y, x)`` heatmap, strongest first, as ``(N, 3)`` int voxel indices.

    A peak is a voxel equal to the maximum of its 3x3x3 neighbourhood and at least
    ``threshold``; greedy non-maximum suppression then drops every peak closer than
    ``min_separation_mm`` (Euclidean, in mm) to a stronger one (plateaus yield one peak).
    """
    if heatmap.ndim != 3:
        raise ValueError(f"heatmap must be (z, y, x), got shape {heatmap.shape}")
    local_max = ndimage.maximum_filter(heatmap, size=3, mode="constant", cval=-np.inf)
    zyx = np.argwhere((heatmap >= local_max) & (heatmap >= threshold))
    if zyx.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    values = heatmap[tuple(zyx.T)]
    order = np.lexsort((zyx[:, 2], zyx[:, 1], zyx[:, 0], -values))  # strongest first, ties by position
    zyx = zyx[order]
    mm = zyx * np.asarray(spacing_zyx_mm, dtype=np.float64)
    kept: list[int] = []
    for i in range(len(zyx)):
        if kept and np.min(np.linalg.norm(mm[kept] - mm[i], axis=1)) < min_separation_mm:
            continue
        kept.append(i)
        if len(kept) >= max_peaks:
            break
    return zyx[kept]


def refine_peak(heatmap: np.ndarray, zyx: Sequence[int]) -> np.ndarray:
    """Sub-voxel peak position ``(3,)``: a parabola through the peak and its two neighbours per axis.

    The offset along each axis is clipped to half a voxel; at the volume's edge it is 0.
    """
    centre = np.asarray(zyx, dtype=np.int64)
    refined = centre.astype(np.float64)
    value = float(heatmap[tuple(centre)])
    for axis in range(3):
        if centre[axis] == 0 or centre[axis] == heatmap.shape[axis] - 1:
            continue
        lower, upper = centre.copy(), centre.copy()
        lower[axis] -= 1
        upper[axis] += 1
        a, b = float(heatmap[tuple(lower)]), float(heatmap[tuple(upper)])
        curvature = a - 2.0 * value + b
        if curvature < 0:
            refined[axis] += float(np.clip(0.5 * (a - b) / curvature, -0.5, 0.5))
    return refined


def channel_scores(heatmaps: np.ndarray, zyx: np.ndarray, channel_labels: Sequence[int]) -> np.ndarray:
    """``(N, 26)`` label scores: the heatmap channels at each peak, reordered to ``LOCATE_CHANNELS``.

    ``heatmaps`` is ``(C, Z, Y, X)`` with channel ``c`` the heatmap of VerSe id ``channel_labels[c]``.
    """
    if len(zyx) == 0:
        return np.zeros((0, len(LOCATE_CHANNELS)), dtype=np.float32)
    values = heatmaps[(slice(None), *np.asarray(zyx, dtype=np.int64).T)]  # (C, N)
    return _in_locate_columns(values.T, channel_labels)


def _in_locate_columns(values: np.ndarray, channel_labels: Sequence[int]) -> np.ndarray:
    """``(N, C)`` per-channel values -> ``(N, 26)`` scores in ``LOCATE_CHANNELS`` order, clipped to [0, 1]
    (a label the model lacks scores 0)."""
    scores = np.zeros((len(values), len(LOCATE_CHANNELS)), dtype=np.float32)
    column = {label: i for i, label in enumerate(LOCATE_CHANNELS)}
    for channel, label in enumerate(channel_labels):
        if label in column:
            scores[:, column[label]] = values[:, channel]
    return np.clip(scores, 0.0, 1.0)


@dataclass(frozen=True)
class LocateMaps:
    """The locate model's heatmaps ``(C, z, y, x)`` on ``grid`` (the spine box on the model grid),
    channel ``c`` the heatmap of VerSe id ``channel_labels[c]``."""

    grid: Geometry
    heatmaps: np.ndarray
    channel_labels: tuple[int, ...]

    def candidates_at(self, positions_mm: np.ndarray, *, radius_mm: float = 0.0) -> Candidates:
        """Candidates at given world points, each score the heatmap's maximum within ``radius_mm`` of the
        point (0: the nearest voxel; a point outside the grid reads the nearest border voxels).

        A radius lets a point moved a few mm off the network's peak (onto the body centre another
        model found) keep the network's evidence for that vertebra.
        """
        positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
        if len(positions) == 0:
            return Candidates.empty()
        spacing = np.asarray(self.grid.spacing_mm, dtype=np.float64)[::-1]
        shape = np.asarray(self.heatmaps.shape[1:])
        reach = np.floor(radius_mm / spacing).astype(np.int64)
        offsets = np.argwhere(np.ones(2 * reach + 1, dtype=bool)) - reach
        offsets = offsets[np.linalg.norm(offsets * spacing, axis=1) <= radius_mm + 1e-9]
        centres = np.clip(np.rint(world_to_zyx(self.grid, positions)).astype(np.int64), 0, shape - 1)
        values = np.empty((len(positions), self.heatmaps.shape[0]), dtype=np.float32)
        for i, centre in enumerate(centres):
            ball = np.unique(np.clip(centre + offsets, 0, shape - 1), axis=0)
            values[i] = self.heatmaps[(slice(None), *ball.T)].max(axis=1)
        return Candidates(positions, _in_locate_columns(values, self.channel_labels),
                          values.max(axis=1).astype(np.float64))


def locate_heatmaps(image: sitk.Image, box: SpineBox, model: StageModel, *, overlap: float = 0.5) -> LocateMaps:
    """The locate model run inside ``box`` (Gaussian-weighted sliding windows)."""
    meta = model.meta
    grid = crop_grid(model_grid(Geometry.of(image), meta.spacing_zyx_mm), box)
    return LocateMaps(grid, run_on_grid(image, grid, model, overlap=overlap), tuple(meta.channel_labels))


def peak_candidates(maps: LocateMaps, spacing_zyx_mm: Sequence[float], *, threshold: float = PEAK_THRESHOLD,
                    min_separation_mm: float = PEAK_SEPARATION_MM) -> Candidates:
    """The heatmaps' peaks (:func:`find_peaks` on the channel maximum, sub-voxel refined) as candidates."""
    channel_max = maps.heatmaps.max(axis=0)
    peaks = find_peaks(channel_max, spacing_zyx_mm, threshold=threshold, min_separation_mm=min_separation_mm)
    if len(peaks) == 0:
        log.info("locate: no heatmap peak reaches %.2f (max %.3f)", threshold, float(channel_max.max(initial=0.0)))
        return Candidates.empty()
    refined = np.array([refine_peak(channel_max, p) for p in peaks])
    candidates = Candidates(
        positions_mm=zyx_to_world(maps.grid, refined),
        scores=channel_scores(maps.heatmaps, peaks, maps.channel_labels),
        peak=channel_max[tuple(peaks.T)].astype(np.float64),
    )
    log.info("locate: %d candidates on a %s grid at %s mm", len(candidates), "x".join(map(str, maps.grid.shape_zyx)),
             "x".join(f"{s:g}" for s in spacing_zyx_mm))
    return candidates


def locate_vertebrae(
    image: sitk.Image,
    box: SpineBox,
    model: StageModel,
    *,
    overlap: float = 0.5,
    threshold: float | None = None,
    min_separation_mm: float = PEAK_SEPARATION_MM,
) -> Candidates:
    """Run the locate stage inside ``box`` and return the candidates (strongest first).

    ``threshold`` None takes the model's own ``peak_threshold`` (its metadata).
    """
    meta = model.meta
    threshold = meta.peak_threshold if threshold is None else threshold
    maps = locate_heatmaps(image, box, model, overlap=overlap)
    return peak_candidates(maps, meta.spacing_zyx_mm, threshold=threshold, min_separation_mm=min_separation_mm)

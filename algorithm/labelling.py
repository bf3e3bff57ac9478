"""Anatomical labelling: decode vertebra candidates into one valid spine, variants included.

Input: N candidate positions in world mm (LPS, +z superior) and, per candidate, 26
non-negative evidence values in [0, 1] (heatmap peaks or probabilities), columns in
``spine.labels.LOCATE_CHANNELS`` order (VerSe ids 1..25, then 28 = T13). Output: one
VerSe label per candidate, 0 for a rejected candidate (a false detection).

The model (all scores natural logs, "nats"; every term a log likelihood ratio against
"the candidate is a false detection")
------------------------------------------------------------------------------------

1. **Order along the spine's own curve.** Candidates are ordered head to foot by their
   arc length on a robust principal curve (reweighted principal axis, then a
   local-linear smooth with Cauchy weights against outliers, re-projected), so tilted,
   curved and scoliotic spines order as straight ones do. The head end is the one with
   larger z (LPS): the decoder assumes the image's cranio-caudal axis lies within 90
   degrees of +z, as in any CT. The chain runs through a subset of the candidates in
   this order; the candidates it passes over are rejected.
2. **Evidence.** Labelling candidate i as vertebra l adds
   ``w[i, l] = r[i] (log(max(s[i, l], evidence_floor)) - log(reject_evidence)) + log((1 - f) / f)``
   (``r[i]`` = 1, or ``anchor_weight`` for a recognised anchor, below) with
   ``f = false_positive_rate``: the scores read as likelihoods, "vertebra l shows
   evidence s[i, l]" against "a false detection shows ``reject_evidence`` for any
   label", plus the prior odds of a true vertebra. Rejecting adds 0. The floor bounds
   what one candidate's contrary evidence costs, so the chain can overrule a wrong
   peak when its neighbours agree, and strong evidence at one end (C1/C2, the last
   lumbar) propagates along the chain.
   **Anchors.** The network's errors are not independent: when it loses count, a whole
   run of vertebrae is off by one and, read as independent votes, outvotes the few
   vertebrae it cannot get wrong by their shape or place: C1 and C2, and the last lumbar
   vertebra sitting on the sacrum (L5, or L6 in a six-lumbar spine; L4 of a four-lumbar
   spine is left out: rare, and the label a confused L5 lands on). A candidate is a
   *recognised anchor* when its evidence is one isolated peak on an anchor label: the
   peak at least ``anchor_min_evidence`` (0.5) and every other label at most
   ``anchor_margin`` (0.2) times the peak, i.e. the network names it with no neighbour
   in contention (both fixed a priori, not tuned). Its whole ratio row is multiplied by
   ``anchor_weight`` (a reliability: the evidence of one recognised anchor counts as
   that many ordinary candidates'), so keeping it in the chain with its label can
   outweigh a shifted run of ordinary candidates. ``anchor_weight`` = 5 was chosen by
   cross-validation on simulated detections of the training spines
   (``bench/labelling.py``; 3 to 8 score alike); 1 switches the anchor model off.
3. **Steps.** Consecutive chain members ``(j, a) -> (i, b)`` are joined by a label path
   of ``k`` anatomical steps from ``a`` to ``b`` (``spine.labels.allowed_next``: +1,
   T11->L1, T12->T13->L1, L5->L6), ``k - 1 <= max_skips`` of them missed vertebrae. The
   path adds
   ``sum log P(step) + (k - 1) log(miss_probability) + log(1 - miss_probability)``
   (``P(step)``: the variants' frequencies in the prior's spines), the log density of
   the distance ``d = |x_i - x_j|`` in log space,
   ``log N(log d; log(c_k * sum median_mm) + log(scale), tau**2)``, with
   ``tau**2 = sum(median_mm**2 * log_sd**2) / (sum median_mm)**2 + scale_log_sd**2
   + 2 position_sd_mm**2 / mean_mm**2`` (``c_k`` the chord ratio of k steps; the spread
   of spine sizes, unless a scale grid models it; the detector's position noise), and
   the step's direction against the curve's, ``-theta**2 / (2 s**2) - log(s**2)`` (a 2-D
   Gaussian angular deviation against a direction uniform over the hemisphere, ``s**2 =
   direction_sd_rad**2 + 0.1**2 + 2 position_sd_mm**2 / d**2``). Step densities are
   truncated at ``max_z`` standard deviations.
4. **Spine size** (optional, ``scale_steps > 1``): one latent size factor per case on a
   grid over +-2.5 prior standard deviations, ``log scale ~ N(0, scale_log_sd**2)``.
5. **Lost count** (``offset_probability`` > 0): one latent per-case offset ``o`` in
   {-1, 0, +1}: the network may have lost count by one for the whole case, so that every
   ordinary (non-anchor) candidate's evidence sits one label along the anatomical order
   from its true label. Under offset ``o`` an ordinary candidate's evidence for label
   ``l`` is read from the label(s) ``o`` places along: for ``o = +1`` the largest score
   among ``allowed_next(l)`` within one place of ``anatomical_rank`` (C1..T12, T13, L1..L6:
   T12 reads max(T13, L1), T13 reads L1, L5 reads L6; the T11->L1 jump of an 11-thoracic
   spine is two places and not read), for ``o = -1`` the largest among the labels whose
   ``+1`` set holds ``l`` (L1 reads max(T12, T13)); a label with no such neighbour (C1 at
   -1, L6 at +1) reads no evidence (the floor). Recognised anchors (item 2, whatever
   ``anchor_weight``) are the vertebrae the network cannot miscount: their evidence is read
   unshifted. The offset's prior is ``P(o = -1) = P(o = +1) = offset_probability``
   (0.05, a documented constant matched to a network that loses count in about one case
   in ten; 0 switches the component off); it enters the score as the log odds
   ``log(P(o) / P(0))`` (0 for ``o = 0``, about -2.9 nats otherwise), so that ``o != 0``
   must be bought by evidence. The offset is a grid dimension like the spine size: every
   pass runs over (offset, scale) hypotheses at once, about three times the work.

The decoder returns the exact maximiser of the total score over chains (and offsets, scales):
Viterbi over (candidate, label) states on the ordered candidates, every skip, variant
and rejection included. ``confidence`` is the posterior marginal of the returned label
(or of the rejection) under the same model read as a probability: forward-backward
sum-product over all chains (mixed over offsets and the scale grid). It is near 1 where every
competing labelling is far worse and about 0.5 where two explain the evidence equally.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from algorithm.labelling_prior import CHAIN_LABELS, LabellingPrior, load_default
from spine.labels import EVALUATED, LOCATE_CHANNELS, allowed_next, anatomical_rank

__all__ = ["ChainDecoder", "Labelling", "decode", "label_candidates", "order_along_spine"]

log = logging.getLogger(__name__)

_N_LABELS = len(CHAIN_LABELS)
_RANK_TO_COLUMN = np.array([LOCATE_CHANNELS.index(label) for label in CHAIN_LABELS])
_CHAIN_LABEL_ARRAY = np.array(CHAIN_LABELS, dtype=np.int64)
_SCORE_TOLERANCE = 0.1  # scores outside [-0.1, 1.1] are not evidence (logits?): refused
_MIN_DISTANCE_MM = 1e-3
_TANGENT_SD_RAD = 0.1  # error of the fitted curve's direction at a candidate
_OFFSETS = (-1, 0, 1)


def _offset_neighbours() -> dict[int, np.ndarray]:
    """(L, L) boolean masks in chain-rank order: ``mask[o][r, m]`` when, under offset o, label r reads
    the evidence of label m (module docstring, item 5)."""
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    after = np.zeros((_N_LABELS, _N_LABELS), dtype=bool)
    for label in CHAIN_LABELS:
        for nxt in allowed_next(label):
            if nxt in rank and anatomical_rank(nxt) - anatomical_rank(label) <= 1:
                after[rank[label], rank[nxt]] = True
    return {-1: after.T.copy(), 0: np.eye(_N_LABELS, dtype=bool), 1: after}


_OFFSET_NEIGHBOURS = _offset_neighbours()


@dataclass(frozen=True)
class Labelling:
    """Result of :func:`label_candidates`; arrays are read-only, indexed like the input candidates.

    ``labels``: (N,) VerSe ids, 0 = rejected. ``confidence``: (N,) posterior probability in
    [0, 1] of the returned label (of the rejection for label 0). ``order``: (N,) candidate
    indices from head to foot along the fitted spine curve. ``score``: the model's log
    score (nats) of the returned labelling, 0 for rejecting every candidate (see
    :meth:`ChainDecoder.score`). ``scale``: the spine size factor chosen (1 = the prior's
    median spacing; always 1 without a scale grid). ``offset``: the lost-count offset chosen
    (-1, 0 or +1, module docstring item 5; always 0 with ``offset_probability`` 0).
    """

    labels: np.ndarray
    confidence: np.ndarray
    order: np.ndarray
    score: float
    scale: float
    offset: int = 0

    def __post_init__(self) -> None:
        for name in ("labels", "confidence", "order"):
            getattr(self, name).flags.writeable = False

    @property
    def chain(self) -> np.ndarray:
        """Indices of the accepted candidates, head to foot."""
        return self.order[self.labels[self.order] > 0]


def _validate(positions_mm: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shapes (N, 3) and (N, 26), finite values, scores in [0, 1]; ValueError with the reason."""
    positions = np.asarray(positions_mm, dtype=float)
    evidence = np.asarray(scores, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions_mm must have shape (N, 3), got {positions.shape}")
    if evidence.ndim != 2 or evidence.shape[1] != len(LOCATE_CHANNELS):
        raise ValueError(f"scores must have shape (N, {len(LOCATE_CHANNELS)}) in LOCATE_CHANNELS order, "
                         f"got {evidence.shape}")
    if positions.shape[0] != evidence.shape[0]:
        raise ValueError(f"{positions.shape[0]} positions but {evidence.shape[0]} score rows")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions_mm holds nan or inf")
    if not np.all(np.isfinite(evidence)):
        raise ValueError("scores hold nan or inf")
    if evidence.size and (evidence.min() < -_SCORE_TOLERANCE or evidence.max() > 1 + _SCORE_TOLERANCE):
        raise ValueError(f"scores must be evidence in [0, 1] (heatmap peaks or probabilities, not logits); "
                         f"got values in [{evidence.min():.3g}, {evidence.max():.3g}]")
    return positions, np.clip(evidence, 0.0, 1.0)


# --------------------------------------------------------------------------- ordering


def _principal_axis(points: np.ndarray, *, iterations: int = 2,
                    scale_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Centre and unit direction of a line through ``points`` (M, 3), reweighted against outliers.

    Weights ``1 / max(r, scale_mm)`` with r the distance to the current line (an L1-like
    fit). The direction points towards the feet (-z in LPS).
    """
    weights = np.ones(len(points))
    axis = np.array([0.0, 0.0, -1.0])
    centre = points.mean(axis=0)
    for _ in range(iterations):
        centre = weights @ points / weights.sum()
        offsets = points - centre
        axis = np.linalg.eigh((offsets.T * weights) @ offsets)[1][:, -1]
        along = offsets @ axis
        r = np.sqrt(np.maximum((offsets * offsets).sum(axis=1) - along**2, 0.0))
        weights = 1.0 / np.maximum(r, scale_mm)
    return centre, (-axis if axis[2] > 0 else axis)


def _local_curve(points: np.ndarray, t: np.ndarray, weights: np.ndarray, *, bandwidth_mm: float,
                 samples: int = 64) -> np.ndarray:
    """Local-linear smooth of ``points`` against ``t``: (samples, 3) curve points on a grid over t.

    At each grid value g: the kernel-weighted (Gaussian in t, ``bandwidth_mm``, times
    ``weights``) least-squares line x(t) = mean + slope (t - mean_t), evaluated at g.
    """
    margin = 0.05 * np.ptp(t)
    grid = np.linspace(t.min() - margin, t.max() + margin, samples)
    kernel = weights[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / bandwidth_mm) ** 2) + 1e-12
    total = kernel.sum(axis=1)
    mean_t = kernel @ t / total
    mean_x = kernel @ points / total[:, None]
    centred_t = t[None, :] - mean_t[:, None]
    variance = (kernel * centred_t**2).sum(axis=1)
    slope = ((kernel * centred_t) @ points - (kernel * centred_t).sum(axis=1)[:, None] * mean_x) \
        / (variance + total)[:, None]
    return mean_x + slope * (grid - mean_t)[:, None]


def _project(points: np.ndarray, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arc length (mm) of each point's projection on the polyline ``curve``, its distance to it, and
    the unit tangent there."""
    segment = np.diff(curve, axis=0)
    length = np.maximum(np.linalg.norm(segment, axis=1), 1e-9)
    arc = np.concatenate([[0.0], np.cumsum(length)])
    tangent = np.vstack([segment / length[:, None], segment[-1:] / length[-1]])
    nearest = np.argmin((curve * curve).sum(axis=1)[None, :] - 2.0 * points @ curve.T, axis=1)
    offset = points - curve[nearest]
    along = (offset * tangent[nearest]).sum(axis=1)
    return (arc[nearest] + along, np.linalg.norm(offset - along[:, None] * tangent[nearest], axis=1),
            tangent[nearest])


def _spine_curve(positions: np.ndarray, *, bandwidth_mm: float = 40.0, robust_mm: float = 10.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Arc parameter t (N,) in mm, increasing head to foot, and unit tangents (N, 3) of the spine curve.

    Robust principal axis (oriented towards -z, the feet in LPS) gives a first t; for
    4 or more candidates, two rounds of a local-linear principal curve (Gaussian kernel
    of ``bandwidth_mm`` along t; Cauchy weights ``1 / (1 + (r / robust_mm)**2)`` on the
    distance r to the curve, against outliers) and re-projection refine t and give each
    candidate the curve's tangent at its projection. Fewer candidates share the axis.
    """
    n = len(positions)
    if n == 0:
        return np.zeros(0), np.zeros((0, 3))
    if n == 1:
        return np.zeros(1), np.array([[0.0, 0.0, -1.0]])
    centre, axis = _principal_axis(positions)
    t = (positions - centre) @ axis
    tangents = np.broadcast_to(axis, (n, 3)).copy()
    if n >= 4 and np.ptp(t) > 0:
        weights = np.ones(n)
        for _ in range(2):
            curve = _local_curve(positions, t, weights, bandwidth_mm=bandwidth_mm)
            t, distance, tangents = _project(positions, curve)
            weights = 1.0 / (1.0 + (distance / robust_mm) ** 2)
    return t, tangents


def order_along_spine(positions_mm: np.ndarray) -> np.ndarray:
    """Candidate indices ordered head to foot along the spine's own curve (see ``_spine_curve``).

    Curved, tilted and scoliotic spines order as straight ones do; ties keep input order.
    """
    positions = np.asarray(positions_mm, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions_mm must have shape (N, 3), got {positions.shape}")
    return np.argsort(_spine_curve(positions)[0], kind="stable")


# --------------------------------------------------------------------------- the chain model


@dataclass(frozen=True)
class _Edges:
    """Label paths joining two consecutive chain members; arrays of length E, labels as chain ranks.

    ``log_mean``: log of the path's mean length (mm); ``inv_tau``: 1 / its log-length sd;
    ``log_norm``: ``log_prior - log(tau sqrt(2 pi))``, the path's score at its mean length.
    """

    source: np.ndarray
    target: np.ndarray
    log_mean: np.ndarray
    inv_tau: np.ndarray
    log_norm: np.ndarray


def _label_paths(max_steps: int) -> list[tuple[int, ...]]:
    """All label paths of 1..max_steps allowed steps between evaluated vertebrae."""
    paths: list[tuple[int, ...]] = []
    frontier = [(label,) for label in CHAIN_LABELS]
    for _ in range(max_steps):
        frontier = [(*path, nxt) for path in frontier for nxt in allowed_next(path[-1]) if nxt in EVALUATED]
        paths.extend(frontier)
    return paths


def _build_edges(prior: LabellingPrior, *, max_skips: int, miss_probability: float,
                 position_sd_mm: float, size_var: float) -> _Edges:
    """Turn the prior into one edge per label path (see the module docstring, item 3)."""
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    rows = []
    for path in _label_paths(max_skips + 1):
        n_steps = len(path) - 1
        steps = [prior.step(a, b) for a, b in itertools.pairwise(path)]
        medians = np.array([s.median_mm for s in steps])
        sds = np.array([s.log_sd for s in steps])
        chord = 1.0 if n_steps == 1 else prior.chord_ratio[min(n_steps, 3) - 2]
        mean_mm = chord * medians.sum()
        tau2 = (float((medians**2 * sds**2).sum() / medians.sum() ** 2) + size_var
                + 2 * position_sd_mm**2 / mean_mm**2)
        log_prior = (sum(math.log(prior.branch_probability(a, b)) for a, b in itertools.pairwise(path))
                     + (n_steps - 1) * math.log(miss_probability) + math.log1p(-miss_probability))
        rows.append((rank[path[0]], rank[path[-1]], log_prior, math.log(mean_mm), math.sqrt(tau2)))
    source, target, log_prior, log_mean, tau = (np.array(c) for c in zip(*rows, strict=True))
    return _Edges(source.astype(np.intp), target.astype(np.intp), log_mean, 1.0 / tau,
                  log_prior - np.log(tau * math.sqrt(2 * math.pi)))


@lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (j, i), j < i, of n ordered candidates (cached, read-only: the same n recurs)."""
    j, i = np.triu_indices(n, 1)
    j.flags.writeable = i.flags.writeable = False
    return j, i


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``; -inf where every term is -inf."""
    peak = np.max(x, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - safe), axis=axis, keepdims=True)) + safe
    return np.squeeze(out, axis=axis)


_IMPOSSIBLE = -1.0e4
"""Log score of an impossible step: finite so the passes need no inf guards, yet far below any
chain's total (bounded by a few hundred nats), so it never wins and its exp is exactly 0."""


@dataclass(frozen=True)
class _Sweep:
    """The feasible steps sorted for one pass, grouped by the candidate being updated.

    Forward pass: steps sorted by (i, target label), ``other`` = flat state index
    ``j * L + source`` of the predecessor. Backward pass: sorted by (j, source label),
    ``other`` = ``i * L + target``. For candidate k, its steps are
    ``bounds[k]:bounds[k + 1]``; its label segments are ``segment_bounds[k]:segment_bounds[k + 1]``
    of ``starts`` (relative to the candidate's first step) and ``labels``.
    """

    order: np.ndarray
    other: np.ndarray
    bounds: list[int]
    starts: np.ndarray
    labels: np.ndarray
    segment_bounds: list[int]


def _sweep(node: np.ndarray, label: np.ndarray, other: np.ndarray, n: int) -> _Sweep:
    """Sort steps by (node, label) and find the segments of equal (node, label)."""
    key = node * _N_LABELS + label
    small = n * _N_LABELS <= np.iinfo(np.int16).max  # 16-bit keys sort by radix, in linear time
    order = np.argsort(key.astype(np.int16) if small else key, kind="stable")
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=np.intp)
    bounds = np.searchsorted(key, np.arange(n + 1) * _N_LABELS)
    segment_node = key[first] // _N_LABELS
    segment_bounds = np.searchsorted(segment_node, np.arange(n + 1))
    starts = first - bounds[segment_node]
    return _Sweep(order, other[order], bounds.tolist(), starts, key[first] % _N_LABELS, segment_bounds.tolist())


@dataclass(frozen=True)
class _Tables:
    """Per-case DP tables on the ordered candidates (H = offsets x scales hypotheses, N candidates,
    L labels, F steps).

    A step is a triple (j, i, edge), j < i, whose distance lies within ``max_z`` standard
    deviations of the edge's mean at some scale. ``emission`` (H, N, L) is in chain-rank
    order; ``step`` and ``forward_step`` / ``backward_step`` (H, F) hold the steps' log scores in each
    sweep's order (``_IMPOSSIBLE`` at scales outside ``max_z``).
    """

    emission: np.ndarray
    j: np.ndarray
    i: np.ndarray
    source: np.ndarray
    target: np.ndarray
    step: np.ndarray
    forward: _Sweep
    forward_step: np.ndarray
    backward: _Sweep
    backward_step: np.ndarray


@dataclass(frozen=True)
class ChainDecoder:
    """Exact chain decoder; see the module docstring for the model and its parameters.

    ``evidence_floor``: smallest evidence a label is given (bounds contrary evidence).
    ``reject_evidence``: evidence of a false detection (the reference of every label's
    log ratio). ``false_positive_rate``: prior probability that a candidate is a false
    detection. ``miss_probability``: chance that the detector missed a vertebra.
    ``max_skips``: most missed vertebrae between two chain members. ``position_sd_mm``:
    the detector's position error per axis. ``scale_steps``: size of the spine-size grid.
    ``max_z``: step densities are truncated at this many standard deviations (a step
    outside is impossible; this bounds the work, and at 5 sd costs 12.5 nats anyway).
    ``anchor_weight``, ``anchor_labels``, ``anchor_margin``, ``anchor_min_evidence``: the
    anchor model (module docstring, item 2): the reliability of a recognised anchor's
    evidence, the labels that can be anchors (VerSe ids) and what makes one recognised.
    ``offset_probability``: prior probability of each lost-count offset, -1 and +1 (module
    docstring, item 5; 0 switches the component off).

    The passes run over hypotheses h = (offset, scale), ``h = offset_index * S + scale_index``.
    """

    prior: LabellingPrior = field(default_factory=load_default)
    evidence_floor: float = 0.02
    reject_evidence: float = 0.1
    false_positive_rate: float = 0.1
    miss_probability: float = 0.05
    max_skips: int = 2
    position_sd_mm: float = 2.5
    scale_steps: int = 1
    max_z: float = 5.0
    anchor_weight: float = 5.0
    anchor_labels: tuple[int, ...] = (1, 2, 24, 25)
    anchor_margin: float = 0.2
    anchor_min_evidence: float = 0.5
    offset_probability: float = 0.05
    _edges: _Edges = field(init=False, repr=False, compare=False)
    _log_scales: np.ndarray = field(init=False, repr=False, compare=False)
    _log_scale_prior: np.ndarray = field(init=False, repr=False, compare=False)
    _log_distance_range: tuple[float, float] = field(init=False, repr=False, compare=False)
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _log_prior: np.ndarray = field(init=False, repr=False, compare=False)

    @property
    def _inclusion_log_odds(self) -> float:
        """``log((1 - false_positive_rate) / false_positive_rate)``: prior odds of a true vertebra."""
        return math.log1p(-self.false_positive_rate) - math.log(self.false_positive_rate)

    def __post_init__(self) -> None:
        if not 0 < self.evidence_floor < 1 or not 0 < self.reject_evidence <= 1:
            raise ValueError("evidence_floor must be in (0, 1) and reject_evidence in (0, 1]")
        if not 0 < self.false_positive_rate < 1:
            raise ValueError(f"false_positive_rate must be in (0, 1), got {self.false_positive_rate}")
        if not 0 < self.miss_probability < 1:
            raise ValueError(f"miss_probability must be in (0, 1), got {self.miss_probability}")
        if self.anchor_weight <= 0 or not set(self.anchor_labels) <= set(CHAIN_LABELS):
            raise ValueError("anchor_weight must be > 0 and anchor_labels evaluated VerSe ids")
        if not 0 <= self.anchor_margin < 1 or not 0 <= self.anchor_min_evidence <= 1:
            raise ValueError("anchor_margin must be in [0, 1) and anchor_min_evidence in [0, 1]")
        if not 0 <= self.offset_probability < 0.5:
            raise ValueError(f"offset_probability must be in [0, 0.5), got {self.offset_probability}")
        if not 0 <= self.max_skips <= 4 or self.scale_steps < 1 or self.position_sd_mm < 0 or self.max_z <= 0:
            raise ValueError("need max_skips in 0..4, scale_steps >= 1, position_sd_mm >= 0 and max_z > 0")
        # One scale: the spread of spine sizes joins every step's variance instead.
        size_var = self.prior.scale_log_sd**2 if self.scale_steps == 1 else 0.0
        edges = _build_edges(self.prior, max_skips=self.max_skips, miss_probability=self.miss_probability,
                             position_sd_mm=self.position_sd_mm, size_var=size_var)
        sd = self.prior.scale_log_sd
        if self.scale_steps == 1 or sd == 0:
            log_scales, log_prior = np.zeros(1), np.zeros(1)
        else:
            log_scales = np.linspace(-2.5 * sd, 2.5 * sd, self.scale_steps)
            log_prior = -0.5 * (log_scales / sd) ** 2
        reach = self.max_z / edges.inv_tau
        log_distance_range = (float((edges.log_mean + log_scales[0] - reach).min()),
                              float((edges.log_mean + log_scales[-1] + reach).max()))
        object.__setattr__(self, "_edges", edges)
        object.__setattr__(self, "_log_scales", log_scales)
        object.__setattr__(self, "_log_distance_range", log_distance_range)
        log_scale_prior = log_prior - _logsumexp(log_prior, axis=0)
        object.__setattr__(self, "_log_scale_prior", log_scale_prior)
        p = self.offset_probability
        offsets = _OFFSETS if p > 0 else (0,)
        log_odds = np.array([0.0 if o == 0 else math.log(p) - math.log1p(-2 * p) for o in offsets])
        object.__setattr__(self, "_offsets", offsets)
        # Log prior of each hypothesis (offset, scale): the offset's log odds against o = 0 plus the scale's.
        object.__setattr__(self, "_log_prior", (log_odds[:, None] + log_scale_prior[None, :]).ravel())

    # ----------------------------------------------------------------------- tables

    def _anchors(self, evidence: np.ndarray) -> np.ndarray:
        """(N,) bool: the recognised anchors (module docstring, item 2), whatever ``anchor_weight``.

        A candidate is a recognised anchor when its highest score lies on one of
        ``anchor_labels``, is at least ``anchor_min_evidence``, and every other label scores
        at most ``anchor_margin`` times as much.
        """
        if not len(evidence):
            return np.zeros(0, dtype=bool)
        ranked = np.sort(evidence, axis=1)
        peak, runner_up = ranked[:, -1], ranked[:, -2]
        top = np.asarray(LOCATE_CHANNELS)[np.argmax(evidence, axis=1)]
        return (np.isin(top, self.anchor_labels) & (peak >= self.anchor_min_evidence)
                & (runner_up <= self.anchor_margin * peak))

    def _reliability(self, evidence: np.ndarray) -> np.ndarray:
        """(N,) weight of each candidate's evidence: ``anchor_weight`` for a recognised anchor, else 1."""
        return np.where(self._anchors(evidence), self.anchor_weight, 1.0)

    def _emissions(self, evidence: np.ndarray) -> np.ndarray:
        """Evidence ratios (O, N, L) in chain-rank order under each offset of ``_offsets`` (module
        docstring, item 5): ordinary candidates read the shifted evidence, recognised anchors their own."""
        chain = evidence[:, _RANK_TO_COLUMN]  # (N, L)
        anchors = self._anchors(evidence)
        read = []
        for o in self._offsets:
            if o == 0:
                read.append(chain)
                continue
            mask = _OFFSET_NEIGHBOURS[o]
            shifted = np.where(mask[None, :, :], chain[:, None, :], 0.0).max(axis=2)
            read.append(np.where(anchors[:, None], chain, shifted))
        return self._emission(np.stack(read), self._reliability(evidence)[None, :, None])

    def _emission(self, evidence: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Evidence ratios ``w`` (module docstring, item 2) of scores ``evidence``, each candidate's
        scaled by its reliability ``weight`` (broadcast against evidence's first axis)."""
        ratio = np.log(np.maximum(evidence, self.evidence_floor)) - math.log(self.reject_evidence)
        if weight.ndim == 1:
            weight = weight.reshape(-1, *([1] * (ratio.ndim - 1)))
        return weight * ratio + self._inclusion_log_odds

    def _tables(self, positions: np.ndarray, tangents: np.ndarray, evidence: np.ndarray) -> _Tables:
        """Emission ratios (H, N, L) in chain-rank order per hypothesis (offset, scale) and the feasible
        steps of the ordered candidates, their scores (H, F) repeated over the offsets.

        ``tangents`` (N, 3): unit direction of the spine curve at each candidate, head to foot.
        """
        n = len(positions)
        n_offsets, n_scales = len(self._offsets), len(self._log_scales)
        emission = np.repeat(self._emissions(evidence), n_scales, axis=0)  # (O * S, N, L)
        e = self._edges
        pair_j, pair_i = _pairs(n)
        displacement = positions[pair_i] - positions[pair_j]
        distance = np.maximum(np.linalg.norm(displacement, axis=1), _MIN_DISTANCE_MM)
        log_distance = np.log(distance)
        near = (log_distance >= self._log_distance_range[0]) & (log_distance <= self._log_distance_range[1])
        pair_j, pair_i, log_distance = pair_j[near], pair_i[near], log_distance[near]
        turn = self._turn_penalty(displacement[near], distance[near], tangents[pair_j] + tangents[pair_i])
        z = (log_distance[:, None] - e.log_mean[None, :]) * e.inv_tau  # (P, E)
        shift = self._log_scales[:, None] * e.inv_tau[None, :]  # (S, E), increasing in s
        pair, edge = np.nonzero((z >= shift[0] - self.max_z) & (z <= shift[-1] + self.max_z))
        step = self._step_score(z[pair, edge][None, :] - shift[:, edge], edge, turn[pair])  # (S, F)
        if n_offsets > 1:
            step = np.tile(step, (n_offsets, 1))  # (O * S, F): the steps do not depend on the offset
        j, i = pair_j[pair], pair_i[pair]
        source, target = e.source[edge], e.target[edge]
        forward = _sweep(i, target, j * _N_LABELS + source, n)
        backward = _sweep(j, source, i * _N_LABELS + target, n)
        return _Tables(emission, j, i, source, target, step,
                       forward, step[:, forward.order], backward, step[:, backward.order])

    def _step_score(self, z: np.ndarray, edge: np.ndarray, turn: np.ndarray) -> np.ndarray:
        """Log score of steps along ``edge`` whose log distance lies ``z`` edge sds from the mean at a scale.

        ``log_prior + log N(z) / tau + turn`` (module docstring, item 3), ``_IMPOSSIBLE``
        beyond ``max_z``.
        """
        return np.where(np.abs(z) <= self.max_z, self._edges.log_norm[edge] + turn - 0.5 * z**2, _IMPOSSIBLE)

    def _turn_penalty(self, displacement: np.ndarray, distance: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """``-theta**2 / (2 s**2)`` per pair: theta the angle between the step and the spine's direction.

        ``s**2 = direction_sd_rad**2 + TANGENT_SD_RAD**2 + 2 position_sd_mm**2 / d**2`` (anatomy,
        the fitted curve's own error, the detector's position noise across the step).
        """
        norm = np.maximum(np.linalg.norm(direction, axis=1), 1e-12)
        cosine = np.einsum("pk,pk->p", displacement, direction) / (norm * distance)
        theta = np.arccos(np.clip(cosine, -1.0, 1.0))
        spread = (self.prior.direction_sd_rad**2 + _TANGENT_SD_RAD**2
                  + 2 * self.position_sd_mm**2 / distance**2)
        return -0.5 * theta**2 / spread - np.log(spread)

    # ----------------------------------------------------------------------- passes

    def _forward(self, t: _Tables, *, posterior: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Viterbi scores V and sum-product alpha A, both (H, N, L): best / all chains ending at (i, l).

        ``V[i, b] = w[i, b] + max(0, max over steps (j, a) -> (i, b) of V[j, a] + step)`` and
        ``A[i, b] = w[i, b] + log(1 + sum over the same steps of exp(A[j, a] + step))``; the 0
        / the 1 is the chain starting at (i, b). Both are computed in one stacked array;
        A only with ``posterior``.
        """
        n_scales, n = t.emission.shape[:2]  # n_scales: the hypotheses (offset, scale)
        rows = 2 * n_scales if posterior else n_scales
        state = np.concatenate([t.emission, t.emission]) if posterior else t.emission.copy()  # [V; A]
        flat = state.reshape(rows, n * _N_LABELS)
        sweep = t.forward
        step = np.concatenate([t.forward_step, t.forward_step]) if posterior else t.forward_step
        for i in range(1, n):
            lo, hi = sweep.bounds[i], sweep.bounds[i + 1]
            if lo == hi:
                continue
            segments = slice(sweep.segment_bounds[i], sweep.segment_bounds[i + 1])
            starts, labels = sweep.starts[segments], sweep.labels[segments]
            via = flat.take(sweep.other[lo:hi], axis=1) + step[:, lo:hi]  # (rows, F_i)
            best = np.maximum(np.maximum.reduceat(via[:n_scales], starts, axis=1), 0.0)
            if not posterior:
                state[:, i, labels] += best
                continue
            peak = via[n_scales:].max(axis=1, keepdims=True)
            total = np.log(np.add.reduceat(np.exp(via[n_scales:] - peak), starts, axis=1)) + peak
            state[:, i, labels] += np.concatenate([best, np.logaddexp(total, 0.0)])
        return state[:n_scales], (state[n_scales:] if posterior else None)

    def _backward(self, t: _Tables) -> np.ndarray:
        """Sum-product beta (H, N, L): all continuations after (j, a), the chain ending there included.

        ``beta[j, a] = log(1 + sum over steps (j, a) -> (i, b) of exp(step + w[i, b] + beta[i, b]))``.
        """
        n_scales, n = t.emission.shape[:2]  # n_scales: the hypotheses (offset, scale)
        beta = np.zeros((n_scales, n, _N_LABELS))
        onward_flat = (t.emission + beta).reshape(n_scales, n * _N_LABELS)  # w + beta, updated as we go
        sweep, step = t.backward, t.backward_step
        for j in range(n - 2, -1, -1):
            lo, hi = sweep.bounds[j], sweep.bounds[j + 1]
            if lo == hi:
                continue
            segments = slice(sweep.segment_bounds[j], sweep.segment_bounds[j + 1])
            starts, labels = sweep.starts[segments], sweep.labels[segments]
            onward = onward_flat.take(sweep.other[lo:hi], axis=1) + step[:, lo:hi]
            peak = onward.max(axis=1, keepdims=True)
            total = np.log(np.add.reduceat(np.exp(onward - peak), starts, axis=1)) + peak
            beta[:, j, labels] = np.logaddexp(total, 0.0)
            onward_flat[:, j * _N_LABELS + labels] += beta[:, j, labels]
        return beta

    def _trace(self, t: _Tables, best: np.ndarray, s: int, i: int, label: int) -> list[tuple[int, int]]:
        """Back-track the Viterbi chain ending at (i, label) at hypothesis s; (candidate, rank) head first."""
        sweep = t.forward
        chain = [(i, label)]
        while True:
            lo, hi = sweep.segment_bounds[i], sweep.segment_bounds[i + 1]
            k = lo + int(np.searchsorted(sweep.labels[lo:hi], label))
            if k == hi or sweep.labels[k] != label:
                break  # no step into (i, label): the chain starts here
            first = sweep.bounds[i] + int(sweep.starts[k])
            last = sweep.bounds[i] + (int(sweep.starts[k + 1]) if k + 1 < hi else sweep.bounds[i + 1] - sweep.bounds[i])
            steps = sweep.order[first:last]
            via = best[s, t.j[steps], t.source[steps]] + t.step[s, steps]
            if via.max() <= 0.0:  # the forward pass preferred starting the chain here
                break
            step = steps[int(np.argmax(via))]
            i, label = int(t.j[step]), int(t.source[step])
            chain.append((i, label))
        return chain[::-1]

    # ----------------------------------------------------------------------- API

    def label(self, positions_mm: np.ndarray, scores: np.ndarray) -> Labelling:
        """Label N candidates, with posterior confidences: see :func:`label_candidates`."""
        return self._decode(positions_mm, scores, posterior=True)

    def decode(self, positions_mm: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(N,) VerSe labels, 0 for rejected candidates: the Viterbi labelling alone (no posterior)."""
        return self._decode(positions_mm, scores, posterior=False).labels

    def _decode(self, positions_mm: np.ndarray, scores: np.ndarray, *, posterior: bool) -> Labelling:
        """The MAP labelling and, with ``posterior``, its marginal confidences (else nan)."""
        positions, evidence = _validate(positions_mm, scores)
        n = len(positions)
        if n == 0:
            empty = np.zeros(0)
            return Labelling(np.zeros(0, dtype=np.int64), empty, np.zeros(0, dtype=np.intp), 0.0, 1.0)
        t, tangents = _spine_curve(positions)
        order = np.argsort(t, kind="stable")
        tables = self._tables(positions[order], tangents[order], evidence[order])
        with np.errstate(divide="ignore"):  # log(0) of underflowed sums is -inf, as it should be
            best, alpha = self._forward(tables, posterior=posterior)
            beta = self._backward(tables) if posterior else None
        n_scales = len(self._log_prior)  # hypotheses (offset, scale)

        # MAP over (offset, scale, chain): the empty chain scores 0 under every hypothesis.
        total = np.maximum(best.reshape(n_scales, -1).max(axis=1), 0.0) + self._log_prior
        s = int(np.argmax(total))
        marginal = None
        if alpha is not None and beta is not None:
            # Posterior marginals of (candidate, label), mixed over offsets and the scale grid.
            log_z = np.logaddexp(_logsumexp(alpha.reshape(n_scales, -1), axis=1), 0.0)  # (H,)
            weight = self._log_prior + log_z
            weight = np.exp(weight - _logsumexp(weight, axis=0))
            marginal = np.einsum("s,sil->il", weight, np.exp(alpha + beta - log_z[:, None, None]))
        ranks_sorted = np.full(n, -1)
        if best[s].max() > 0.0:
            i, label = np.unravel_index(np.argmax(best[s]), best[s].shape)
            for member, rank in self._trace(tables, best, s, int(i), int(label)):
                ranks_sorted[member] = rank
        accepted = ranks_sorted >= 0
        labels = np.zeros(n, dtype=np.int64)
        labels[order] = np.where(accepted, _CHAIN_LABEL_ARRAY[np.maximum(ranks_sorted, 0)], 0)

        confidence = np.full(n, np.nan)
        if marginal is not None:
            confidence[order] = np.clip(np.where(
                accepted, marginal[np.arange(n), np.maximum(ranks_sorted, 0)], 1.0 - marginal.sum(axis=1)), 0.0, 1.0)
        log.debug("labelled %d of %d candidates, score %.1f nats, %d feasible steps",
                  int(accepted.sum()), n, float(total[s]), tables.step.shape[1])
        offset, scale = divmod(s, len(self._log_scales))
        return Labelling(labels, confidence, order.astype(np.intp), float(total[s]),
                         float(np.exp(self._log_scales[scale])), int(self._offsets[offset]))

    def score(self, positions_mm: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
              paths: str = "max") -> float:
        """The model's log score (nats) of a given labelling: what :meth:`label` maximises.

        ``labels`` (N,): VerSe ids or 0 (rejected). Sum of the accepted candidates' evidence
        ratios and of the steps between consecutive ones along the spine curve; the label
        path of a step (which vertebrae were missed, which variant) is maximised over
        (``paths="max"``, the Viterbi objective) or summed over (``"sum"``, the weight the
        posterior uses). The hypotheses (lost-count offset, scale), each with its log prior
        (module docstring, items 4 and 5), are maximised over with ``"max"`` and summed over
        with ``"sum"``, as the posterior mixes them. -inf for a labelling the model does not
        allow (repeated or out-of-order labels, impossible steps); 0 with ``"max"`` when every
        candidate is rejected (one scale).
        """
        positions, evidence = _validate(positions_mm, scores)
        labels = np.asarray(labels)
        if labels.shape != (len(positions),):
            raise ValueError(f"labels must have shape ({len(positions)},), got {labels.shape}")
        if paths not in ("max", "sum"):
            raise ValueError(f"paths must be 'max' or 'sum', got {paths!r}")
        rank_of = {label: k for k, label in enumerate(CHAIN_LABELS)}
        if any(int(v) != 0 and int(v) not in rank_of for v in labels):
            raise ValueError("labels must be evaluated VerSe ids (1..25, 28) or 0")
        n_offsets, n_scales = len(self._offsets), len(self._log_scales)
        if not labels.any():
            return float(self._log_prior.max() if paths == "max" else _logsumexp(self._log_prior, axis=0))
        t, tangents = _spine_curve(positions)
        members = [k for k in np.argsort(t, kind="stable") if labels[k] != 0]
        ranks = [rank_of[int(labels[k])] for k in members]
        emission = self._emissions(evidence)[:, members, ranks].sum(axis=1)  # (O,)
        total = np.zeros(n_scales)
        e = self._edges
        for (j, a), (i, b) in zip(zip(members[:-1], ranks[:-1], strict=True),
                                  zip(members[1:], ranks[1:], strict=True), strict=True):
            edge = np.flatnonzero((e.source == a) & (e.target == b))
            if edge.size == 0:
                return -math.inf
            displacement = (positions[i] - positions[j])[None, :]
            distance = np.maximum(np.linalg.norm(displacement, axis=1), _MIN_DISTANCE_MM)
            turn = self._turn_penalty(displacement, distance, (tangents[j] + tangents[i])[None, :])
            z = (np.log(distance) - e.log_mean[edge])[None, :] * e.inv_tau[edge] \
                - self._log_scales[:, None] * e.inv_tau[edge]
            step = self._step_score(z, edge, turn)  # (S, edges)
            total += step.max(axis=1) if paths == "max" else _logsumexp(step, axis=1)
        if total.max() <= _IMPOSSIBLE / 2:
            return -math.inf
        hypotheses = (emission[:, None] + total[None, :]).ravel() + self._log_prior  # (O * S,)
        assert hypotheses.shape == (n_offsets * n_scales,)
        return float(hypotheses.max() if paths == "max" else _logsumexp(hypotheses, axis=0))


@lru_cache(maxsize=1)
def _default_decoder() -> ChainDecoder:
    return ChainDecoder()


def label_candidates(positions_mm: np.ndarray, scores: np.ndarray, *,
                     decoder: ChainDecoder | None = None) -> Labelling:
    """Label vertebra candidates as one anatomically valid chain.

    ``positions_mm``: (N, 3) world mm, LPS (+z superior). ``scores``: (N, 26) evidence in
    [0, 1] per label, columns ``spine.labels.LOCATE_CHANNELS`` (1..25, 28); values within
    0.1 outside [0, 1] are clipped, others refused. Returns a :class:`Labelling`; labels
    are unique among non-zero and follow ``allowed_next`` (with skips) along ``order``.
    Raises ValueError for wrong shapes or non-finite values. ``decoder`` defaults to one
    built on the shipped prior.
    """
    return (decoder or _default_decoder()).label(positions_mm, scores)


def decode(positions_mm: np.ndarray, scores: np.ndarray, *, decoder: ChainDecoder | None = None) -> np.ndarray:
    """(N,) VerSe labels for N candidates, 0 for a rejected one: the labels of :func:`label_candidates`,
    without computing the confidences."""
    return (decoder or _default_decoder()).decode(positions_mm, scores)

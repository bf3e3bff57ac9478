"""The chain decoder: the model's parameters, its per-case tables, and the MAP labelling with confidences.

See :mod:`algorithm.labelling` for the model (items 1-9); the passes are in
:mod:`algorithm.labelling.passes`, the step tables in :mod:`algorithm.labelling.chain`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from algorithm.labelling.chain import (
    IMPOSSIBLE,
    N_LABELS,
    Edges,
    Tables,
    build_edges,
    logsumexp,
    pairs,
    sweep,
    visit_log_probability,
)
from algorithm.labelling.constraints import Constraints
from algorithm.labelling.context import ContextModel
from algorithm.labelling.curve import spine_curve
from algorithm.labelling.evidence import OFFSET_NEIGHBOURS, RANK_TO_COLUMN, REGION_OF_RANK, validate
from algorithm.labelling.passes import backward, forward, trace
from algorithm.labelling.region_model import RegionModel
from algorithm.labelling_prior import CHAIN_LABELS, SACRUM, LabellingPrior, load_default
from spine.labels import LOCATE_CHANNELS, LUMBAR, allowed_next

__all__ = ["ChainDecoder", "Labelling"]

log = logging.getLogger(__name__)

_CHAIN_LABEL_ARRAY = np.array(CHAIN_LABELS, dtype=np.int64)
_MIN_DISTANCE_MM = 1e-3
_TANGENT_SD_RAD = 0.1  # error of the fitted curve's direction at a candidate
_OFFSETS = (-1, 0, 1)
_CONFIDENCE_EPS = 1e-6  # keeps the calibration's logit finite at confidence 0 or 1


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
    ``uncertain``: the best labelling and the runner-up are close: some accepted candidate's
    confidence is below the decoder's ``uncertain_below`` (:mod:`algorithm.labelling`, item 7);
    False when confidences were not computed.
    """

    labels: np.ndarray
    confidence: np.ndarray
    order: np.ndarray
    score: float
    scale: float
    offset: int = 0
    uncertain: bool = False

    def __post_init__(self) -> None:
        for name in ("labels", "confidence", "order"):
            getattr(self, name).flags.writeable = False

    @property
    def chain(self) -> np.ndarray:
        """Indices of the accepted candidates, head to foot."""
        return self.order[self.labels[self.order] > 0]



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
    docstring, item 5; 0 switches the component off). ``region_weight``: the reliability of
    region (C/T/L) evidence relative to per-level scores (item 2). ``end_weight``: the weight of
    the prior's chain-end log odds (item 6; 0 switches them off). ``calibration``: ``(a, b)`` of
    the confidence map ``sigmoid(a logit(p) + b)`` (item 7; (1, 0) = the raw posterior) when
    per-level scores are given; ``fixed_region_weight`` replaces ``region_weight`` when the user fixes
    a label (item 8); ``region_calibration`` the same for region evidence alone
    (identity by default: on the VID detector's output the raw posterior's ECE is 0.03 and a
    Platt fit by cross-validation made it worse, ``bench/labelling_real.py --calibrate``).
    ``sacrum_floor``: with the sacrum seen right below the chain's foot (``on_sacrum``, item 10), the
    probability left to a last member the sacrum cannot follow.
    ``uncertain_below``: a case is flagged uncertain when an accepted candidate's calibrated
    confidence is below it. ``region_model``: a fitted reading of region probabilities as likelihood
    ratios (:mod:`algorithm.labelling.region_model`) in place of the ratio against ``reject_evidence``.
    ``context_model``: a learned reading of the whole chain's region probabilities and geometry
    (:mod:`algorithm.labelling.context`) in place of either; its ratios are weighted as region evidence.

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
    region_weight: float = 5.0
    fixed_region_weight: float = 1.0
    end_weight: float = 0.0
    calibration: tuple[float, float] = (1.0, 0.0)
    region_calibration: tuple[float, float] = (1.0, 0.0)
    uncertain_below: float = 0.8
    sacrum_floor: float = 0.02
    region_model: RegionModel | None = field(default=None, repr=False, compare=False)
    context_model: ContextModel | None = field(default=None, repr=False, compare=False)
    _edges: Edges = field(init=False, repr=False, compare=False)
    _log_scales: np.ndarray = field(init=False, repr=False, compare=False)
    _log_scale_prior: np.ndarray = field(init=False, repr=False, compare=False)
    _log_distance_range: tuple[float, float] = field(init=False, repr=False, compare=False)
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _log_prior: np.ndarray = field(init=False, repr=False, compare=False)
    _first: np.ndarray = field(init=False, repr=False, compare=False)
    _start: np.ndarray = field(init=False, repr=False, compare=False)
    _end: np.ndarray = field(init=False, repr=False, compare=False)
    _sacrum_end: np.ndarray = field(init=False, repr=False, compare=False)
    _constrained_edges: dict = field(init=False, repr=False, compare=False)

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
        if min(self.region_weight, self.fixed_region_weight, self.end_weight) < 0 \
                or min(self.calibration[0], self.region_calibration[0]) <= 0:
            raise ValueError("region weights and end_weight must be >= 0, the calibration slope > 0")
        if not 0 < self.sacrum_floor < 1:
            raise ValueError(f"sacrum_floor must be in (0, 1), got {self.sacrum_floor}")
        if not 0 < self.uncertain_below < 1:
            raise ValueError(f"uncertain_below must be in (0, 1), got {self.uncertain_below}")
        if not 0 <= self.max_skips <= 4 or self.scale_steps < 1 or self.position_sd_mm < 0 or self.max_z <= 0:
            raise ValueError("need max_skips in 0..4, scale_steps >= 1, position_sd_mm >= 0 and max_z > 0")
        # One scale: the spread of spine sizes joins every step's variance instead.
        size_var = self.prior.scale_log_sd**2 if self.scale_steps == 1 else 0.0
        edges = build_edges(self.prior, max_skips=self.max_skips, miss_probability=self.miss_probability,
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
        object.__setattr__(self, "_constrained_edges", {})
        object.__setattr__(self, "_log_scales", log_scales)
        object.__setattr__(self, "_log_distance_range", log_distance_range)
        log_scale_prior = log_prior - logsumexp(log_prior, axis=0)
        object.__setattr__(self, "_log_scale_prior", log_scale_prior)
        p = self.offset_probability
        offsets = _OFFSETS if p > 0 else (0,)
        log_odds = np.array([0.0 if o == 0 else math.log(p) - math.log1p(-2 * p) for o in offsets])
        object.__setattr__(self, "_offsets", offsets)
        # Log prior of each hypothesis (offset, scale): the offset's log odds against o = 0 plus the scale's.
        object.__setattr__(self, "_log_prior", (log_odds[:, None] + log_scale_prior[None, :]).ravel())
        start, end = self.prior.end_log_odds()
        object.__setattr__(self, "_first", self.end_weight * start)
        object.__setattr__(self, "_start", self._first + visit_log_probability(self.prior))
        object.__setattr__(self, "_end", self.end_weight * end)
        object.__setattr__(self, "_sacrum_end", self._sacrum_log_probability(None))

    def _start_for(self, constraints: Constraints | None) -> np.ndarray:
        """(L,) log odds of a chain starting on each label: the variant prior of its first label
        (:func:`~algorithm.labelling.chain.visit_log_probability`, conditioned on the stated spine's facts)
        plus ``end_weight`` times the prior's chain-start log odds (item 6)."""
        if constraints is None or constraints.spine_facts == (None, None):
            return self._start
        facts = Constraints(lumbar=constraints.lumbar, thoracic=constraints.thoracic)
        return self._first + visit_log_probability(self.prior, facts)

    def _sacrum_log_probability(self, lumbar: int | None) -> np.ndarray:
        """(L,) log P(the sacrum follows a chain's last label l) (item 10): the prior's branch into the sacrum
        (L4, L5; 1 after L6), or with ``lumbar`` stated 1 after that spine's last lumbar label; at least
        ``sacrum_floor``."""
        follows = np.zeros(len(CHAIN_LABELS))
        for rank, label in enumerate(CHAIN_LABELS):
            if lumbar is not None:
                follows[rank] = float(label == LUMBAR[lumbar - 1])
            elif SACRUM in allowed_next(label):
                follows[rank] = self.prior.branch_probability(label, SACRUM)
        return np.log(np.maximum(follows, self.sacrum_floor))

    def _end_for(self, constraints: Constraints | None, on_sacrum: bool) -> np.ndarray:
        """(L,) log odds of a chain ending on each label: ``end_weight`` times the prior's chain-end log odds
        (item 6), with ``on_sacrum`` plus the log probability that the sacrum follows (item 10)."""
        if not on_sacrum:
            return self._end
        lumbar = constraints.lumbar if constraints is not None else None
        return self._end + (self._sacrum_end if lumbar is None else self._sacrum_log_probability(lumbar))

    def _edges_for(self, constraints: Constraints | None) -> Edges:
        """The label paths of the stated spine (module docstring, item 8); all of them without facts."""
        if constraints is None or constraints.spine_facts == (None, None):
            return self._edges
        key = constraints.spine_facts
        if key not in self._constrained_edges:
            size_var = self.prior.scale_log_sd**2 if self.scale_steps == 1 else 0.0
            self._constrained_edges[key] = build_edges(
                self.prior, max_skips=self.max_skips, miss_probability=self.miss_probability,
                position_sd_mm=self.position_sd_mm, size_var=size_var, constraints=Constraints(
                    lumbar=constraints.lumbar, thoracic=constraints.thoracic))
        return self._constrained_edges[key]

    def _hypotheses(self, scores: np.ndarray | None) -> tuple[tuple[int, ...], np.ndarray]:
        """The offsets considered and the log prior (O * S,) of the hypotheses (offset, scale).

        Offsets shift per-level scores only: region evidence alone is read at offset 0.
        """
        if scores is not None:
            return self._offsets, self._log_prior
        zero = self._offsets.index(0)
        return (0,), self._log_prior.reshape(len(self._offsets), -1)[zero]

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

    def _emissions(self, positions: np.ndarray, evidence: np.ndarray | None, regions: np.ndarray | None,
                   offsets: tuple[int, ...], fixed: bool = False) -> np.ndarray:
        """Evidence ratios (O, N, L) in chain-rank order under each of ``offsets``: the scores' (item 5:
        ordinary candidates read the shifted evidence, recognised anchors their own) plus
        ``region_weight`` (``fixed_region_weight`` when the user ``fixed`` a label, item 8) times the
        regions' (item 2; read in the context of the whole chain at ``positions`` with a ``context_model``),
        the prior odds of a true vertebra once."""
        total = 0.0
        if regions is not None:
            if self.context_model is not None:
                ratio = self.context_model.log_ratio(positions, regions)
            elif self.region_model is not None:
                ratio = self.region_model.log_ratio(regions)
            else:
                ratio = self._ratio(regions[:, REGION_OF_RANK])
            total = (self.fixed_region_weight if fixed else self.region_weight) * ratio[None]
        if evidence is None:
            return total + self._inclusion_log_odds
        chain = evidence[:, RANK_TO_COLUMN]  # (N, L)
        anchors = self._anchors(evidence)
        read = []
        for o in offsets:
            if o == 0:
                read.append(chain)
                continue
            mask = OFFSET_NEIGHBOURS[o]
            shifted = np.where(mask[None, :, :], chain[:, None, :], 0.0).max(axis=2)
            read.append(np.where(anchors[:, None], chain, shifted))
        return total + self._reliability(evidence)[None, :, None] * self._ratio(np.stack(read)) \
            + self._inclusion_log_odds

    def _ratio(self, evidence: np.ndarray) -> np.ndarray:
        """``log(max(s, evidence_floor)) - log(reject_evidence)``: a label's evidence against a false
        detection's (module docstring, item 2)."""
        return np.log(np.maximum(evidence, self.evidence_floor)) - math.log(self.reject_evidence)

    def _tables(self, positions: np.ndarray, tangents: np.ndarray, evidence: np.ndarray | None,
                regions: np.ndarray | None, offsets: tuple[int, ...], constraints: Constraints | None = None,
                fixed: dict[int, int] | None = None, cut: np.ndarray | None = None,
                on_sacrum: bool = False) -> Tables:
        """Emission ratios (H, N, L) in chain-rank order per hypothesis (offset, scale) and the feasible
        steps of the ordered candidates, their scores (H, F) repeated over the offsets.

        ``tangents`` (N, 3): unit direction of the spine curve at each candidate, head to foot.
        ``constraints`` and ``fixed`` ({ordered candidate index: chain rank}): item 8 of the module
        docstring, as impossible emissions, starts and ends, and as steps left out. ``cut`` (N, 2): item 9.
        ``on_sacrum``: item 10.
        """
        n = len(positions)
        n_offsets, n_scales = len(offsets), len(self._log_scales)
        emission = np.repeat(self._emissions(positions, evidence, regions, offsets, bool(fixed)), n_scales,
                             axis=0)  # (O*S, N, L)
        e = self._edges_for(constraints)
        start = np.tile(self._start_for(constraints), (n, 1))
        end = np.tile(self._end_for(constraints, on_sacrum), (n, 1))
        pair_j, pair_i = pairs(n)
        if constraints is not None:
            allowed = np.ones((n, N_LABELS), dtype=bool)
            allowed[:, [CHAIN_LABELS.index(v) for v in constraints.forbidden_labels]] = False
            for k, rank in (fixed or {}).items():
                allowed[k] = False
                allowed[k, rank] = True
            emission = np.where(allowed, emission, emission + IMPOSSIBLE)
        if fixed:
            required = np.zeros(n, dtype=bool)
            required[list(fixed)] = True
            start[np.arange(n) > min(fixed)] += IMPOSSIBLE  # a chain starting below a fixed candidate misses it
            end[np.arange(n) < max(fixed)] += IMPOSSIBLE
            before = np.cumsum(required)  # fixed candidates among 0..k
            over = before[np.maximum(pair_i - 1, 0)] - before[pair_j] > 0  # a fixed one strictly between j and i
            pair_j, pair_i = pair_j[~over], pair_i[~over]
        displacement = positions[pair_i] - positions[pair_j]
        distance = np.maximum(np.linalg.norm(displacement, axis=1), _MIN_DISTANCE_MM)
        log_distance = np.log(distance)
        slack = _slack(cut, pair_j, pair_i, distance)  # (P,) log-length a censored step may lack (item 9)
        near = (((log_distance + slack) >= self._log_distance_range[0])
                & (log_distance <= self._log_distance_range[1]))
        pair_j, pair_i, log_distance, slack = pair_j[near], pair_i[near], log_distance[near], slack[near]
        turn = self._turn_penalty(displacement[near], distance[near], tangents[pair_j] + tangents[pair_i])
        z = (log_distance[:, None] - e.log_mean[None, :]) * e.inv_tau  # (P, E)
        shift = self._log_scales[:, None] * e.inv_tau[None, :]  # (S, E), increasing in s
        extra = slack[:, None] * e.inv_tau[None, :]  # (P, E)
        pair, edge = np.nonzero((z + extra >= shift[0] - self.max_z) & (z <= shift[-1] + self.max_z))
        step = self._step_score(z[pair, edge][None, :] - shift[:, edge], e.log_norm[edge], turn[pair],
                                extra[pair, edge][None, :])  # (S, F)
        if n_offsets > 1:
            step = np.tile(step, (n_offsets, 1))  # (O * S, F): the steps do not depend on the offset
        j, i = pair_j[pair], pair_i[pair]
        source, target = e.source[edge], e.target[edge]
        ahead = sweep(i, target, j * N_LABELS + source, n)
        behind = sweep(j, source, i * N_LABELS + target, n)
        return Tables(emission, j, i, source, target, step,
                      ahead, step[:, ahead.order], behind, step[:, behind.order], start, end, bool(fixed))

    def _step_score(self, z: np.ndarray, log_norm: np.ndarray, turn: np.ndarray,
                    extra: np.ndarray | None = None) -> np.ndarray:
        """Log score of steps whose log distance lies ``z`` edge sds from the mean at a scale.

        ``log_prior + log N(z) / tau + turn`` (module docstring, item 3; ``log_norm`` the edges'
        ``log_prior - log(tau sqrt(2 pi))``), ``IMPOSSIBLE`` beyond ``max_z``. A censored step (item 9)
        may be up to ``extra`` sds longer than seen: it reads the point of ``[z, z + extra]`` nearest 0.
        """
        if extra is not None:
            z = np.minimum(np.maximum(z, 0.0), z + extra)
        return np.where(np.abs(z) <= self.max_z, log_norm + turn - 0.5 * z**2, IMPOSSIBLE)

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

    # ----------------------------------------------------------------------- API

    def label(self, positions_mm: np.ndarray, scores: np.ndarray | None = None, *,
              regions: np.ndarray | None = None, constraints: Constraints | None = None,
              cut: np.ndarray | None = None, on_sacrum: bool = False) -> Labelling:
        """Label N candidates, with posterior confidences: see :func:`algorithm.labelling.label_candidates`."""
        return self._decode(positions_mm, scores, regions, posterior=True, constraints=constraints, cut=cut,
                            on_sacrum=on_sacrum)

    def decode(self, positions_mm: np.ndarray, scores: np.ndarray | None = None, *,
               regions: np.ndarray | None = None, constraints: Constraints | None = None,
               cut: np.ndarray | None = None, on_sacrum: bool = False) -> np.ndarray:
        """(N,) VerSe labels, 0 for rejected candidates: the Viterbi labelling alone (no posterior)."""
        return self._decode(positions_mm, scores, regions, posterior=False, constraints=constraints, cut=cut,
                            on_sacrum=on_sacrum).labels

    def calibrate(self, posterior: np.ndarray, *, regions_only: bool = False) -> np.ndarray:
        """``sigmoid(a logit(p) + b)`` with ``(a, b) = calibration`` (``region_calibration`` for
        region evidence alone; module docstring, item 7)."""
        a, b = self.region_calibration if regions_only else self.calibration
        if (a, b) == (1.0, 0.0):
            return posterior
        p = np.clip(posterior, _CONFIDENCE_EPS, 1.0 - _CONFIDENCE_EPS)
        return 1.0 / (1.0 + np.exp(-(a * (np.log(p) - np.log1p(-p)) + b)))

    def _decode(self, positions_mm: np.ndarray, scores: np.ndarray | None, regions: np.ndarray | None, *,
                posterior: bool, constraints: Constraints | None = None, cut: np.ndarray | None = None,
                on_sacrum: bool = False) -> Labelling:
        """The MAP labelling and, with ``posterior``, its calibrated marginal confidences (else nan)."""
        positions, evidence, region_evidence = validate(positions_mm, scores, regions)
        cut = _cut_flags(cut, len(positions))
        constraints = constraints or None  # an empty Constraints constrains nothing
        fixed = constraints.fixed_candidates(positions) if constraints is not None else {}
        n = len(positions)
        if n == 0:
            empty = np.zeros(0)
            return Labelling(np.zeros(0, dtype=np.int64), empty, np.zeros(0, dtype=np.intp), 0.0, 1.0)
        offsets, log_prior = self._hypotheses(evidence)
        t, tangents = spine_curve(positions)
        order = np.argsort(t, kind="stable")
        sorted_index = np.argsort(order)
        tables = self._tables(positions[order], tangents[order],
                              None if evidence is None else evidence[order],
                              None if region_evidence is None else region_evidence[order], offsets, constraints,
                              {int(sorted_index[k]): CHAIN_LABELS.index(v) for k, v in fixed.items()},
                              cut=cut[order], on_sacrum=on_sacrum)
        with np.errstate(divide="ignore"):  # log(0) of underflowed sums is -inf, as it should be
            best, alpha = forward(tables, posterior=posterior)
            beta = backward(tables) if posterior else None
        n_hypotheses = len(log_prior)  # (offset, scale)

        # MAP over (offset, scale, chain): the empty chain scores 0 under every hypothesis (unless a fixed
        # candidate must be in the chain).
        ended = best + tables.end
        empty = -np.inf if tables.required else 0.0
        total = np.maximum(ended.reshape(n_hypotheses, -1).max(axis=1), empty) + log_prior
        s = int(np.argmax(total))
        if total[s] - log_prior[s] <= IMPOSSIBLE / 2:
            raise ValueError(f"no labelling satisfies the constraints ({constraints.describe(positions)}): "
                             "the fixed labels cannot all be reached along the spine")
        marginal = None
        if alpha is not None and beta is not None:
            # Posterior marginals of (candidate, label), mixed over offsets and the scale grid.
            log_z = np.logaddexp(logsumexp((alpha + tables.end).reshape(n_hypotheses, -1), axis=1), empty)  # (H,)
            weight = log_prior + log_z
            weight = np.exp(weight - logsumexp(weight, axis=0))
            marginal = np.einsum("s,sil->il", weight, np.exp(alpha + beta - log_z[:, None, None]))
        ranks_sorted = np.full(n, -1)
        if ended[s].max() > empty:
            i, label = np.unravel_index(np.argmax(ended[s]), ended[s].shape)
            for member, rank in trace(tables, best, s, int(i), int(label)):
                ranks_sorted[member] = rank
        accepted = ranks_sorted >= 0
        labels = np.zeros(n, dtype=np.int64)
        labels[order] = np.where(accepted, _CHAIN_LABEL_ARRAY[np.maximum(ranks_sorted, 0)], 0)

        confidence = np.full(n, np.nan)
        uncertain = False
        if marginal is not None:
            confidence[order] = self.calibrate(np.clip(np.where(
                accepted, marginal[np.arange(n), np.maximum(ranks_sorted, 0)], 1.0 - marginal.sum(axis=1)), 0.0, 1.0),
                regions_only=evidence is None)
            uncertain = bool(np.any(confidence[labels > 0] < self.uncertain_below))
        log.debug("labelled %d of %d candidates, score %.1f nats, %d feasible steps",
                  int(accepted.sum()), n, float(total[s]), tables.step.shape[1])
        offset, scale = divmod(s, len(self._log_scales))
        return Labelling(labels, confidence, order.astype(np.intp), float(total[s]),
                         float(np.exp(self._log_scales[scale])), int(offsets[offset]), uncertain)

    def score(self, positions_mm: np.ndarray, scores: np.ndarray | None, labels: np.ndarray, *,
              regions: np.ndarray | None = None, paths: str = "max", constraints: Constraints | None = None,
              cut: np.ndarray | None = None, on_sacrum: bool = False) -> float:
        """The model's log score (nats) of a given labelling: what :meth:`label` maximises.

        ``labels`` (N,): VerSe ids or 0 (rejected). Sum of the accepted candidates' evidence
        ratios, of the steps between consecutive ones along the spine curve and of the chain's
        start and end log odds; the label path of a step (which vertebrae were missed, which
        variant) is maximised over (``paths="max"``, the Viterbi objective) or summed over
        (``"sum"``, the weight the posterior uses). The hypotheses (lost-count offset, scale),
        each with its log prior (module docstring, items 4 and 5), are maximised over with
        ``"max"`` and summed over with ``"sum"``, as the posterior mixes them. -inf for a
        labelling the model does not allow (repeated or out-of-order labels, impossible
        steps); 0 with ``"max"`` when every candidate is rejected (one scale). With ``constraints``: the
        score under the stated spine (its label paths and conditioned variant branches, item 8), -inf
        for a labelling that breaks a constraint. ``on_sacrum``: item 10.
        """
        positions, evidence, region_evidence = validate(positions_mm, scores, regions)
        cut = _cut_flags(cut, len(positions))
        labels = np.asarray(labels)
        if labels.shape != (len(positions),):
            raise ValueError(f"labels must have shape ({len(positions)},), got {labels.shape}")
        if paths not in ("max", "sum"):
            raise ValueError(f"paths must be 'max' or 'sum', got {paths!r}")
        rank_of = {label: k for k, label in enumerate(CHAIN_LABELS)}
        if any(int(v) != 0 and int(v) not in rank_of for v in labels):
            raise ValueError("labels must be evaluated VerSe ids (1..25, 28) or 0")
        offsets, log_prior = self._hypotheses(evidence)
        n_scales = len(self._log_scales)
        fixed = constraints.fixed_candidates(positions) if constraints else {}
        if constraints:
            broken = any(int(labels[k]) != v for k, v in fixed.items())
            if broken or set(labels.tolist()) & constraints.forbidden_labels:
                return -math.inf
        if not labels.any():
            return float(log_prior.max() if paths == "max" else logsumexp(log_prior, axis=0))
        t, tangents = spine_curve(positions)
        members = [k for k in np.argsort(t, kind="stable") if labels[k] != 0]
        ranks = [rank_of[int(labels[k])] for k in members]
        emission = self._emissions(positions, evidence, region_evidence, offsets,
                                   bool(fixed))[:, members, ranks].sum(axis=1)
        total = np.full(n_scales, self._start_for(constraints or None)[ranks[0]]
                        + self._end_for(constraints or None, on_sacrum)[ranks[-1]])
        e = self._edges_for(constraints or None)
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
            slack = _slack(cut, np.array([j]), np.array([i]), distance)
            step = self._step_score(z, e.log_norm[edge], turn, slack[:, None] * e.inv_tau[edge][None, :])
            total += step.max(axis=1) if paths == "max" else logsumexp(step, axis=1)
        if total.max() <= IMPOSSIBLE / 2:
            return -math.inf
        hypotheses = (emission[:, None] + total[None, :]).ravel() + log_prior  # (O * S,)
        assert hypotheses.shape == (len(offsets) * n_scales,)
        return float(hypotheses.max() if paths == "max" else logsumexp(hypotheses, axis=0))


CUT_SLACK_MM = 15.0
"""How far a cut vertebra's seen centre may lie inside its true one: about half a lumbar body's height."""


def _cut_flags(cut: np.ndarray | None, n: int) -> np.ndarray:
    """(N, 2) bool: whether each candidate's vertebra runs out of the field of view above, below (item 9)."""
    if cut is None:
        return np.zeros((n, 2), dtype=bool)
    flags = np.asarray(cut, dtype=bool)
    if flags.shape != (n, 2):
        raise ValueError(f"cut must have shape ({n}, 2), got {flags.shape}")
    return flags


def _slack(cut: np.ndarray | None, upper: np.ndarray, lower: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Per step from ``upper`` to ``lower`` (head to foot): how much longer in log distance it may truly be
    (item 9). A vertebra cut above (its visible part, and centre, lie low) or one cut below makes the step
    seen too short, by at most :data:`CUT_SLACK_MM` in all; 0 for the others."""
    if cut is None:
        return np.zeros(len(upper))
    censored = cut[upper, 0] | cut[lower, 1]
    return np.where(censored, np.log(distance + CUT_SLACK_MM) - np.log(distance), 0.0)

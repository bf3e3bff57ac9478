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
   **Learned context** (``ChainDecoder(context_model=...)``, :func:`learned_decoder`, ``predict --labeller
   learned``): region probabilities read with the whole chain's geometry by a small sequence model
   (:mod:`algorithm.labelling.context`); its per-rank log likelihood ratios replace the region ratio, with the
   region weights, and everything below applies unchanged.
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
   A chain's first member pays ``log P(the spine has its label)`` (the variants as a Markov
   chain over the branches: T12 ``P(T11 -> T12)``, T13 ``P(T11 -> T12) P(T12 -> T13)``, L5, L6
   alike; 0 for the others), so a chain starting on a variant pays what a step into it pays;
   what follows the last member is out of view and costs nothing.
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
   pass runs over (offset, scale) hypotheses at once, about three times the work. Where the
   network read a coarse CT (:func:`algorithm.locate.is_coarse`: the OpenKBP necks' 3.5-5.4 mm
   pixels), it loses count about as often as not: :func:`coarse_decoder` reads its count at
   :data:`COARSE_OFFSET_PROBABILITY` each way.

6. **Chain ends** (``end_weight``, 0 by default: off). A chain starting on label l adds ``end_weight``
   times the prior's ``log(26 P(first = l))``, one ending on l ``end_weight`` times ``log(26 P(last = l))``:
   where the fields of view of the prior's scans start and stop.
7. **Calibration.** A returned confidence is ``sigmoid(a logit(p) + b)`` of the posterior marginal p, with
   ``(a, b)`` = ``calibration`` when per-level scores are given, ``region_calibration`` for region
   evidence alone (both the identity by default); a case is ``uncertain`` when an accepted candidate's
   confidence falls below ``uncertain_below``.
8. **What the user knows** (:class:`Constraints`, optional): fixed labels (the candidate
   nearest a world point is vertebra l) and spine-level facts (4, 5 or 6 lumbar, 11, 12 or 13
   thoracic vertebrae) are hard constraints inside the model, not a relabelling afterwards. A
   fixed candidate's other labels get ``IMPOSSIBLE`` evidence, steps that pass over it are left
   out, chains that start below or end above it get ``IMPOSSIBLE`` start / end odds, and the empty
   chain is no longer a labelling. A spine-level fact removes the label paths through the labels and
   variant branches it rules out and gives the branch it decides probability 1 (the prior's variant
   frequencies conditioned on the fact). Viterbi and forward-backward then give the best labelling
   consistent with every constraint and the posterior given them (a fixed candidate's confidence is 1).
   ValueError when no labelling satisfies them all. With a fixed label, region evidence (item 2)
   counts ``fixed_region_weight`` (1) times instead of ``region_weight`` (5): a fix anchors the
   chain, which is most of what region calls are for, and a detector's region calls at the
   junctions (T1 read cervical, T12 lumbar) then mislead more than they help. Chosen by nested
   cross-validation on the VID detections with one true label fixed per scan (1 in every fold of
   0.5, 1, 2, 3, 5; ``bench/labelling_real.py --fix-one --region-weights``).
9. **Vertebrae cut by the field of view** (``cut``, optional, (N, 2) bool: the candidate's vertebra
   runs out of the CT above, below). Its centre is that of the visible part, pulled towards the
   inside, so a step from a vertebra cut above, or to one cut below, is seen shorter than it is, by
   at most ``CUT_SLACK_MM`` (15 mm, half a lumbar body): the step's length is censored to
   ``[d, d + 15 mm]``, and its score reads the ``z`` of item 3 at the point of that interval nearest
   the mean (a step short by up to 15 mm costs nothing, a longer one what it costs).
10. **The sacrum below the chain** (``on_sacrum``, optional): the image shows the sacrum right below the
    lowest candidate (:mod:`algorithm.sacrum`), so the chain's last member is the spine's last lumbar
    vertebra. Its end adds ``log P(the sacrum follows its label)``: the prior's branch into the sacrum
    (L4 0.04, L5 0.80; L6 1, whose path already paid the L5 -> L6 branch), 1 after the last lumbar label a
    stated lumbar count (item 8) names, and at least ``sacrum_floor`` (0.02) for any other label: the
    sacrum check taking a lumbar vertebra for S1, or a vertebra missed in between. Soft, so the 4- and
    6-lumbar spines keep their labels; without it nothing tells a lumbar chain cut above which vertebra
    is L5 (a VerSe lumbar scan's top cropped: L3-L5 over the sacrum labelled L2-L4).

The decoder returns the exact maximiser of the total score over chains (and offsets, scales):
Viterbi over (candidate, label) states on the ordered candidates, every skip, variant
and rejection included. ``confidence`` is the posterior marginal of the returned label
(or of the rejection) under the same model read as a probability: forward-backward
sum-product over all chains (mixed over offsets and the scale grid). It is near 1 where every
competing labelling is far worse and about 0.5 where two explain the evidence equally.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from algorithm.labelling.constraints import Constraints, Fix, parse_fix
from algorithm.labelling.curve import order_along_spine
from algorithm.labelling.decoder import ChainDecoder, Labelling

__all__ = ["COARSE_OFFSET_PROBABILITY", "LABELLERS", "LEARNED_MODEL", "ChainDecoder", "Constraints", "Fix", "Labelling",
           "coarse_decoder", "decode", "label_candidates", "learned_decoder", "order_along_spine", "parse_fix"]

LABELLERS = ("decoder", "learned")
"""What reads the region evidence: per candidate (the decoder's own ratio) or the chain-context model."""
LEARNED_MODEL = Path(__file__).resolve().parents[1] / "models" / "label.onnx"
"""The shipped chain-context model (:mod:`algorithm.labelling.context`)."""


COARSE_OFFSET_PROBABILITY = 0.25
"""The lost-count prior (item 5) each way where the network read a coarse CT (:data:`algorithm.locate.COARSE_PIXEL_MM`):
on the real OpenKBP necks its count per case is right about as often as it is one or more levels off (in 6 of the 15
cases it counts within two levels), not in nine cases of ten. Chosen on the `dev` and `fit` necks (0.25 against 0.05,
0.1, 0.2, 0.3 and 0.45, and one-sided priors, on cached candidates); end to end the 23 necks cropped below C2 go from
7 to 10 fully right and the 28 whole `fit` necks from 24 to 25, none lost (docs/benchmarks.md)."""


@lru_cache(maxsize=1)
def _default_decoder() -> ChainDecoder:
    return ChainDecoder()


@lru_cache(maxsize=1)
def coarse_decoder() -> ChainDecoder:
    """The decoder for a coarse CT's candidates: the network's count doubted as :data:`COARSE_OFFSET_PROBABILITY`
    says, so that ribs, the skull base, the sacrum and the spacings decide where they speak."""
    return ChainDecoder(offset_probability=COARSE_OFFSET_PROBABILITY)


@lru_cache(maxsize=4)
def learned_decoder(model: Path = LEARNED_MODEL) -> ChainDecoder:
    """The decoder with the chain-context model ``model`` reading the region evidence, weighted (alone and with a
    fixed label) and calibrated as its metadata says; ValueError naming the file when it is missing or unusable."""
    from algorithm.labelling.context import ContextModel

    context = ContextModel(model)
    meta = context.meta
    return ChainDecoder(context_model=context, region_weight=meta.evidence_weight,
                        fixed_region_weight=meta.fixed_evidence_weight, region_calibration=meta.calibration)


def label_candidates(positions_mm: np.ndarray, scores: np.ndarray | None = None, *,
                     regions: np.ndarray | None = None, decoder: ChainDecoder | None = None,
                     constraints: Constraints | None = None, cut: np.ndarray | None = None,
                     on_sacrum: bool = False) -> Labelling:
    """Label vertebra candidates as one anatomically valid chain.

    ``positions_mm``: (N, 3) world mm, LPS (+z superior). Evidence, either or both:
    ``scores`` (N, 26) in [0, 1] per label, columns ``spine.labels.LOCATE_CHANNELS``
    (1..25, 28); ``regions`` (N, 3) the probabilities of cervical, thoracic, lumbar in
    [0, 1]. Values within 0.1 outside [0, 1] are clipped, others refused. Returns a
    :class:`Labelling`; labels are unique among non-zero and follow ``allowed_next`` (with
    skips) along ``order``. Raises ValueError for wrong shapes, non-finite values or no
    evidence. ``decoder`` defaults to one built on the shipped prior. ``constraints``: what the
    user knows (item 8); ValueError when no labelling satisfies them. ``cut``: (N, 2) which
    candidates' vertebrae the field of view cuts above, below (item 9). ``on_sacrum``: the sacrum lies right
    below the lowest candidate (item 10).
    """
    return (decoder or _default_decoder()).label(positions_mm, scores, regions=regions, constraints=constraints,
                                                 cut=cut, on_sacrum=on_sacrum)


def decode(positions_mm: np.ndarray, scores: np.ndarray | None = None, *, regions: np.ndarray | None = None,
           decoder: ChainDecoder | None = None, constraints: Constraints | None = None,
           cut: np.ndarray | None = None, on_sacrum: bool = False) -> np.ndarray:
    """(N,) VerSe labels for N candidates, 0 for a rejected one: the labels of :func:`label_candidates` (same
    arguments), without computing the confidences."""
    return (decoder or _default_decoder()).decode(positions_mm, scores, regions=regions, constraints=constraints,
                                                  cut=cut, on_sacrum=on_sacrum)

"""Anatomical labelling: the chain decoder on synthetic spines, variants, outliers and its exactness."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_support import shared_data

from algorithm.labelling import ChainDecoder, Constraints, Labelling, decode, label_candidates, order_along_spine
from algorithm.labelling.chain import IMPOSSIBLE, visit_log_probability
from algorithm.labelling_prior import (
    CHAIN_LABELS,
    DEFAULT_PRIOR_PATH,
    LabellingPrior,
    fit,
    load_default,
    main,
    read_landmarks,
)
from spine.labels import EVALUATED, LOCATE_CHANNELS, allowed_next, label_of

PRIOR = load_default()
DECODER = ChainDecoder(PRIOR)
RANK = {label: k for k, label in enumerate(CHAIN_LABELS)}
COLUMN = {label: k for k, label in enumerate(LOCATE_CHANNELS)}


def ids(*names: str) -> list[int]:
    """VerSe ids of names, with ranges: ids("C1-C7", "T13") -> [1..7, 28]."""
    out: list[int] = []
    for name in names:
        if "-" in name:
            first, last = name.split("-")
            out.extend(range(label_of(first), label_of(last) + 1))
        else:
            out.append(label_of(name))
    return out


def spine_positions(labels: list[int], *, lateral_mm: float = 0.0, noise_mm: float = 0.0,
                    seed: int = 0) -> np.ndarray:
    """Centroids (N, 3) in LPS mm of consecutive ``labels``, spaced by the prior's median steps.

    The chain runs down -z with a gentle sagittal curve; ``lateral_mm`` adds a scoliotic
    S-curve in x.
    """
    z = [0.0]
    for a, b in itertools.pairwise(labels):
        z.append(z[-1] - PRIOR.step(a, b).median_mm)
    z_arr = np.array(z)
    y = 12.0 * np.sin(z_arr / 120.0)
    x = lateral_mm * np.sin(2 * np.pi * z_arr / 350.0)
    points = np.stack([x, y, z_arr], axis=1)
    if noise_mm:
        points += np.random.default_rng(seed).normal(0, noise_mm, points.shape)
    return points


def evidence(believed: list[int], *, peak: float = 0.9, neighbour: float = 0.25,
             background: float = 0.01) -> np.ndarray:
    """Scores (N, 26): ``peak`` on each believed label, ``neighbour`` on the anatomically adjacent channels."""
    scores = np.full((len(believed), len(LOCATE_CHANNELS)), background)
    for k, label in enumerate(believed):
        rank = RANK[label]
        scores[k, COLUMN[label]] = peak
        for near in (rank - 1, rank + 1):
            if 0 <= near < len(CHAIN_LABELS):
                scores[k, COLUMN[CHAIN_LABELS[near]]] = max(scores[k, COLUMN[CHAIN_LABELS[near]]], neighbour)
    return scores


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def assert_valid_chain(result: Labelling, max_steps: int = 3) -> None:
    """Non-zero labels are unique and follow allowed_next (with skips) along result.order."""
    chain = [int(v) for v in result.labels[result.order] if v]
    assert len(chain) == len(set(chain))
    reachable = {label: set() for label in CHAIN_LABELS}
    for label in CHAIN_LABELS:
        frontier = {label}
        for _ in range(max_steps):
            frontier = {n for f in frontier for n in allowed_next(f) if n in EVALUATED}
            reachable[label] |= frontier
    for a, b in itertools.pairwise(chain):
        assert b in reachable[a], f"{a} -> {b} is not an allowed step"


# --------------------------------------------------------------------------- anatomy


@pytest.mark.parametrize("names", [
    ("C1-T12", "L1-L5"),  # normal, the whole spine
    ("T8-T12", "T13", "L1-L5"),  # 13 thoracic
    ("T10-T12", "L1-L6"),  # 6 lumbar
    ("T4-T11", "L1-L5"),  # 11 thoracic
    ("T9-T12", "L1-L4"),  # 4 lumbar
    ("T5-T9",),  # a cropped field of view
])
def test_clean_evidence_labels_every_spine_variant(names: tuple[str, ...]) -> None:
    truth = ids(*names)
    result = label_candidates(spine_positions(truth, noise_mm=1.5), evidence(truth, peak=0.8))
    assert result.labels.tolist() == truth
    assert result.confidence.min() > 0.8
    assert_valid_chain(result)


def test_variants_are_not_hallucinated_from_smeared_evidence() -> None:
    truth = ids("T9-T12", "L1-L5")
    scores = evidence(truth, peak=0.5, neighbour=0.4)  # T13 and L6 channels as high as any neighbour
    assert decode(spine_positions(truth), scores).tolist() == truth


def test_a_variant_needs_evidence_the_prior_does_not_invent_it() -> None:
    truth = ids("T10-T12", "T13", "L1-L3")
    flat = evidence(truth, peak=0.5, neighbour=0.45)
    flat[:, COLUMN[28]] = 0.45  # T13 no better than its neighbours anywhere
    decoded = decode(spine_positions(truth), flat)
    assert 28 not in decoded.tolist()
    assert decode(spine_positions(truth), evidence(truth, peak=0.8)).tolist() == truth


@pytest.mark.parametrize(("axis", "degrees", "lateral_mm"), [("x", 60, 0.0), ("y", 60, 0.0), ("x", 45, 35.0),
                                                              ("y", 0, 40.0)])
def test_tilted_and_scoliotic_spines(axis: str, degrees: float, lateral_mm: float) -> None:
    truth = ids("T1-T12", "L1-L5")
    positions = spine_positions(truth, lateral_mm=lateral_mm, noise_mm=1.0) @ rotation(axis, degrees).T
    shuffle = np.random.default_rng(3).permutation(len(truth))
    result = label_candidates(positions[shuffle], evidence(truth, peak=0.7)[shuffle])
    assert result.labels.tolist() == np.array(truth)[shuffle].tolist()
    assert result.labels[result.order].tolist() == truth


def test_a_missed_vertebra_is_skipped() -> None:
    full = ids("T2-T12", "L1-L2")
    kept = [label for label in full if label != label_of("T8")]
    positions = spine_positions(full)[[full.index(label) for label in kept]]
    result = label_candidates(positions, evidence(kept, peak=0.6, neighbour=0.4))
    assert result.labels.tolist() == kept


def test_a_false_positive_between_two_vertebrae_is_rejected() -> None:
    truth = ids("T3-T12")
    positions = spine_positions(truth)
    k = truth.index(label_of("T6"))
    false = 0.5 * (positions[k] + positions[k + 1]) + np.array([3.0, 0.0, 0.0])
    scores = np.vstack([evidence(truth), evidence([label_of("T7")], peak=0.5)])
    result = label_candidates(np.vstack([positions, false]), scores)
    assert result.labels.tolist() == [*truth, 0]
    assert result.confidence[-1] > 0.5  # confident that it is a false detection


def test_a_false_positive_off_the_spine_is_rejected() -> None:
    truth = ids("L1-L5")
    positions = spine_positions(truth)
    false = positions[-1] + np.array([35.0, 0.0, -10.0])  # beside L5, where a pelvis peak would be
    scores = np.vstack([evidence(truth, peak=0.7), evidence([label_of("L6")], peak=0.6)])
    assert decode(np.vstack([positions, false]), scores).tolist() == [*truth, 0]


def test_anchors_correct_an_off_by_one_shift() -> None:
    truth = ids("C1-T4")
    shifted = [truth[k + 1] for k in range(len(truth) - 1)] + [label_of("T5")]
    scores = evidence(shifted, peak=0.5, neighbour=0.3)  # the right label is a neighbour at 0.3
    scores[:2] = 0.0
    scores[0, COLUMN[1]] = scores[1, COLUMN[2]] = 1.0  # C1 and C2 recognised without doubt
    positions = spine_positions(truth)
    argmax = np.asarray(LOCATE_CHANNELS)[scores.argmax(axis=1)]
    assert (argmax[2:] != truth[2:]).all()
    assert decode(positions, scores).tolist() == truth
    # Without the anchors in view nothing contradicts the shift: the chain follows the evidence.
    assert decode(positions[2:], scores[2:]).tolist() == shifted[2:]


def _shifted_column(truth: list[int], by: int, anchors: list[int], neighbour: float) -> np.ndarray:
    """Evidence of a network that lost count: every candidate believes the label ``by`` places along
    ``truth`` (ordinary, broad peaks), except the ``anchors`` it recognises: one isolated peak each."""
    believed = [truth[min(max(k + by, 0), len(truth) - 1)] for k in range(len(truth))]
    scores = evidence(believed, peak=0.9, neighbour=neighbour, background=0.03)
    for label in anchors:
        k = truth.index(label)
        scores[k] = 0.04
        scores[k, COLUMN[label]] = 0.9
    return scores


def test_recognised_c1_c2_anchors_correct_a_shifted_column() -> None:
    truth = ids("C1-T8")  # 15 vertebrae, 13 of them believing the next label down
    scores = _shifted_column(truth, +1, ids("C1", "C2"), neighbour=0.35)
    positions = spine_positions(truth, noise_mm=1.0)
    assert (np.asarray(LOCATE_CHANNELS)[scores[2:-1].argmax(axis=1)] != truth[2:-1]).all()
    assert decode(positions, scores).tolist() == truth
    assert label_candidates(positions, scores).confidence.min() > 0.5
    # Read as ordinary evidence (anchor_weight 1, no lost-count offset) the shifted majority wins:
    # the anchors are needed.
    plain = ChainDecoder(PRIOR, anchor_weight=1.0, offset_probability=0.0)
    assert decode(positions, scores, decoder=plain)[2:].tolist() != truth[2:]


def test_the_last_lumbar_above_the_sacrum_corrects_a_shifted_column() -> None:
    truth = ids("T12", "L1-L5")  # T12-L4 believe the label above; L5, on the sacrum, is named without doubt
    scores = _shifted_column(truth, -1, ids("L5"), neighbour=0.3)
    positions = spine_positions(truth, noise_mm=1.0)
    # The anchor model alone (the fixture clips T12's shift, which the lost-count offset reads as T13).
    anchors_only = ChainDecoder(PRIOR, offset_probability=0.0)
    assert decode(positions, scores, decoder=anchors_only).tolist() == truth
    plain = ChainDecoder(PRIOR, anchor_weight=1.0, offset_probability=0.0)
    assert decode(positions, scores, decoder=plain)[:-1].tolist() != truth[:-1]


def _lost_count(truth: list[int], by: int, anchors: list[int]) -> np.ndarray:
    """Evidence of a network that lost count by ``by`` along the anatomical sequence of ``truth``'s
    region (no clipping at the ends), except the ``anchors``: one isolated peak each."""
    sequence = ids("C1-T12", "L1-L6")  # no T13: the network counts along the common sequence
    believed = [sequence[sequence.index(label) + by] for label in truth]
    scores = evidence(believed, peak=0.9, neighbour=0.3, background=0.03)
    for label in anchors:
        k = truth.index(label)
        scores[k] = 0.04
        scores[k, COLUMN[label]] = 0.9
    return scores


@pytest.mark.parametrize("by", [-1, 1])
def test_a_lost_count_is_undone_by_the_last_lumbar_above_the_sacrum(by: int) -> None:
    truth = ids("T9-T12", "L1-L5")  # every candidate but L5 believes the label `by` places along
    scores = _lost_count(truth, by, ids("L5"))
    positions = spine_positions(truth, noise_mm=1.0)
    argmax = np.asarray(LOCATE_CHANNELS)[scores.argmax(axis=1)]
    assert (argmax[:-1] != truth[:-1]).all()
    result = label_candidates(positions, scores)
    assert result.labels.tolist() == truth
    assert result.offset == by
    assert result.confidence.min() > 0.5
    # Without the offset, the anchor (weight 5) is outvoted by eight shifted candidates.
    anchors_only = ChainDecoder(PRIOR, offset_probability=0.0)
    assert decode(positions, scores, decoder=anchors_only)[:-1].tolist() != truth[:-1]


@pytest.mark.parametrize("names", [("T9-T12", "L1-L5"), ("C1-T4",), ("T3-T9",), ("T10-T12", "L1-L6")])
def test_no_offset_is_invented_for_a_spine_that_did_not_lose_count(names: tuple[str, ...]) -> None:
    truth = ids(*names)
    positions, scores = spine_positions(truth, noise_mm=1.0), evidence(truth, peak=0.7, neighbour=0.3)
    result = label_candidates(positions, scores)
    assert result.labels.tolist() == truth
    assert result.offset == 0
    off = ChainDecoder(PRIOR, offset_probability=0.0).label(positions, scores)
    assert result.labels.tolist() == off.labels.tolist()
    assert result.score == pytest.approx(off.score, abs=1e-9)  # o = 0 is the maximiser: the same score


def test_only_an_isolated_peak_on_an_anchor_label_is_an_anchor() -> None:
    truth = ids("C2-C7")
    positions = spine_positions(truth)
    plain = ChainDecoder(PRIOR, anchor_weight=1.0)
    contested = evidence(truth, peak=0.9, neighbour=0.4)  # C2 with C1 and C3 in contention: ordinary
    assert DECODER.score(positions, contested, np.array(truth)) == pytest.approx(
        plain.score(positions, contested, np.array(truth)))
    isolated = contested.copy()
    isolated[0] = 0.02
    isolated[0, COLUMN[2]] = 0.9
    gain = math.log(0.9 / DECODER.reject_evidence)
    assert DECODER.score(positions, isolated, np.array(truth)) == pytest.approx(
        plain.score(positions, isolated, np.array(truth)) + (DECODER.anchor_weight - 1) * gain)


def test_order_follows_the_curve_not_z() -> None:
    truth = ids("T1-T12", "L1-L5")
    positions = spine_positions(truth, lateral_mm=40.0) @ rotation("x", 60).T
    assert order_along_spine(positions[::-1]).tolist() == list(range(len(truth)))[::-1]


# --------------------------------------------------------------------------- edges of the input


def test_empty_input_gives_empty_output() -> None:
    result = label_candidates(np.zeros((0, 3)), np.zeros((0, 26)))
    assert result.labels.shape == (0,) and result.labels.dtype.kind == "i"
    assert result.confidence.shape == (0,) and result.order.shape == (0,)
    assert decode(np.zeros((0, 3)), np.zeros((0, 26))).tolist() == []


def test_a_single_candidate_takes_its_evidence() -> None:
    result = label_candidates(np.array([[10.0, 20.0, 30.0]]), evidence([label_of("C5")], neighbour=0.05))
    assert result.labels.tolist() == [5]
    assert 0.5 < result.confidence[0] <= 1.0  # the floor leaves some mass on the 25 other labels
    assert result.chain.tolist() == [0]


def test_result_arrays_are_read_only() -> None:
    truth = ids("L1-L3")
    result = label_candidates(spine_positions(truth), evidence(truth))
    with pytest.raises(ValueError):
        result.labels[0] = 3


@pytest.mark.parametrize(("positions", "scores", "message"), [
    (np.zeros((3, 2)), np.zeros((3, 26)), r"positions_mm must have shape \(N, 3\)"),
    (np.zeros((3, 3)), np.zeros((3, 25)), r"scores must have shape \(N, 26\)"),
    (np.zeros((3, 3)), np.zeros((2, 26)), "3 positions but 2 score rows"),
    (np.full((1, 3), np.nan), np.zeros((1, 26)), "positions_mm holds nan"),
    (np.zeros((1, 3)), np.full((1, 26), np.inf), "scores hold nan or inf"),
    (np.zeros((1, 3)), np.full((1, 26), 4.0), "not logits"),
    (np.zeros(3), np.zeros(26), r"positions_mm must have shape \(N, 3\)"),
])
def test_invalid_input_raises_value_error(positions: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(positions, scores)


def test_invalid_decoder_parameters_raise() -> None:
    for bad in ({"evidence_floor": 0.0}, {"miss_probability": 1.0}, {"false_positive_rate": 0.0},
                {"max_skips": -1}, {"scale_steps": 0}, {"anchor_weight": 0.0}, {"anchor_labels": (26,)},
                {"anchor_margin": 1.0}, {"anchor_min_evidence": 1.5}, {"offset_probability": 0.5},
                {"offset_probability": -0.1}):
        with pytest.raises(ValueError):
            ChainDecoder(PRIOR, **bad)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_any_input_gives_a_valid_chain(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-150, 150, (n, 3)) * np.array([0.3, 0.3, 1.0])
    scores = rng.uniform(0, 1, (n, 26)) ** 3
    result = label_candidates(positions, scores)
    assert result.labels.shape == (n,) and sorted(result.order.tolist()) == list(range(n))
    assert set(result.labels.tolist()) <= {0, *EVALUATED}
    assert ((result.confidence >= 0) & (result.confidence <= 1)).all()
    assert_valid_chain(result)
    assert result.score >= 0.0
    assert DECODER.score(positions, scores, result.labels) == pytest.approx(result.score, abs=1e-9)
    assert decode(positions, scores).tolist() == result.labels.tolist()


def test_permuting_candidates_permutes_labels() -> None:
    truth = ids("C3-T8")
    positions, scores = spine_positions(truth, noise_mm=2.0), evidence(truth, peak=0.6, neighbour=0.35)
    reference = decode(positions, scores)
    permutation = np.random.default_rng(7).permutation(len(truth))
    assert decode(positions[permutation], scores[permutation]).tolist() == reference[permutation].tolist()


# --------------------------------------------------------------------------- exactness


def _chains(n: int, first: int = 0) -> list[list[int]]:
    """Every labelling of n candidates (head to foot) whose non-zero labels rise by 1..5 ranks."""
    if n == 0:
        return [[]]
    out = [[0, *rest] for rest in _chains(n - 1, first)]
    for rank in range(first, len(CHAIN_LABELS)):
        for rest in _chains(n - 1, rank + 1):
            following = [RANK[v] for v in rest if v]
            if not following or following[0] - rank <= 5:
                out.append([CHAIN_LABELS[rank], *rest])
    return out


@pytest.mark.parametrize(("seed", "decoder"), [
    (0, DECODER), (1, DECODER), (2, DECODER),
    # The lost-count offset made likely, with a scale grid and a recognised L5 anchor (seed 4).
    (3, ChainDecoder(PRIOR, offset_probability=0.3, scale_steps=3)),
    (4, ChainDecoder(PRIOR, offset_probability=0.3, scale_steps=3)),
    (5, ChainDecoder(PRIOR, offset_probability=0.0)),
])
def test_viterbi_is_exact_and_confidence_is_the_posterior(seed: int, decoder: ChainDecoder) -> None:
    rng = np.random.default_rng(seed)
    truth = ids("T11-T12", "L1") if seed != 4 else ids("L3-L5")
    positions = spine_positions(truth, noise_mm=4.0, seed=seed)
    if seed == 2:  # a false detection beside T12
        positions[1] += [25.0, 5.0, 0.0]
    scores = rng.uniform(0, 1, (3, 26)) ** 2
    if seed == 4:
        scores[2] = 0.03
        scores[2, COLUMN[label_of("L5")]] = 0.9
        assert decoder._anchors(scores).tolist() == [False, False, True]
    result = decoder.label(positions, scores)
    assert result.order.tolist() == [0, 1, 2]
    chains = np.array(_chains(3))
    best = max(decoder.score(positions, scores, c) for c in chains)
    assert result.score == pytest.approx(best, abs=1e-9)
    weights = np.array([decoder.score(positions, scores, c, paths="sum") for c in chains])
    log_z = np.logaddexp.reduce(weights)  # the empty chain is among them
    for k in range(3):
        chosen = chains[:, k] == result.labels[k]
        posterior = np.exp(np.logaddexp.reduce(weights[chosen]) - log_z)
        assert result.confidence[k] == pytest.approx(posterior, abs=1e-6)


@pytest.mark.parametrize("constraints", [None, Constraints(thoracic=13), Constraints(lumbar=4)])
def test_viterbi_is_exact_with_region_evidence_on_variant_first_labels(constraints: Constraints | None) -> None:
    # Chains starting on T12, T13, L1 all compete: the start's variant prior enters Viterbi and posterior alike.
    truth = ids("T12", "L1-L2")
    positions = spine_positions(truth, noise_mm=3.0, seed=7)
    regions = np.array([[0.05, 0.6, 0.5], [0.05, 0.3, 0.9], [0.02, 0.1, 0.95]])
    result = DECODER.label(positions, regions=regions, constraints=constraints)
    chains = np.array(_chains(3))
    best = max(DECODER.score(positions, None, c, regions=regions, constraints=constraints) for c in chains)
    assert result.score == pytest.approx(best, abs=1e-9)
    weights = np.array([DECODER.score(positions, None, c, regions=regions, paths="sum", constraints=constraints)
                        for c in chains])
    log_z = np.logaddexp.reduce(weights)
    for k in range(3):
        chosen = chains[:, k] == result.labels[k]
        assert result.confidence[k] == pytest.approx(np.exp(np.logaddexp.reduce(weights[chosen]) - log_z), abs=1e-6)


def _variant_spines(prior: LabellingPrior) -> list[tuple[float, set[int]]]:
    """The nine variant spines (11, 12, 13 thoracic x 4, 5, 6 lumbar): (probability, labels), by enumeration."""
    p = prior.branch_probability
    thoracic = [(p(18, 20), ids("C1-T11")), (p(18, 19) * p(19, 20), ids("C1-T12")),
                (p(18, 19) * p(19, 28), ids("C1-T12", "T13"))]
    lumbar = [(p(23, 26), ids("L1-L4")), (p(23, 24) * p(24, 26), ids("L1-L5")),
              (p(23, 24) * p(24, 25), ids("L1-L6"))]
    return [(pt * pl, set(t) | set(lu)) for (pt, t), (pl, lu) in itertools.product(thoracic, lumbar)]


def test_a_chain_start_pays_the_probability_that_the_spine_has_its_label() -> None:
    spines = _variant_spines(PRIOR)
    assert sum(p for p, _ in spines) == pytest.approx(1.0)
    visit = visit_log_probability(PRIOR)
    for rank, label in enumerate(CHAIN_LABELS):
        assert math.exp(visit[rank]) == pytest.approx(sum(p for p, labels in spines if label in labels), abs=1e-12)
    # Conditioned on a stated spine: its labels are certain, the others impossible.
    stated = visit_log_probability(PRIOR, Constraints(thoracic=13, lumbar=4))
    assert stated[RANK[label_of("T13")]] == 0.0 and stated[RANK[label_of("L4")]] == 0.0
    assert stated[RANK[label_of("L5")]] == IMPOSSIBLE
    # A lone candidate equally thoracic: reading it as T13 costs P(T12 -> T13) against T12 (in the
    # posterior's weights too), as a T12 -> T13 step inside a chain does.
    one = spine_positions(ids("T12"))
    regions = np.array([[0.0, 0.9, 0.0]])
    for paths in ("max", "sum"):
        t12, t13 = (DECODER.score(one, None, np.array([label_of(name)]), regions=regions, paths=paths)
                    for name in ("T12", "T13"))
        assert t13 - t12 == pytest.approx(math.log(PRIOR.branch_probability(19, 28)))


def test_a_scale_grid_decodes_and_reports_the_size() -> None:
    truth = ids("T6-T12", "L1-L5")
    big = spine_positions(truth) * 1.12
    result = ChainDecoder(PRIOR, scale_steps=7).label(big, evidence(truth, peak=0.7))
    assert result.labels.tolist() == truth
    assert 1.03 < result.scale < 1.2


def test_confidence_drops_where_the_evidence_is_ambiguous() -> None:
    truth = ids("T6-T7")
    scores = evidence(truth, peak=0.5, neighbour=0.5)  # T5/T6/T7/T8 equally plausible
    result = label_candidates(spine_positions(truth), scores)
    assert result.confidence.max() < 0.6
    clear = label_candidates(spine_positions(truth), evidence(truth, peak=0.9, neighbour=0.05))
    # With no anchor in view a lost count (prior 0.05 each way) cannot be ruled out: about 0.9.
    assert clear.confidence.min() > 0.85
    no_offset = ChainDecoder(PRIOR, offset_probability=0.0)
    assert no_offset.label(spine_positions(truth), evidence(truth, peak=0.9, neighbour=0.05)).confidence.min() > 0.9


# --------------------------------------------------------------------------- the prior


def synthetic_landmarks(spines: list[list[int]], *, scale: float = 1.0) -> np.ndarray:
    out = np.full((len(spines), 26, 3), np.nan)
    for s, labels in enumerate(spines):
        points = spine_positions(labels, noise_mm=0.5, seed=s) * scale
        points[:, 2] += 300.0 - points[:, 2].min()  # RAI frame: z above the scan's lower edge
        for label, point in zip(labels, points, strict=True):
            out[s, COLUMN[label]] = point
    return out


def test_fit_recovers_spacing_and_variant_frequencies() -> None:
    normal = ids("C1-T12", "L1-L5")
    with_t13 = ids("T5-T12", "T13", "L1-L5")
    prior = fit(synthetic_landmarks([normal] * 9 + [with_t13]))
    assert prior.scans == 10
    assert prior.step(label_of("L2"), label_of("L3")).median_mm == pytest.approx(
        PRIOR.step(label_of("L2"), label_of("L3")).median_mm, rel=0.05)
    assert prior.branch_probability(19, 28) == pytest.approx((1 + 0.5) / (10 + 1))
    assert prior.branch_probability(24, 25) == pytest.approx(0.5 / 11)  # no L6 among 10 spines ending at L5
    assert decode(spine_positions(normal), evidence(normal), decoder=ChainDecoder(prior)).tolist() == normal


def test_prior_round_trips_and_rejects_malformed_documents(tmp_path) -> None:
    path = tmp_path / "prior.json"
    PRIOR.save(path)
    assert LabellingPrior.load(path).to_dict() == PRIOR.to_dict()
    document = PRIOR.to_dict()
    document["steps"] = document["steps"][1:]
    with pytest.raises(ValueError, match="lacks the step"):
        LabellingPrior.from_dict(document)
    with pytest.raises(ValueError, match="not a"):
        LabellingPrior.from_dict({"format": "something else"})
    with pytest.raises(ValueError, match="must have shape"):
        fit(np.zeros((3, 25, 3)))


def _assert_close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{k}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=2e-6), path
    else:
        assert a == b, path


def test_shipped_prior_is_what_the_fitting_script_produces(tmp_path) -> None:
    csv = shared_data("verse2020-landmarks", "landmarks.csv")
    out = tmp_path / "prior.json"
    assert main(["--landmarks", str(csv), "--out", str(out)]) == 0
    shipped = json.loads(DEFAULT_PRIOR_PATH.read_text(encoding="utf-8"))
    _assert_close(json.loads(out.read_text(encoding="utf-8")), shipped)
    scans, landmarks = read_landmarks(csv)
    assert len(scans) == shipped["scans"] == landmarks.shape[0]
    _assert_close(fit(landmarks, source=csv.name).to_dict(), shipped)

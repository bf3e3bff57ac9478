"""What the user knows as hard constraints of the chain decoder: exact (brute force), and what they fix."""

from __future__ import annotations

import numpy as np
import pytest
from test_labelling import DECODER, PRIOR, _chains, evidence, ids, spine_positions

from algorithm.labelling import ChainDecoder, Constraints, Fix, label_candidates, parse_fix
from algorithm.labelling.constraints import changes
from spine.labels import label_of, name_of


def fix_at(positions: np.ndarray, k: int, name: str) -> Fix:
    """A fix a little off candidate k (a user's click is never exactly on the detection)."""
    return Fix(label_of(name), tuple(positions[k] + np.array([1.5, -2.0, 1.0])))


def names(labels: np.ndarray) -> list[str]:
    return [name_of(int(v)) if v else "-" for v in labels]


# --------------------------------------------------------------------------- exactness


CASES = [  # (truth, constraints built from the positions); three candidates keep the enumeration small
    (ids("T12", "L1", "L2"), lambda p: Constraints(fixes=(fix_at(p, 1, "L1"),))),
    (ids("T12", "L1", "L2"), lambda p: Constraints(fixes=(fix_at(p, 0, "T11"),))),  # against the evidence
    (ids("T11-T12", "L1"), lambda p: Constraints(thoracic=13)),
    (ids("T11-T12", "L1"), lambda p: Constraints(thoracic=11)),
    (ids("L4-L5", "L6"), lambda p: Constraints(lumbar=5)),
    (ids("L4-L5", "L6"), lambda p: Constraints(lumbar=6, fixes=(fix_at(p, 1, "L5"),))),
    (ids("L3-L5"), lambda p: Constraints(lumbar=4)),
    (ids("L3-L5"), lambda p: Constraints(fixes=(fix_at(p, 0, "L3"), fix_at(p, 2, "L5")))),
]


@pytest.mark.parametrize(("seed", "decoder"), [(0, DECODER), (1, ChainDecoder(PRIOR, offset_probability=0.3,
                                                                                 scale_steps=3))])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_constrained_viterbi_is_exact_and_confidence_the_constrained_posterior(case: int, seed: int,
                                                                             decoder: ChainDecoder) -> None:
    truth, make = CASES[case]
    rng = np.random.default_rng(seed + 10 * case)
    positions = spine_positions(truth, noise_mm=3.0, seed=seed)
    scores = np.clip(evidence(truth) + rng.uniform(0, 0.3, (len(truth), 26)), 0, 1)
    constraints = make(positions)
    result = decoder.label(positions, scores, constraints=constraints)
    assert result.order.tolist() == list(range(len(truth)))
    chains = np.array(_chains(len(truth)))
    best = max(decoder.score(positions, scores, c, constraints=constraints) for c in chains)
    assert best > -1e3
    assert result.score == pytest.approx(best, abs=1e-9)
    weights = np.array([decoder.score(positions, scores, c, paths="sum", constraints=constraints) for c in chains])
    log_z = np.logaddexp.reduce(weights)
    for k in range(len(truth)):
        chosen = chains[:, k] == result.labels[k]
        assert result.confidence[k] == pytest.approx(np.exp(np.logaddexp.reduce(weights[chosen]) - log_z), abs=1e-6)
    for k, label in constraints.fixed_candidates(positions).items():
        assert result.labels[k] == label and result.confidence[k] == pytest.approx(1.0)
    assert not set(result.labels.tolist()) & constraints.forbidden_labels


@pytest.mark.parametrize("seed", range(4))
def test_a_fix_gives_the_best_unconstrained_score_among_labellings_with_that_label(seed: int) -> None:
    """Independent of the constrained tables: a fix alone changes no score, it only restricts the labellings."""
    truth = ids("T12", "L1-L3")
    rng = np.random.default_rng(seed)
    positions = spine_positions(truth, noise_mm=3.0, seed=seed)
    scores = rng.uniform(0, 1, (4, 26)) ** 2
    k, name = int(rng.integers(4)), name_of(int(rng.choice(ids("T11-T12", "L1-L4"))))
    result = DECODER.label(positions, scores, constraints=Constraints(fixes=(fix_at(positions, k, name),)))
    chains = [c for c in _chains(4) if c[k] == label_of(name)]
    assert result.score == pytest.approx(max(DECODER.score(positions, scores, np.array(c)) for c in chains), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_with_a_fix_region_evidence_weighs_fixed_region_weight(seed: int) -> None:
    """A fix makes region calls count ``fixed_region_weight`` times (not ``region_weight``), in the Viterbi
    labelling and in ``score`` alike: the same labelling scores as an unconstrained decoder's with that weight."""
    truth = ids("T11-T12", "L1-L3")
    rng = np.random.default_rng(seed)
    positions = spine_positions(truth, noise_mm=3.0, seed=seed)
    regions = rng.uniform(0, 1, (len(truth), 3))
    fix = Constraints(fixes=(fix_at(positions, 2, "L1"),))
    assert DECODER.fixed_region_weight != DECODER.region_weight
    plain = ChainDecoder(PRIOR, region_weight=DECODER.fixed_region_weight)
    chains = [np.array(c) for c in _chains(len(truth)) if c[2] == label_of("L1")]
    for chain in chains[:40]:
        assert DECODER.score(positions, None, chain, regions=regions, constraints=fix) == pytest.approx(
            plain.score(positions, None, chain, regions=regions), abs=1e-9)
    result = DECODER.label(positions, regions=regions, constraints=fix)
    best = max(DECODER.score(positions, None, c, regions=regions, constraints=fix) for c in chains)
    assert result.score == pytest.approx(best, abs=1e-9)


# --------------------------------------------------------------------------- what they fix


def test_one_fix_corrects_an_off_by_one_run() -> None:
    truth = ids("T9-T12", "L1-L5")
    positions = spine_positions(truth, noise_mm=1.0)
    scores = evidence([*truth[1:], 25])  # the network lost count: every vertebra read one level down
    free = label_candidates(positions, scores)
    assert names(free.labels) != names(np.array(truth))
    fixed = label_candidates(positions, scores, constraints=Constraints(fixes=(fix_at(positions, 5, "L2"),)))
    assert names(fixed.labels) == names(np.array(truth))
    changed = changes(positions, free.labels, fixed.labels)
    assert changed and changed[0]["position_mm"][2] >= changed[-1]["position_mm"][2]


def test_spine_level_facts_rule_out_variants() -> None:
    truth = ids("T10-T12", "L1-L5")
    positions = spine_positions([*ids("T10-T12", "L1-L5"), 25][:8], noise_mm=1.0)
    six = evidence(ids("T10-T12", "L1-L6")[1:])  # the evidence reads T11..L6: six lumbar by the network
    assert 25 in label_candidates(positions, six).labels
    five = label_candidates(positions, six, constraints=Constraints(lumbar=5))
    assert 25 not in five.labels and set(five.labels.tolist()) <= set(truth) | {0}
    thirteen = label_candidates(positions, evidence(truth), constraints=Constraints(thoracic=13))
    assert 28 in thirteen.labels  # the stated T13 is found: T12 -> L1 directly is ruled out


def test_constraints_that_cannot_hold_are_refused() -> None:
    positions = spine_positions(ids("L1-L4"))
    scores = evidence(ids("L1-L4"))
    with pytest.raises(ValueError, match="no labelling satisfies"):
        label_candidates(positions, scores, constraints=Constraints(
            fixes=(fix_at(positions, 0, "C1"), fix_at(positions, 1, "L5"))))
    with pytest.raises(ValueError, match="same candidate"):
        label_candidates(positions, scores, constraints=Constraints(
            fixes=(fix_at(positions, 0, "L1"), fix_at(positions, 0, "L2"))))
    with pytest.raises(ValueError, match="two different candidates"):
        label_candidates(positions, scores, constraints=Constraints(
            fixes=(fix_at(positions, 0, "L1"), fix_at(positions, 2, "L1"))))
    with pytest.raises(ValueError, match="contradicts --lumbar 5"):
        Constraints(fixes=(fix_at(positions, 0, "L6"),), lumbar=5)
    with pytest.raises(ValueError, match="lumbar count"):
        Constraints(lumbar=7)


@pytest.mark.parametrize(("text", "expected"), [
    ("L5=1,2,3", Fix(24, (1.0, 2.0, 3.0))),
    (" t13 = -1.5, 2e1 ,300 ", Fix(28, (-1.5, 20.0, 300.0))),
])
def test_parse_fix(text: str, expected: Fix) -> None:
    assert parse_fix(text) == expected


@pytest.mark.parametrize("text", ["L5", "L5=1,2", "L7=1,2,3", "L5=a,b,c", "S1=1,2,3"])
def test_parse_fix_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fix(text)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_decode_takes_the_same_constraints_and_cuts_as_label_candidates(case: int) -> None:
    """The public ``decode`` (labels only) and ``label_candidates`` agree, constraints and cut vertebrae included."""
    from algorithm.labelling import decode

    truth, make = CASES[case]
    positions = spine_positions(truth, noise_mm=3.0, seed=case)
    scores = np.clip(evidence(truth) + np.random.default_rng(case).uniform(0, 0.3, (len(truth), 26)), 0, 1)
    cut = np.zeros((len(truth), 2), dtype=bool)
    cut[0, 0] = True  # the top vertebra reaches the scan's top
    constraints = make(positions)
    assert decode(positions, scores, constraints=constraints, cut=cut).tolist() == label_candidates(
        positions, scores, constraints=constraints, cut=cut).labels.tolist()
    assert set(decode(positions, scores, constraints=constraints).tolist()) - {0} >= {
        label for label in constraints.fixed_candidates(positions).values()}

"""Vertebrae cut by the field of view (algorithm.labelling, item 9): censored step lengths, exact decoding."""

from __future__ import annotations

import numpy as np
import pytest
from test_labelling import DECODER, PRIOR, _chains, evidence, ids, spine_positions

from algorithm.labelling import ChainDecoder, label_candidates

CUTS = [np.array([[True, False], [False, False], [False, False]]),
        np.array([[False, False], [False, False], [False, True]]),
        np.array([[True, True], [False, False], [True, True]])]


@pytest.mark.parametrize(("seed", "decoder"), [(0, DECODER), (1, ChainDecoder(PRIOR, offset_probability=0.3,
                                                                                 scale_steps=3))])
@pytest.mark.parametrize("cut", range(len(CUTS)))
def test_decoding_with_cut_vertebrae_is_exact(cut: int, seed: int, decoder: ChainDecoder) -> None:
    """Viterbi and forward-backward with censored steps against brute force over every labelling."""
    truth = ids("T12", "L1", "L2")
    rng = np.random.default_rng(seed + 7 * cut)
    positions = spine_positions(truth, noise_mm=3.0, seed=seed)
    positions[0, 2] -= 9.0  # the first vertebra's centre pulled down, as a cut one's is
    scores = np.clip(evidence(truth) * 0.3 + rng.uniform(0, 0.3, (3, 26)), 0, 1)
    flags = CUTS[cut]
    result = decoder.label(positions, scores, cut=flags)
    chains = np.array(_chains(3))
    best = max(decoder.score(positions, scores, c, cut=flags) for c in chains)
    assert result.score == pytest.approx(best, abs=1e-9)
    weights = np.array([decoder.score(positions, scores, c, paths="sum", cut=flags) for c in chains])
    log_z = np.logaddexp.reduce(weights)
    for k in range(3):
        chosen = chains[:, k] == result.labels[k]
        assert result.confidence[k] == pytest.approx(np.exp(np.logaddexp.reduce(weights[chosen]) - log_z), abs=1e-6)


def test_a_short_step_to_a_cut_vertebra_costs_nothing_and_a_long_one_what_it_costs() -> None:
    truth = ids("T11-T12", "L1")
    positions = spine_positions(truth, noise_mm=0.0, seed=0)
    scores = evidence(truth)
    labels = np.array(truth)
    short = positions.copy()
    short[2] = short[1] + 0.6 * (positions[2] - positions[1])  # L1 seen 40 % short of its true place
    cut = np.array([[False, False], [False, False], [False, True]])
    assert DECODER.score(short, scores, labels, cut=cut) > DECODER.score(short, scores, labels) + 1.0
    # about what the true length scores (the turn term still sees the shorter step)
    assert DECODER.score(short, scores, labels, cut=cut) == pytest.approx(DECODER.score(positions, scores, labels),
                                                                         abs=1.0)
    long = positions.copy()
    long[2] = long[1] + 1.5 * (positions[2] - positions[1])
    assert DECODER.score(long, scores, labels, cut=cut) == pytest.approx(DECODER.score(long, scores, labels))
    # a cut vertebra's centre lies at most 15 mm inside its true one: a step 20 mm short still costs
    far = positions.copy()
    step = positions[2] - positions[1]
    far[2] = far[1] + step * (1.0 - 20.0 / np.linalg.norm(step))
    exact = DECODER.score(positions, scores, labels)
    assert DECODER.score(far, scores, labels, cut=cut) < exact - 0.5


def test_no_cut_is_the_plain_decoder_and_a_wrong_shape_is_refused() -> None:
    truth = ids("L1-L4")
    positions = spine_positions(truth, noise_mm=2.0, seed=3)
    scores = evidence(truth)
    plain = label_candidates(positions, scores)
    none_cut = label_candidates(positions, scores, cut=np.zeros((4, 2), dtype=bool))
    assert plain.labels.tolist() == none_cut.labels.tolist() and plain.score == pytest.approx(none_cut.score)
    with pytest.raises(ValueError, match="cut must have shape"):
        label_candidates(positions, scores, cut=np.zeros((3, 2), dtype=bool))

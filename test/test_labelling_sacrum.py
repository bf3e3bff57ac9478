"""The sacrum below the chain (decoder item 10; algorithm.sacrum.rests_on_sacrum): the chain's foot is the last
lumbar vertebra, softly, so the 4- and 6-lumbar spines keep their labels."""

from __future__ import annotations

import numpy as np
import pytest
from test_labelling import DECODER, PRIOR, _chains, ids, spine_positions
from test_labelling_constraints import names

from algorithm.labelling import ChainDecoder, Constraints, label_candidates
from algorithm.sacrum import rests_on_sacrum
from spine.labels import LOCATE_CHANNELS

LUMBAR_ONLY = np.array([0.02, 0.03, 0.95])  # region evidence: lumbar, which level unknown


def lumbar_chain(first: str, last: str) -> tuple[np.ndarray, np.ndarray]:
    positions = spine_positions(ids(f"{first}-{last}"))
    return positions, np.tile(LUMBAR_ONLY, (len(positions), 1))


def test_a_lumbar_chain_over_the_sacrum_ends_on_l5() -> None:
    """Three lumbar vertebrae and nothing else to count from (verse014 with its top cropped): with the sacrum
    below they are L3-L5, whatever the chain's start prior prefers without it."""
    positions, regions = lumbar_chain("L3", "L5")
    result = label_candidates(positions, regions=regions, on_sacrum=True)
    assert names(result.labels) == ["L3", "L4", "L5"]
    assert result.confidence.min() > 0.5


def test_without_the_sacrum_the_foot_is_not_pinned() -> None:
    """The same chain without the sacrum seen: nothing says where it ends (L2-L4 at confidence 0.32, the
    failure the term mends), so the test above cannot pass without it."""
    positions, regions = lumbar_chain("L3", "L5")
    free = label_candidates(positions, regions=regions)
    assert names(free.labels) != ["L3", "L4", "L5"] and free.confidence.max() < 0.5


@pytest.mark.parametrize(("lumbar", "expected"), [(4, ["L2", "L3", "L4"]), (6, ["L4", "L5", "L6"])])
def test_a_stated_lumbar_count_moves_the_foot_to_that_spines_last_lumbar(lumbar: int, expected: list[str]) -> None:
    positions, regions = lumbar_chain("L3", "L5")
    result = label_candidates(positions, regions=regions, on_sacrum=True, constraints=Constraints(lumbar=lumbar))
    assert names(result.labels) == expected


def test_a_six_lumbar_spine_with_evidence_keeps_its_l6() -> None:
    """Soft: per-level evidence for L6 at the foot (a recognised anchor) outweighs the prior's 0.2 for L5 -> L6."""
    truth = ids("L3-L6")
    positions = spine_positions(truth)
    scores = np.full((len(truth), 26), 0.02)
    for k, label in enumerate(truth):
        scores[k, LOCATE_CHANNELS.index(label)] = 0.9
    result = label_candidates(positions, scores, on_sacrum=True)
    assert names(result.labels) == ["L3", "L4", "L5", "L6"]


def test_the_score_counts_the_term_the_labelling_maximises() -> None:
    """Exact: the MAP labelling's score is the best of every chain's score with the same term."""
    positions, regions = lumbar_chain("L3", "L5")
    result = DECODER.label(positions, regions=regions, on_sacrum=True)
    best = max(DECODER.score(positions, None, c, regions=regions, on_sacrum=True) for c in np.array(_chains(3)))
    assert result.score == pytest.approx(best, abs=1e-9)
    plain = DECODER.score(positions, None, result.labels, regions=regions)
    with_sacrum = DECODER.score(positions, None, result.labels, regions=regions, on_sacrum=True)
    assert with_sacrum - plain == pytest.approx(np.log(PRIOR.branch_probability(24, 26)))


def test_sacrum_floor_is_checked() -> None:
    with pytest.raises(ValueError, match="sacrum_floor"):
        ChainDecoder(PRIOR, sacrum_floor=0.0)


def _feet_first(*z: float) -> np.ndarray:
    return np.array([[0.0, 0.0, v] for v in z])


@pytest.mark.parametrize(("z", "flagged", "expected"), [
    ((0.0, -30.0, -60.0, -90.0), [False, False, False, True], True),  # S1 one step below L5
    ((0.0, -30.0, -60.0, -125.0), [False, False, False, True], False),  # 65 mm > 1.5 steps: a vertebra fits
    ((0.0, -30.0, -60.0, -90.0, -110.0), [False, False, False, True, True], True),  # fragments below S1
    ((0.0, -30.0, -60.0, -90.0), [False] * 4, False),  # no S1 found
    ((0.0, -30.0), [False, True], False),  # one vertebra left: no step to measure
])
def test_the_chain_rests_on_s1_when_no_vertebra_fits_between(z: tuple[float, ...], flagged: list[bool],
                                                              expected: bool) -> None:
    assert rests_on_sacrum(_feet_first(*z), np.array(flagged)) is expected

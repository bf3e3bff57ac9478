"""Labelling on a real detector's output (VID dataset fixture), region evidence and the uncertain flag."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_support import REPO

from algorithm.labelling import ChainDecoder, label_candidates
from spine.vid import read_keypoints, read_scan

sys.path.insert(0, str(REPO / "bench"))
from labelling_real import Tally, broadcast_scores, reliability, score_scan

FIXTURE = REPO / "test" / "data" / "vid-keypoints"
WHOLE = "062JCaPtCSw6"  # T10-L5
FROM_T12 = "1EChDwz51S4G"  # T12-L5: the chain starts at T12


def test_region_evidence_labels_a_real_scan_whole() -> None:
    scan = read_scan(FIXTURE, WHOLE)
    result = label_candidates(scan.bodies_mm, regions=scan.region_probabilities)
    tally = Tally()
    score_scan(scan, result.labels, result.confidence, tally, result.uncertain)
    assert tally.whole_right == 1 and tally.rate("all") == 1.0
    assert not result.uncertain and np.all(result.confidence[result.labels > 0] > 0.8)


def test_a_chain_starting_at_t12_is_not_read_as_t13() -> None:
    # The bug: a chain's first label paid no variant prior, so a column whose top body is T12 read as
    # T13 (T13 -> L1 costs nothing, T12 -> L1 costs log 0.97) and every body below was still right.
    scan = read_scan(FIXTURE, FROM_T12)
    result = label_candidates(scan.bodies_mm, regions=scan.region_probabilities)
    tally = Tally()
    score_scan(scan, result.labels, result.confidence, tally, result.uncertain)
    assert 28 not in result.labels.tolist()
    assert tally.whole_right == 1


def test_scores_and_regions_combine_and_regions_alone_ignore_offsets() -> None:
    scan = read_scan(FIXTURE, WHOLE)
    decoder = ChainDecoder()
    alone = decoder.label(scan.bodies_mm, regions=scan.region_probabilities)
    both = decoder.label(scan.bodies_mm, broadcast_scores(scan.region_probabilities),
                         regions=scan.region_probabilities)
    assert alone.offset == 0
    assert both.labels.tolist() == alone.labels.tolist()
    # The score of the returned labelling is what the decoder maximised, with region evidence.
    assert decoder.score(scan.bodies_mm, None, alone.labels, regions=scan.region_probabilities) == \
        pytest.approx(alone.score, abs=1e-6)
    with pytest.raises(ValueError, match="need evidence"):
        decoder.label(scan.bodies_mm)
    with pytest.raises(ValueError, match=r"regions must have shape \(N, 3\)"):
        decoder.label(scan.bodies_mm, regions=np.zeros((len(scan.bodies_mm), 2)))


def test_ambiguous_region_evidence_raises_the_uncertain_flag() -> None:
    scan = read_scan(FIXTURE, WHOLE)
    flat = np.full_like(scan.region_probabilities, 0.5)  # every body equally C, T or L: no anchor
    result = label_candidates(scan.bodies_mm, regions=flat)
    assert result.uncertain


def test_reliability_bins_and_ece() -> None:
    rows, ece = reliability(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1.0, 1.0, 1.0, 0.0]))
    assert [r[2] for r in rows] == [2, 2]
    assert ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)


def test_a_broken_keypoint_file_is_named(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('[{"coordinates": {}}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.json: keypoint 0"):
        read_keypoints(bad)

"""Labelling on a real detector's output (VID dataset fixture), region evidence and the uncertain flag."""

from __future__ import annotations

import numpy as np
import pytest
from test_support import REPO, bench_module

from algorithm.labelling import ChainDecoder, label_candidates
from algorithm.labelling.region_model import FALSE_CLASS, class_groups, fit_region_model, training_ranks
from algorithm.labelling_prior import CHAIN_LABELS
from spine.labels import label_of
from spine.vid import LEFT, RIGHT, pedicle_widths, read_keypoints, read_scan

_bench = bench_module("labelling_real")
Tally, broadcast_scores, evaluate = _bench.Tally, _bench.broadcast_scores, _bench.evaluate
score_scan, source_of, width_profile = _bench.score_scan, _bench.source_of, _bench.width_profile

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


def test_a_broken_keypoint_file_is_named(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('[{"coordinates": {}}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.json: keypoint 0"):
        read_keypoints(bad)


def test_a_fitted_region_model_reads_low_probabilities_as_a_false_detection() -> None:
    # Real detections of the fixture scans, their truth from the annotations; a false detection
    # (every probability low) is then far likelier false than any level, a clear T body thoracic.
    scans = [read_scan(FIXTURE, WHOLE), read_scan(FIXTURE, FROM_T12)]
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    regions = np.concatenate([s.region_probabilities for s in scans] + [np.full((4, 3), 0.04)])
    ranks = np.concatenate([training_ranks(s.bodies_mm, s.truth_mm, np.array([rank[int(v)] for v in s.truth_labels]))
                            for s in scans] + [np.full(4, FALSE_CLASS)])
    assert (ranks >= 0).sum() == 14 and (ranks == FALSE_CLASS).sum() == 4
    model = fit_region_model(regions, ranks, groups="region")
    ratio = model.log_ratio(np.array([[0.04, 0.05, 0.04], [0.02, 0.99, 0.03]]))
    assert ratio.shape == (2, 26)
    assert ratio[0].max() < -1.0
    thoracic, lumbar = rank[label_of("T8")], rank[label_of("L3")]
    assert ratio[1, thoracic] > 1.0 and ratio[1, thoracic] > ratio[1, lumbar] + 1.0
    assert np.all(ratio[:, rank[label_of("T3")]] == ratio[:, thoracic])  # one ratio per region
    decoder = ChainDecoder(region_model=model, region_weight=1.0)
    result = decoder.label(scans[0].bodies_mm, regions=scans[0].region_probabilities)
    assert set(result.labels.tolist()) - {0} == set(scans[0].truth_labels.tolist())
    with pytest.raises(ValueError, match="region, level or junction"):
        class_groups("vertebra")


def test_pedicles_keep_their_side_and_give_the_lumbar_width_profile() -> None:
    scan = read_scan(FIXTURE, WHOLE)  # T10-L5, every annotated body with both pedicles
    assert sorted(scan.truth_pedicle_sides.tolist()) == [RIGHT] * 8 + [LEFT] * 8
    assert len(scan.pedicle_sides) == len(scan.pedicles_mm) == 16
    width = pedicle_widths(scan.truth_mm, scan.truth_pedicles_mm, scan.truth_pedicle_sides)
    assert np.all((width > 15) & (width < 60))
    step = dict(zip(["T10", "T11", "T12", "L1", "L2", "L3", "L4"], np.diff(np.log(width)), strict=True))
    assert step["L4"] == max(step.values()) and step["L4"] > 0.2  # L4 -> L5: the widest step
    assert abs(step["T12"]) < 0.05  # T12 -> L1: flat


def test_a_body_without_a_pedicle_of_each_side_within_reach_has_no_width() -> None:
    scan = read_scan(FIXTURE, WHOLE)
    lowest = int(np.argmin(scan.truth_mm[:, 2]))
    far = np.linalg.norm(scan.truth_pedicles_mm - scan.truth_mm[lowest], axis=1) > 40.0
    keep = far | (scan.truth_pedicle_sides == RIGHT)  # drop the lowest body's left pedicle
    width = pedicle_widths(scan.truth_mm, scan.truth_pedicles_mm[keep], scan.truth_pedicle_sides[keep])
    assert np.isnan(width[lowest]) and np.isfinite(np.delete(width, lowest)).all()
    # Sides matter: all pedicles read as left leave every body without a right one.
    assert np.isnan(pedicle_widths(scan.truth_mm, scan.truth_pedicles_mm, np.full(16, LEFT))).all()
    assert pedicle_widths(np.zeros((0, 3)), scan.truth_pedicles_mm, scan.truth_pedicle_sides).shape == (0,)


def test_scans_are_scored_per_source_and_profiled() -> None:
    assert [source_of(p) for p in ("COLONOG/x/1.3.6/y", "Pancreas-CT/data/PANCREAS_0001.nii.gz",
                                   "verse19/a/sub-verse004", "verse20/b/sub-gl003")] == \
        ["COLONOG", "Pancreas-CT", "VerSe", "VerSe"]
    scans = [read_scan(FIXTURE, WHOLE), read_scan(FIXTURE, FROM_T12)]
    sources = {WHOLE: "COLONOG"}
    total, by_source = Tally(), {}
    decoder = ChainDecoder()
    evaluate(scans, lambda s: (lambda r: (r.labels, r.confidence, r.uncertain))(
        decoder.label(s.bodies_mm, regions=s.region_probabilities)), total, by_source, sources)
    assert sorted(by_source) == ["COLONOG", "unknown"]
    assert sum(t.scans for t in by_source.values()) == total.scans == 2
    assert sum(t.vertebrae["all"] for t in by_source.values()) == total.vertebrae["all"]
    profile = width_profile(scans, sources)
    assert profile[("COLONOG", "L4->L5")][0] > 0.2 and len(profile[("unknown", "L4->L5")]) == 1

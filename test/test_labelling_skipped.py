"""algorithm.labelling.skipped: the levels a labelled chain passes over are placed between their neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithm.labelling.skipped import MIN_ROOM, passed_over, size_factor, skipped_levels
from algorithm.labelling_prior import load_default
from export.real_cases import openkbp_cases, shared_data_dir
from spine.labels import label_of

PRIOR = load_default()


def names(*labels: str) -> list[int]:
    return [label_of(n) for n in labels]


@pytest.mark.parametrize(("source", "target", "between"), [
    ("C4", "C6", ["C5"]),
    ("C1", "C3", ["C2"]),
    ("T10", "L1", ["T11", "T12"]),  # the common anatomy; T10 -> T11 -> L1 (11 thoracic) passes over one level only
    ("T11", "T13", ["T12"]),
    ("C1", "C5", ["C2", "C3", "C4"]),  # MAX_PASSED levels
    ("C1", "C6", []),  # one more than MAX_PASSED
    ("T12", "L2", ["L1"]),
    ("L4", "L6", ["L5"]),
    ("C3", "C4", []),  # consecutive
    ("T11", "L1", []),  # a spine of 11 thoracic vertebrae: a direct step, nothing passed over
    ("T12", "L1", []),
    ("L2", "C5", []),  # not along the spine: nothing to place
    ("C2", "T5", []),  # more than MAX_PASSED levels apart
    ("L3", "S1", []),  # the sacrum is no level the chain places
])
def test_the_levels_passed_over_follow_the_anatomy(source: str, target: str, between: list[str]) -> None:
    to = 26 if target == "S1" else label_of(target)
    assert list(passed_over(label_of(source), to, PRIOR)) == names(*between)
    far_apart = np.array([[0.0, 0.0, 400.0], [0.0, 0.0, 0.0]])  # room for any of them
    assert [p.label for p in skipped_levels([label_of(source), to], far_apart, PRIOR)] == names(*between)


def test_a_skipped_level_lies_between_its_neighbours_as_the_prior_spaces_them() -> None:
    """C2-C3 is a longer step than C3-C4 in the prior, so C3 sits nearer C4 than halfway; a straight chain."""
    c2, c4 = np.array([10.0, 20.0, 150.0]), np.array([10.0, 30.0, 110.0])
    (c3,) = skipped_levels(names("C2", "C4"), np.array([c2, c4]), PRIOR)
    first, second = PRIOR.step(2, 3).median_mm, PRIOR.step(3, 4).median_mm
    assert first > second
    np.testing.assert_allclose(c3.position_mm, c2 + first / (first + second) * (c4 - c2))
    assert c3.label == 3 and c3.between == (2, 4) and str(c3) == "C3 (between C2 and C4)"


def test_a_gap_without_room_for_a_vertebra_gets_none() -> None:
    """A thoracic chain of 21 mm steps whose names skip T6 across 24 mm (the network pulled the names apart): one
    step's length, not two. Across 40 mm T6 is placed."""
    names_ = names("T2", "T3", "T4", "T5", "T7", "T8")

    def chain(gap: float) -> np.ndarray:
        heights = np.cumsum([0.0, 21.0, 21.0, 21.0, gap, 21.0])
        return np.column_stack([np.zeros(6), np.zeros(6), 300.0 - heights])
    assert size_factor(names_, chain(24.0), PRIOR) == pytest.approx(
        np.median([21.0 / PRIOR.step(s, s + 1).median_mm for s in (9, 10, 11, 14)]))
    assert skipped_levels(names_, chain(24.0), PRIOR) == []
    assert [p.label for p in skipped_levels(names_, chain(40.0), PRIOR)] == names("T6")


def test_nothing_is_placed_in_a_chain_without_a_skip() -> None:
    positions = np.array([[0.0, 0.0, 100.0 - 20.0 * k] for k in range(4)])
    assert skipped_levels(names("T11", "T12", "L1", "L2"), positions, PRIOR) == []
    assert skipped_levels(names("T10", "T11", "L1"), positions[:3], PRIOR) == []  # 11 thoracic vertebrae
    assert skipped_levels([], np.zeros((0, 3)), PRIOR) == []
    with pytest.raises(ValueError, match="2 labels for 3 positions"):
        skipped_levels(names("T11", "T12"), positions[:3], PRIOR)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(2, 4), st.lists(st.floats(-200, 200), min_size=3, max_size=3),
       st.lists(st.floats(-1, 1), min_size=3, max_size=3), st.floats(0.0, 3.5))
def test_property_placed_levels_are_ordered_inside_their_gap(first: int, steps: int, start: list[float],
                                                              direction: list[float], length_steps: float) -> None:
    """Two members ``steps`` levels apart, ``length_steps`` median steps of distance between them in any direction:
    the levels between are placed where the gap has room for them (MIN_ROOM times the path's length without its
    shortest step), in anatomical order, each where the prior's median steps put it on the segment; else none."""
    top, bottom = first, first + steps
    norm = float(np.linalg.norm(direction))
    if bottom > 24 or (top, bottom) == (18, 20) or norm < 1e-3:  # T11 -> L1: 11 thoracic vertebrae, not a skip
        return
    lengths = np.array([PRIOR.step(s, s + 1).median_mm for s in range(top, bottom)])
    a = np.array(start)
    b = a + np.array(direction) / norm * length_steps * float(lengths.mean())
    placed = skipped_levels([top, bottom], np.array([a, b]), PRIOR)  # two members: the spine's size factor is 1
    if np.linalg.norm(b - a) < MIN_ROOM * (lengths.sum() - lengths.min()):
        assert placed == []
        return
    assert [p.label for p in placed] == list(range(top + 1, bottom))
    for p, fraction in zip(placed, np.cumsum(lengths)[:-1] / lengths.sum(), strict=True):
        np.testing.assert_allclose(p.position_mm, a + fraction * (b - a), atol=1e-6)
        assert 0.0 < fraction < 1.0


def test_a_placed_level_is_as_confident_as_its_less_confident_neighbour() -> None:
    from algorithm.pipeline import Vertebra, _skipped

    chain = [Vertebra(3, (0.0, 0.0, 130.0), 0.99), Vertebra(4, (0.0, 0.0, 112.0), 0.97),
             Vertebra(6, (0.0, 0.0, 82.0), 0.91), Vertebra(7, (0.0, 0.0, 66.0), 0.95)]
    ((c5, note),) = _skipped(chain[::-1])  # any order in: the chain is read head to foot by level
    assert c5.label == 5 and c5.confidence == 0.91 and 82.0 < c5.position_mm[2] < 112.0
    assert note == "passed over by the chain: placed between C4 and C6"
    assert _skipped(chain[:2]) == []


def test_the_qc_picture_says_which_levels_were_placed() -> None:
    from algorithm.measure import Attenuation, BodyMeasure
    from algorithm.pipeline import _qc_notes

    measures = [BodyMeasure(4, grade=0, attenuation=Attenuation(180.0, 181.0, 900, 2.0)),
                BodyMeasure(5, attenuation=Attenuation(150.0, 151.0, 800, 1.8)), BodyMeasure(6)]
    assert _qc_notes(measures, [5, 6]) == {4: "G0 180 HU", 5: "placed 150 HU", 6: "placed"}
    assert _qc_notes(measures) == {4: "G0 180 HU", 5: "150 HU"}


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared OpenKBP CTs (../shared/data)")
def test_a_neck_vertebra_without_a_candidate_is_placed_where_it_is() -> None:
    """Real OpenKBP CT fit pt_29, bundled models: locate outlines no body at C5 (the chain steps 30 mm from C4 to
    C6, which the decoder reads as a level passed over: every name right, C5 missing). Placed between C4 and C6,
    C5 lies within 10 mm of its annotated centre."""
    from algorithm.detect import detect_spine
    from algorithm.models import ModelSource, find_model_dir, load_models
    from algorithm.pipeline import Options, _accepted, _skipped, label_stage, locate_stage

    (case,) = [c for c in openkbp_cases("fit") if c.name == "openkbp-pt_29"]
    real = case.load()
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    candidates = locate_stage(real.ct, detect_spine(real.ct, models.detect), models, Options())
    labelling = label_stage(candidates, Options())
    vertebrae = _accepted(candidates.positions_mm, np.asarray(labelling.labels), np.asarray(labelling.confidence))
    assert 5 not in {v.label for v in vertebrae} and {4, 6} <= {v.label for v in vertebrae}
    (c5,) = [v for v, _ in _skipped(vertebrae) if v.label == 5]
    assert np.linalg.norm(np.array(c5.position_mm) - real.centroids_mm[5]) < 10.0


def test_the_bench_brings_back_the_removed_body_of_the_bundled_vid_scans(capsys: pytest.CaptureFixture) -> None:
    """bench/skipped.py on the two VID scans of test/data: each loses one interior detection, the decoder passes
    over its level and the level is placed within 10 mm of the annotated body, so both scans are whole again."""
    import importlib.util
    import sys

    from test_support import REPO

    spec = importlib.util.spec_from_file_location("bench_skipped", REPO / "bench" / "skipped.py")
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_skipped"] = bench
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    assert bench.main(["--data", str(REPO / "test" / "data" / "vid-keypoints")]) == 0
    out = capsys.readouterr().out
    assert "| identification rate | 0.857 | 1.000 |" in out and "| scans with every body identified | 0 | 2 |" in out
    assert "placed points: 2, identified 2" in out

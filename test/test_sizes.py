"""Region evidence from the vertebrae's sizes (algorithm.sizes) and the second labelling it feeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithm.locate import Candidates
from algorithm.plausibility import REFERENCE_VOLUME_ML
from algorithm.sizes import BY_SIZE_CAP, FLOOR, LOG_SD, fit_some_level, size_likelihood
from export.real_cases import openkbp_cases, shared_data_dir
from spine.labels import LOCATE_CHANNELS, Region, region_of

CERVICAL, THORACIC, LUMBAR = 0, 1, 2


def test_each_reference_volume_reads_its_own_region_and_the_regions_apart_from_the_junctions() -> None:
    """A level's own reference reads 1 for its region; where no other region's reference lies within a factor of
    1.3 (C3-C6, T5-T7, L3-L6) its region is the strict maximum. The rest lie near the junctions' references (C1,
    C2 and C7 beside T1-T4; T8-T12 beside L1-L2), where a size tells the regions apart barely."""
    columns = {Region.CERVICAL: CERVICAL, Region.THORACIC: THORACIC, Region.LUMBAR: LUMBAR}
    strict = 0
    for label, ml in REFERENCE_VOLUME_ML.items():
        likelihood = size_likelihood(np.array([ml]))[0]
        own = columns[region_of(label)]
        assert likelihood[own] == pytest.approx(1.0), label
        others = [v for k, v in REFERENCE_VOLUME_ML.items() if region_of(k) is not region_of(label)]
        if min(abs(np.log(ml / v)) for v in others) > np.log(1.3):
            assert np.all(np.delete(likelihood, own) < likelihood[own]), label
            strict += 1
    assert strict == 11


def test_a_neck_sized_vertebra_is_no_lumbar_one() -> None:
    """fit pt_40 with its top cropped: 7.6-10 ml vertebrae the network called lumbar."""
    cervical, thoracic, lumbar = size_likelihood(np.array([10.0]))[0]
    assert cervical > 0.75 and lumbar < 0.1 and cervical > thoracic > lumbar
    assert lumbar >= FLOOR  # size alone rules no region out


@pytest.mark.parametrize("value", [np.nan, 0.0, -3.0, np.inf])
def test_a_volume_not_measured_says_nothing(value: float) -> None:
    assert size_likelihood(np.array([value, 13.5]))[0] == pytest.approx([1.0, 1.0, 1.0])
    assert size_likelihood(np.zeros(0)).shape == (0, 3)


def test_only_sizes_some_level_has_are_worth_a_second_labelling() -> None:
    """The median measured volume within the size check's 2.2x of some level's reference (6.0-124 ml): the
    cropped necks' 7.6-12.7 ml are; the test phantom's 3.5 ml spheres are not (its segmentation, not its labels,
    would be wrong), nor is nothing measured."""
    assert fit_some_level(np.array([10.0, 7.6, 33.0, np.nan]))
    assert not fit_some_level(np.full(6, 3.5))
    assert not fit_some_level(np.array([130.0, 140.0, 12.0]))
    assert not fit_some_level(np.array([np.nan, 0.0]))


def test_the_likelihood_is_the_gaussian_in_log_volume_of_the_nearest_reference() -> None:
    """Halfway in log between the nearest cervical reference (13.2 ml) and twice it: 0.35 in log."""
    ml = 13.2 * np.exp(0.35)
    nearest = min(abs(np.log(ml) - np.log(v)) for label, v in REFERENCE_VOLUME_ML.items() if label <= 7)
    expected = FLOOR + (1 - FLOOR) * np.exp(-nearest**2 / (2 * LOG_SD**2))
    assert size_likelihood(np.array([ml]))[0, CERVICAL] == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.5, 300.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_property_bounded_and_between_neck_and_loin_a_larger_vertebra_leans_lumbar(ml: float, a: float,
                                                                                  b: float) -> None:
    """Everywhere within [FLOOR, 1]; between the largest cervical and the largest lumbar reference the lumbar to
    cervical ratio grows with the volume (beyond either, both fade to the floor)."""
    assert np.all((size_likelihood(np.array([ml])) >= FLOOR) & (size_likelihood(np.array([ml])) <= 1.0))
    low, high = max(v for k, v in REFERENCE_VOLUME_ML.items() if k <= 7), max(REFERENCE_VOLUME_ML.values())
    small, large = size_likelihood(low + (high - low) * np.array([min(a, b), max(a, b)]))
    assert large[LUMBAR] / large[CERVICAL] >= small[LUMBAR] / small[CERVICAL] - 1e-12


def test_a_candidate_s_size_is_its_vertebra_s_and_none_where_it_is_cut_or_unlabelled() -> None:
    from algorithm.pipeline import Vertebra, _candidate_labels, _candidate_sizes

    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -15.0], [0.0, 0.0, -30.0], [0.0, 0.0, -45.0]])
    vertebrae = [Vertebra(3, (0.0, 0.0, 0.0), 0.9), Vertebra(4, (0.0, 0.0, -15.0), 0.9),
                 Vertebra(5, (0.0, 0.0, -22.0), 0.9),  # a placed level: no candidate of its own
                 Vertebra(6, (0.0, 0.0, -45.0), 0.9)]
    labels = _candidate_labels(positions, vertebrae)
    assert labels.tolist() == [3, 4, 0, 6]
    cut = np.array([[False, False], [False, False], [False, False], [False, True]])
    sizes = _candidate_sizes(labels, {3: 12.0, 4: 13.0, 5: 14.0, 6: 15.0}, cut)
    assert sizes[:2].tolist() == [12.0, 13.0] and np.isnan(sizes[2]) and np.isnan(sizes[3])


def test_sizes_multiply_the_regions_and_none_leaves_them_as_they_were() -> None:
    scores = np.zeros((2, len(LOCATE_CHANNELS)), dtype=np.float32)
    scores[:, LOCATE_CHANNELS.index(22)] = 1.0  # the network says L3 for both
    plain = Candidates(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -15.0]]), scores, np.array([1.0, 1.0]))
    assert plain.regions()[:, LUMBAR] == pytest.approx([1.0, 1.0])
    sized = Candidates(plain.positions_mm, scores, np.array([0.1, 0.1]), sizes_ml=np.array([10.0, np.nan]))
    unsized = Candidates(plain.positions_mm, scores, np.array([0.1, 0.1]))
    regions, before = sized.regions(), unsized.regions()
    assert regions.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert regions[0, CERVICAL] > before[0, CERVICAL] and regions[0, LUMBAR] < before[0, LUMBAR]
    assert regions[1] == pytest.approx(before[1])  # not measured: as the network alone
    added = sized.with_point(np.array([0.0, 0.0, 15.0]))
    assert added.sizes_ml is not None and np.isnan(added.sizes_ml[0]) and added.sizes_ml[1] == 10.0
    from algorithm.pipeline import _subset

    kept = _subset(sized, np.array([False, True]))
    assert kept.sizes_ml is not None and kept.sizes_ml.shape == (1,) and np.isnan(kept.sizes_ml[0])


@pytest.fixture(scope="module")
def cropped_pt52():
    """fit pt_52 with C1, C2 and the skull cropped away (``bench/real.py``'s top-cropped variant), and the bundled
    models."""
    if shared_data_dir() is None:
        pytest.skip("needs the shared OpenKBP CTs (../shared/data)")
    from algorithm.models import ModelSource, find_model_dir, load_models
    from export.reformat import reformats

    (case,) = [c for c in openkbp_cases("fit") if c.name == "openkbp-pt_52"]
    ((_, cropped),) = reformats(case.load(), ["top-cropped"])
    return cropped, load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")


@pytest.mark.parametrize("labeller_reads_sizes", [True, False])
def test_a_cropped_neck_named_lumbar_is_labelled_again_by_size(cropped_pt52, labeller_reads_sizes: bool) -> None:
    """fit pt_52 without its top two levels: the network called C3 and C4 lumbar (the decoder, doubting its count on
    this coarse CT, names the chain L4 L5 L6), and the anatomy check found them 0.21x a lumbar vertebra's volume.
    Labelled again with their sizes and without the discredited network calls, they are cervical and say they are
    unsure. With ``--no-size-evidence``, or without region evidence for
    the sizes to join, the first labelling stays (capped by the check)."""
    from algorithm.pipeline import Options, predict_case

    cropped, models = cropped_pt52
    result = predict_case(cropped.ct, models)
    assert result.vertebrae and all(v.label <= 7 for v in result.vertebrae)
    assert result.details["label"]["by_size"].startswith("first labelled L")
    assert result.details["label"]["count"].startswith("coarse CT")  # 4 mm pixels: the network's count doubted
    assert result.details["plausibility"]["plausible"]
    assert max(v.confidence for v in result.vertebrae) <= BY_SIZE_CAP
    assert [s["stage"] for s in result.timer.to_list()][-3:] == ["label (by size)", "segment (by size)",
                                                                 "resample (by size)"]
    assert result.volumes_ml and set(result.volumes_ml) <= {v.label for v in result.vertebrae}
    off = Options(size_evidence=False) if labeller_reads_sizes else Options(region_evidence=False)
    first = predict_case(cropped.ct, models, options=off)
    assert "by_size" not in first.details["label"] and first.check is not None and first.check.size_doubtful
    if labeller_reads_sizes:
        assert first.vertebrae and all(v.name.startswith("L") for v in first.vertebrae)

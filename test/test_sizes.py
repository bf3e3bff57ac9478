"""Region evidence from the vertebrae's sizes (algorithm.sizes) and the second labelling it feeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithm.locate import Candidates
from algorithm.plausibility import REFERENCE_VOLUME_ML
from algorithm.sizes import BY_SIZE_CAP, FLOOR, LOG_SD, fit_some_level, region_likelihood
from export.real_cases import openkbp_cases, shared_data_dir
from spine.labels import LOCATE_CHANNELS

CERVICAL, THORACIC, LUMBAR = 0, 1, 2


def test_each_reference_volume_reads_its_own_region_most_likely() -> None:
    for label, ml in REFERENCE_VOLUME_ML.items():
        likelihood = region_likelihood(np.array([ml]))[0]
        region = 0 if label <= 7 else 2 if 20 <= label <= 25 else 1
        assert likelihood[region] == pytest.approx(1.0), label


def test_a_neck_sized_vertebra_is_no_lumbar_one() -> None:
    """fit pt_40 with its top cropped: 7.6-10 ml vertebrae the network called lumbar."""
    cervical, thoracic, lumbar = region_likelihood(np.array([10.0]))[0]
    assert cervical > 0.75 and lumbar < 0.1 and cervical > thoracic > lumbar
    assert lumbar >= FLOOR  # size alone rules no region out


@pytest.mark.parametrize("value", [np.nan, 0.0, -3.0, np.inf])
def test_a_volume_not_measured_says_nothing(value: float) -> None:
    assert region_likelihood(np.array([value, 13.5]))[0] == pytest.approx([1.0, 1.0, 1.0])
    assert region_likelihood(np.zeros(0)).shape == (0, 3)


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
    assert region_likelihood(np.array([ml]))[0, CERVICAL] == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.5, 300.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_property_bounded_and_between_neck_and_loin_a_larger_vertebra_leans_lumbar(ml: float, a: float,
                                                                                  b: float) -> None:
    """Everywhere within [FLOOR, 1]; between the largest cervical and the largest lumbar reference the lumbar to
    cervical ratio grows with the volume (beyond either, both fade to the floor)."""
    assert np.all((region_likelihood(np.array([ml])) >= FLOOR) & (region_likelihood(np.array([ml])) <= 1.0))
    low, high = max(v for k, v in REFERENCE_VOLUME_ML.items() if k <= 7), max(REFERENCE_VOLUME_ML.values())
    small, large = region_likelihood(low + (high - low) * np.array([min(a, b), max(a, b)]))
    assert large[LUMBAR] / large[CERVICAL] >= small[LUMBAR] / small[CERVICAL] - 1e-12


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


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared OpenKBP CTs (../shared/data)")
def test_a_cropped_neck_named_lumbar_is_labelled_again_by_size() -> None:
    """fit pt_52 with C1, C2 and the skull cropped away (``bench/real.py``'s top-cropped variant): the network called
    C3 and C4 lumbar (L3 L4), and the anatomy check found them 0.19x a lumbar vertebra's volume. Labelled again
    with their sizes and without the discredited network calls, they are cervical, and say they are unsure."""
    from algorithm.models import ModelSource, find_model_dir, load_models
    from algorithm.pipeline import predict_case
    from export.reformat import reformats

    (case,) = [c for c in openkbp_cases("fit") if c.name == "openkbp-pt_52"]
    ((_, cropped),) = reformats(case.load(), ["top-cropped"])
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    result = predict_case(cropped.ct, models)
    assert result.vertebrae and all(v.label <= 7 for v in result.vertebrae)
    assert result.details["label"]["by_size"].startswith("first labelled L3 L4")
    assert result.details["plausibility"]["plausible"]
    assert max(v.confidence for v in result.vertebrae) <= BY_SIZE_CAP
    assert result.volumes_ml and set(result.volumes_ml) == {v.label for v in result.vertebrae}

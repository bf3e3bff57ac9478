"""A coarse CT's network count is doubted: :func:`algorithm.locate.is_coarse` and the decoder ``label_stage`` picks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from test_labelling import evidence, ids, spine_positions

from algorithm.labelling import COARSE_OFFSET_PROBABILITY, coarse_decoder
from algorithm.locate import COARSE_PIXEL_MM, Candidates, is_coarse
from algorithm.pipeline import Options, label_stage

SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""Direction of a sagittal slab: the grid's axes run along LPS y, z and x (its slices left-right)."""


def _image(spacing: tuple[float, float, float], direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
           ) -> sitk.Image:
    image = sitk.Image(8, 8, 8, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


@pytest.mark.parametrize(("spacing", "direction", "coarse"), [
    ((0.8, 0.8, 2.5), None, False),  # a chest CT
    ((4.0, 4.0, 2.5), None, True),  # a head-and-neck CT of OpenKBP
    ((COARSE_PIXEL_MM,) * 2 + (5.0,), None, False),  # the threshold itself, thick slices: fine pixels
    ((4.0, 0.8, 0.8), None, True),  # coarse along one axis of the plane
    ((0.8, 0.8, 3.0), SAGITTAL, False),  # VerSe's sagittal lumbar slab: 3 mm slices along x
    ((0.8, 0.8, 4.0), SAGITTAL, True),  # 4 mm sagittal slices are 4 mm left-right
    ((4.0, 0.8, 0.8), SAGITTAL, True),  # its first axis runs front-back
    ((0.8, 4.0, 0.8), SAGITTAL, False),  # its second head-feet (along z): thick is not coarse
])
def test_coarse_is_the_voxel_s_reach_left_right_or_front_back(spacing: tuple[float, float, float],
                                                              direction: tuple[float, ...] | None,
                                                              coarse: bool) -> None:
    image = _image(spacing) if direction is None else _image(spacing, direction)
    assert is_coarse(image) is coarse


def _chain(*, coarse: bool) -> Candidates:
    truth = ids("C3-T2")
    scores = evidence(truth, peak=0.8).astype(np.float32)
    return Candidates(spine_positions(truth), scores, scores.max(axis=1), coarse=coarse)


def test_a_coarse_ct_named_by_the_network_alone_is_not_certain() -> None:
    """Nothing but the network counts this neck (no skull, no ribs, no sacrum): on a fine CT its count stands, on a
    coarse one, where the network is one level off about as often as right, the labels are the same but doubted."""
    options = Options(region_evidence=False)
    fine = label_stage(_chain(coarse=False), options)
    coarse = label_stage(_chain(coarse=True), options)
    assert fine.labels.tolist() == coarse.labels.tolist() == ids("C3-T2")
    assert fine.confidence.min() > 0.9 and not fine.uncertain
    assert coarse.confidence.max() < 0.8 and coarse.uncertain


def test_the_coarse_decoder_doubts_the_count_as_its_constant_says() -> None:
    assert coarse_decoder().offset_probability == COARSE_OFFSET_PROBABILITY > 0.05

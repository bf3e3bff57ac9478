"""Anatomical plausibility checks of a labelled spine (algorithm.plausibility)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from algorithm.plausibility import (
    FOV_IMPOSSIBLE_MM,
    REFERENCE_VOLUME_ML,
    SIZE_TOLERANCE,
    assess,
    expected_distance_mm,
    judge_geometry,
    size_ratio,
    spacing_ratio,
)
from spine.image import Geometry, read_image
from spine.verse import read_centroids_mm

VERSE004 = Path(__file__).parent / "data" / "verse-sub-verse004"


@pytest.fixture(scope="module")
def verse004() -> dict[int, np.ndarray]:
    mask = read_image(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz")
    return read_centroids_mm(VERSE004 / "sub-verse004_seg-subreg_ctd.json", Geometry.of(mask))


def test_real_spine_with_right_labels_is_plausible(verse004) -> None:
    labels = sorted(verse004)
    positions = np.array([verse004[v] for v in labels])
    ratio = spacing_ratio(labels, positions)
    assert ratio is not None and 0.85 < ratio < 1.2
    volumes = {v: REFERENCE_VOLUME_ML[v] * 0.8 for v in labels}
    assert assess(labels, positions, volumes).plausible


def test_lumbar_spine_labelled_cervical_is_flagged(verse004) -> None:
    labels = sorted(verse004)  # T9..L5 relabelled C1..C7, T1, T2: the region is wrong
    positions = np.array([verse004[v] for v in labels])
    wrong = list(range(1, len(labels) + 1))
    check = assess(wrong, positions, {})
    assert not check.plausible
    assert check.spacing_ratio is not None and check.spacing_ratio > 1.6
    assert "C1-T2" in check.reasons[0]


def test_size_check_flags_a_wrong_region_but_not_ordinary_spread() -> None:
    lumbar_volumes = {22: 54.0, 23: 60.0}
    assert size_ratio(lumbar_volumes) == pytest.approx(np.sqrt(54.0 / 54.0 * 60.0 / 56.2), rel=1e-6)
    as_cervical = {4: 54.0, 5: 60.0}  # the same bones called C4, C5
    check = assess([4, 5], np.array([[0, 0, 0], [0, 0, -16.0]]), as_cervical)
    assert check.size_ratio is not None and check.size_ratio > SIZE_TOLERANCE
    assert not check.plausible and "volume" in check.reasons[0]


def test_expected_distance_follows_variants_and_skips() -> None:
    medians = {(18, 19): 27.0, (19, 20): 28.0, (18, 20): 30.0, (20, 21): 31.0}
    assert expected_distance_mm(18, 19, medians) == 27.0
    assert expected_distance_mm(18, 20, medians) == 30.0  # T11 -> L1 directly (11 thoracic) is the shorter path
    assert expected_distance_mm(19, 21, medians) == 59.0  # a missed L1 in between
    assert expected_distance_mm(21, 18, medians) is None  # upwards is not a path


def test_nothing_to_measure_is_plausible() -> None:
    check = assess([20], np.zeros((1, 3)), {})
    assert check.plausible and check.spacing_ratio is None and check.size_ratio is None


def test_pipeline_reports_the_checks_and_caps_doubtful_cases() -> None:
    from algorithm.models import ModelSource, find_model_dir, load_models
    from algorithm.pipeline import predict_case
    from algorithm.plausibility import IMPLAUSIBLE_CAP

    example = Path(__file__).parents[1] / "examples" / "totalsegmentator-example" / "ct.nii.gz"
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    result = predict_case(read_image(example), models)
    report = result.report()
    assert set(report["plausibility"]) == {"plausible", "spacing_ratio", "size_ratio", "reasons", "geometry"}
    assert report["plausibility"]["geometry"] == []  # 3 mm, 37 x 30 x 34 cm: a usual grid
    if report["plausibility"]["reasons"]:
        assert all(p.probability <= IMPLAUSIBLE_CAP for p in result.points())


def _grid(size, spacing, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> Geometry:
    return Geometry(tuple(size), tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), tuple(direction))


@pytest.mark.parametrize(("size", "spacing", "impossible", "unusual"), [
    ((512, 512, 400), (0.78, 0.78, 1.0), 0, 0),        # a usual spine CT
    ((122, 101, 112), (3.0, 3.0, 3.0), 0, 0),          # the bundled example, resampled to 3 mm
    ((512, 512, 1800), (0.98, 0.98, 1.0), 0, 0),       # whole body, 1.8 m
    ((122, 101, 112), (20.0, 20.0, 20.0), 3, 1),       # the 20 mm header: 2.4 m wide, 20 mm voxels
    ((512, 512, 60), (0.8, 0.8, 6.0), 0, 1),           # 6 mm slices: unusual
    ((512, 512, 200), (1.5, 1.5, 1.0), 0, 2),          # 77 cm in x and in y: unusual twice
    ((400, 400, 300), (0.1, 0.1, 0.1), 0, 1),          # micro-CT
])
def test_geometry_judged_against_what_ct_scanners_produce(size, spacing, impossible: int, unusual: int) -> None:
    judged = judge_geometry(_grid(size, spacing))
    assert (len(judged.impossible), len(judged.unusual)) == (impossible, unusual), judged


def test_an_oblique_or_sagittal_grid_is_judged_on_its_world_axes() -> None:
    """A sagittal acquisition's long image axis runs head to foot: 1.2 m of it is a whole spine, not 1.2 m across."""
    sagittal = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # i -> y... image axis 0 along world y, 2 along x
    judged = judge_geometry(_grid((1200, 300, 60), (1.0, 1.0, 3.0), (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)))
    assert judged.impossible == () and judged.unusual == ()  # axis 0 (1.2 m) points along z
    assert judge_geometry(_grid((1200, 300, 60), (1.0, 1.0, 3.0), sagittal)).impossible  # axis 0 along y: 1.2 m
    assert FOV_IMPOSSIBLE_MM[2] > FOV_IMPOSSIBLE_MM[0]


def test_an_unusual_grid_runs_but_the_report_and_the_log_flag_it(tmp_path: Path, caplog) -> None:
    """6 mm slices: not refused, but ``plausible`` is false and the log says why (the issue: 20 mm said true)."""
    import json
    import logging

    import SimpleITK as sitk
    from algorithm_fixtures import fixture_model_dir, make_phantom

    from algorithm.cli import main

    ct = tmp_path / "thick_ct.mha"
    sitk.WriteImage(make_phantom(spacing_mm=(0.9, 1.1, 6.0)).image, str(ct))
    with caplog.at_level(logging.WARNING, logger="algorithm"):
        assert main(["predict", str(ct), "--output", str(tmp_path / "out"), "--models", str(fixture_model_dir()),
                     "--device", "cpu", "--no-qc", "-q"]) == 0
    plausibility = json.loads((tmp_path / "out" / "thick_report.json").read_text())["plausibility"]
    assert plausibility["plausible"] is False
    assert len(plausibility["geometry"]) == 1 and "0.9x1.1x6 mm" in plausibility["geometry"][0]
    assert any("coarser than 5 mm" in r.getMessage() for r in caplog.records)

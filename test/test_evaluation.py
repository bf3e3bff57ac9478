"""Case scoring and both CLI modes end to end, on the shipped VerSe sample and tiny synthetic cases."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from gc_fixtures import make_evaluation_input, make_ground_truth

from evaluation import cli, score
from evaluation.aggregate import aggregate, statistics
from evaluation.discover import find_ground_truth
from evaluation.score import CaseFiles, penalty_mm, score_case, score_label_maps
from spine.gc import Point, points_document
from spine.image import Geometry, image_from_array, read_image, resample_onto, write_image
from spine.labels import name_of
from spine.layout import EvaluationLayout
from spine.verse import read_centroids_mm, write_centroid_json

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "verse-sub-verse004"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CASE = "sub-verse004"
LEADERBOARD = ("dice", "hd95", "hd", "id_rate", "localisation_mm", "hd95_matched", "hd_matched",
               "localisation_matched_mm", "false_positive_labels", "hd_missing")


# --------------------------------------------------------------------------- helpers


def sample_mask() -> Path:
    return SAMPLE / f"{CASE}_seg-vert_msk.nii.gz"


def sample_centroids() -> Path:
    return SAMPLE / f"{CASE}_seg-subreg_ctd.json"


def synthetic_case(labels: tuple[int, ...] = (20, 21, 22), spacing=(1.0, 1.0, 2.0)) -> sitk.Image:
    """Boxes of 8x6x4 voxels stacked along k, one per label, in a 16x14x(5 per label + 2) volume."""
    array = np.zeros((5 * len(labels) + 2, 14, 16), dtype=np.uint8)
    for n, label in enumerate(labels):
        k0 = 1 + 5 * (len(labels) - 1 - n)  # L1 on top (higher k = superior in LPS)
        array[k0:k0 + 4, 4:10, 4:12] = label
    geometry = Geometry(size=(16, 14, array.shape[0]), spacing_mm=spacing, origin_mm=(-10.0, 20.0, 300.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image_from_array(array, geometry)


def with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def no_constants(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-finite constant {name} in metrics.json")
    return json.loads(text, parse_constant=refuse)


def check_document(path: Path) -> dict[str, Any]:
    """metrics.json: strict JSON, no NaN/inf/null, no dots in keys, leaderboard paths finite."""
    doc = no_constants(path.read_text())

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert "." not in key, f"dotted key {key!r} at {where}"
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            assert value is not None, f"null at {where}"
            if isinstance(value, float):
                assert math.isfinite(value), f"non-finite at {where}"

    walk(doc, "")
    agg = doc["aggregates"]
    for metric in LEADERBOARD:
        for stat in ("mean", "std", "median", "min", "max", "count"):
            assert math.isfinite(agg[metric][stat])
    assert math.isfinite(agg["id_rate_total"])
    assert math.isfinite(agg["per_label"]["L1"]["dice"]["mean"])
    return doc


def run_cli(*args: str | Path) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture
def tiny_gt(tmp_path: Path) -> Path:
    return make_ground_truth(tmp_path / "gt", [("sub-tiny001", synthetic_case(), None)])


# --------------------------------------------------------------------------- the real sample


def test_sample_centroids_lie_inside_their_labels() -> None:
    image = read_image(sample_mask())
    geometry = Geometry.of(image)
    array = sitk.GetArrayFromImage(image)
    centroids = read_centroids_mm(sample_centroids(), geometry)
    assert sorted(centroids) == list(range(16, 25))
    for label, point in centroids.items():
        i, j, k = np.round(geometry.world_to_index(point)).astype(int)
        assert array[k, j, i] == label, name_of(label)


def test_ground_truth_against_itself_is_perfect() -> None:
    record = score_case(CaseFiles(CASE, sample_mask(), sample_centroids(), sample_mask(), sample_centroids()))
    assert record["dice"] == 1.0 and record["id_rate"] == 1.0
    assert record["hd95"] == 0.0 and record["hd"] == 0.0
    assert record["localisation_mm"] == pytest.approx(0.0, abs=1e-9)
    assert record["vertebrae"] == 9 and record["hd_missing"] == 0 and record["false_positive_labels"] == 0
    assert record["status"] == "prediction pixel type 64-bit float accepted (integral values)"  # VerSe stores floats
    assert set(record["per_vertebra"]) == {name_of(v) for v in range(16, 25)}


def test_without_points_the_mask_is_ranked_against_the_annotated_centroids() -> None:
    """Regression (issue 20): without points both sides fell back to mask centres of mass, so
    leaving points out scored 0 mm where good points scored more. Now the ranked values always
    use the annotated body centres (a mask's centre of mass lies ~12 mm from them); the
    mask-to-mask comparison is the unranked ``localisation_mask_mm``."""
    record = score_case(CaseFiles(CASE, sample_mask(), sample_centroids(), sample_mask(), None))
    image = read_image(sample_mask())
    geometry = Geometry.of(image)
    annotated = read_centroids_mm(sample_centroids(), geometry)
    array = sitk.GetArrayFromImage(image)
    by_hand = np.mean([np.linalg.norm(geometry.index_to_world(np.argwhere(array == v).mean(axis=0)[::-1]) - p)
                       for v, p in annotated.items()])
    assert 5.0 < by_hand < 20.0
    assert record["localisation_mm"] == pytest.approx(by_hand, abs=1e-6)
    assert record["localisation_matched_mm"] == pytest.approx(by_hand, abs=1e-6)
    assert record["localisation_mask_mm"] == pytest.approx(0.0, abs=1e-9)
    assert record["per_vertebra"]["L1"]["distance_mask_mm"] == pytest.approx(0.0, abs=1e-9)
    assert record["id_rate"] == 1.0
    assert record["status"].startswith("prediction pixel type") and "no points file" in record["status"]
    with_points = score_case(CaseFiles(CASE, sample_mask(), sample_centroids(), sample_mask(), sample_centroids()))
    assert with_points["localisation_mm"] == pytest.approx(0.0, abs=1e-9)
    assert with_points["localisation_mask_mm"] == record["localisation_mask_mm"]


def test_shared_data_sample_matches_the_shipped_copy() -> None:
    shared = SHARED / "verse-sub-verse004"
    if not shared.is_dir():
        pytest.skip("../shared/data not present")
    for path in shared.iterdir():
        assert (SAMPLE / path.name).read_bytes() == path.read_bytes()


def test_shared_totalsegmentator_case_scores_against_itself(tmp_path: Path) -> None:
    folder = SHARED / "totalsegmentator-example"
    if not folder.is_dir():
        pytest.skip("../shared/data not present")
    mask = folder / "seg-vert_msk.nii.gz"
    record = score_case(CaseFiles("ts", mask, folder / "seg-vert_ctd.json", mask, None))
    assert record["dice"] == 1.0 and record["hd95"] == 0.0 and record["id_rate"] == 1.0


# --------------------------------------------------------------------------- scoring by hand


def test_shifted_prediction_by_hand() -> None:
    image = synthetic_case(spacing=(1.0, 1.0, 2.0))
    geometry = Geometry.of(image)
    reference = sitk.GetArrayFromImage(image)
    prediction = np.roll(reference, 1, axis=0)  # one slice = 2 mm along k
    result = score_label_maps(reference, prediction, geometry)
    for v in result.vertebrae:
        assert v.dice == pytest.approx(2 * 3 / 8)  # 4 slices each, 3 shared
        assert v.hd_mm == pytest.approx(2.0)
        assert v.identified and v.distance_mm == pytest.approx(2.0)
    assert result.false_positive_labels == 0


def test_missing_label_and_false_positive_label() -> None:
    image = synthetic_case()
    reference = sitk.GetArrayFromImage(image)
    prediction = reference.copy()
    prediction[prediction == 22] = 0
    prediction[0, 0, 0] = 5  # C5, not in the ground truth
    record = score_label_maps(reference, prediction, Geometry.of(image)).to_dict()
    assert record["hd_missing"] == 1 and record["false_positive_labels"] == 1
    assert record["dice"] == pytest.approx(2 / 3)
    assert record["id_rate"] == pytest.approx(2 / 3)
    d = penalty_mm(Geometry.of(image))
    assert d == pytest.approx(np.sqrt(16 ** 2 + 14 ** 2 + (17 * 2) ** 2))
    assert record["per_vertebra"]["L3"] == {"dice": 0.0, "hd95": d, "hd": d, "identified": False, "distance_mm": d,
                                            "distance_mask_mm": d, "predicted": False, "localised": False}
    assert record["hd95"] == pytest.approx(d / 3) and record["hd95_matched"] == 0.0
    assert record["localisation_mm"] == pytest.approx(d / 3) and record["localisation_matched_mm"] == 0.0
    assert record["localisation_mask_mm"] == pytest.approx(d / 3)


def test_swapped_labels_are_not_identified() -> None:
    image = synthetic_case()
    reference = sitk.GetArrayFromImage(image)
    prediction = reference.copy()
    prediction[reference == 20], prediction[reference == 21] = 21, 20
    record = score_label_maps(reference, prediction, Geometry.of(image)).to_dict()
    assert record["per_vertebra"]["L1"]["identified"] is False
    assert record["per_vertebra"]["L3"]["identified"] is True
    assert record["per_vertebra"]["L1"]["dice"] == 0.0


def test_identification_threshold_uses_mm_on_thick_slices() -> None:
    # 5 mm slices; the predicted L1 centroid 5 slices (25 mm) off: a miss, though "5 < 20" in voxels.
    image = synthetic_case(labels=(20,), spacing=(1.0, 1.0, 5.0))
    geometry = Geometry.of(image)
    reference = sitk.GetArrayFromImage(image)
    centre = np.argwhere(reference == 20).mean(axis=0)[::-1]
    far = {20: geometry.index_to_world(centre + np.array([0, 0, 5]))}
    near = {20: geometry.index_to_world(centre + np.array([0, 0, 3]))}
    assert not score_label_maps(reference, reference, geometry, predicted_centroids_mm=far).vertebrae[0].identified
    assert score_label_maps(reference, reference, geometry, predicted_centroids_mm=near).vertebrae[0].identified


# --------------------------------------------------------------------------- bad input, one case


def write(tmp_path: Path, image: sitk.Image, name: str = "pred.mha") -> Path:
    return write_image(image, tmp_path / name)


def tiny_files(tmp_path: Path, prediction: Path | None, points: Path | None = None) -> CaseFiles:
    gt = write(tmp_path, synthetic_case(), "gt_seg-vert_msk.nii.gz")
    return CaseFiles("tiny", gt, None, prediction, points)


def test_missing_prediction_scores_as_empty(tmp_path: Path) -> None:
    record = score_case(tiny_files(tmp_path, None))
    assert record["status"].startswith("missing prediction")
    assert record["dice"] == 0.0 and record["id_rate"] == 0.0
    d = record["penalty_mm"]
    assert d == pytest.approx(penalty_mm(Geometry.of(synthetic_case())))
    assert record["hd95"] == record["hd"] == record["localisation_mm"] == d
    assert record["hd95_matched"] == record["localisation_matched_mm"] == d  # over nothing: left out of aggregates
    assert record["hd_missing"] == record["vertebrae"] == 3


def test_truncated_mha_is_unreadable(tmp_path: Path) -> None:
    good = write(tmp_path, synthetic_case())
    data = good.read_bytes()
    (tmp_path / "cut.mha").write_bytes(data[: len(data) // 2])
    record = score_case(tiny_files(tmp_path, tmp_path / "cut.mha"))
    assert record["status"].startswith("unreadable prediction")
    assert record["dice"] == 0.0 and record["hd_missing"] == 3


def test_float_pixel_type_with_integral_values_is_accepted(tmp_path: Path) -> None:
    pred = write(tmp_path, sitk.Cast(synthetic_case(), sitk.sitkFloat32))
    record = score_case(tiny_files(tmp_path, pred))
    assert record["dice"] == 1.0
    assert "pixel type 32-bit float accepted" in record["status"]


def test_signed_pixel_type_is_accepted(tmp_path: Path) -> None:
    pred = write(tmp_path, sitk.Cast(synthetic_case(), sitk.sitkInt16))
    record = score_case(tiny_files(tmp_path, pred))
    assert record["dice"] == 1.0 and "16-bit signed integer" in record["status"]


def test_non_integral_float_is_unreadable(tmp_path: Path) -> None:
    image = sitk.Cast(synthetic_case(), sitk.sitkFloat32)
    pred = write(tmp_path, image * 0.5)
    record = score_case(tiny_files(tmp_path, pred))
    assert record["status"].startswith("unreadable prediction") and "non-integral" in record["status"]
    assert record["dice"] == 0.0


def test_values_outside_0_28_are_dropped(tmp_path: Path) -> None:
    image = synthetic_case()
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    array[0, :2, :2] = 200
    array[-1, :1, :3] = -3
    pred = write(tmp_path, with_array(image, array))
    record = score_case(tiny_files(tmp_path, pred))
    assert record["dice"] == 1.0 and record["false_positive_labels"] == 0
    assert "dropped 7 voxels with values outside 0..28 (-3, 200)" in record["status"]


def test_prediction_on_another_grid_is_resampled(tmp_path: Path) -> None:
    image = synthetic_case(spacing=(1.0, 1.0, 2.0))
    # the same label map at half the slice thickness: every slice twice
    fine = np.repeat(sitk.GetArrayFromImage(image), 2, axis=0)
    geometry = Geometry.of(image)
    fine_geometry = Geometry(size=(geometry.size[0], geometry.size[1], 2 * geometry.size[2]),
                             spacing_mm=(1.0, 1.0, 1.0),
                             origin_mm=(geometry.origin_mm[0], geometry.origin_mm[1], geometry.origin_mm[2] - 0.5),
                             direction=geometry.direction)
    pred = write(tmp_path, image_from_array(fine, fine_geometry))
    record = score_case(tiny_files(tmp_path, pred))
    assert "resampled" in record["status"]
    assert record["dice"] == 1.0 and record["id_rate"] == 1.0


def test_empty_prediction_mask(tmp_path: Path) -> None:
    image = synthetic_case()
    pred = write(tmp_path, with_array(image, np.zeros_like(sitk.GetArrayFromImage(image))))
    record = score_case(tiny_files(tmp_path, pred))
    assert record["dice"] == 0.0 and record["id_rate"] == 0.0 and record["hd_missing"] == 3
    assert record["hd95"] == record["penalty_mm"] and "no points file" in record["status"]


def test_empty_ground_truth_mask(tmp_path: Path) -> None:
    image = synthetic_case()
    gt = write(tmp_path, with_array(image, np.zeros_like(sitk.GetArrayFromImage(image))), "gt.nii.gz")
    record = score_case(CaseFiles("empty", gt, None, write(tmp_path, image), None))
    assert record["vertebrae"] == 0 and record["status"].startswith("empty ground truth")
    assert record["false_positive_labels"] == 3
    assert aggregate({"empty": record})["dice"]["count"] == 0


def test_points_json_is_preferred_to_mask_centres(tmp_path: Path) -> None:
    image = synthetic_case()
    geometry = Geometry.of(image)
    far = geometry.index_to_world([0, 0, 0])
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"name": "Vertebra centroids", "type": "Multiple points", "version":
                                  {"major": 1, "minor": 0}, "points": [{"name": "L1", "point": list(far)}]}))
    record = score_case(tiny_files(tmp_path, write(tmp_path, image), points))
    assert record["dice"] == 1.0
    assert record["per_vertebra"]["L1"]["identified"] is False
    l2 = record["per_vertebra"]["L2"]  # a vertebra the points leave out keeps its mask's centre of mass
    assert l2["localised"] is True and l2["identified"] is True and l2["distance_mm"] == pytest.approx(0.0, abs=1e-9)
    assert record["localised"] == 3
    assert "points lack L2, L3: the mask's centres of mass used" in record["status"]
    assert "ground truth has no centroid file" in record["status"]


def test_malformed_points_json_falls_back_to_mask_centres(tmp_path: Path) -> None:
    points = tmp_path / "points.json"
    points.write_text('{"points": [{"name": "L1", "point": [1, 2]}]}')
    record = score_case(tiny_files(tmp_path, write(tmp_path, synthetic_case()), points))
    assert record["id_rate"] == 1.0 and "invalid points, scored as absent" in record["status"]
    assert str(tmp_path) not in record["status"] and "points.json: point 0 is malformed" in record["status"]
    points.write_text("{not json")
    record = score_case(tiny_files(tmp_path, write(tmp_path, synthetic_case()), points))
    assert record["id_rate"] == 1.0 and "unreadable points, scored as absent" in record["status"]


def test_unknown_point_names_are_ignored(tmp_path: Path) -> None:
    image = synthetic_case()
    geometry = Geometry.of(image)
    array = sitk.GetArrayFromImage(image)
    centres = {v: geometry.index_to_world(np.argwhere(array == v).mean(axis=0)[::-1]) for v in (20, 21, 22)}
    points = tmp_path / "points.json"
    doc = {"name": "x", "type": "Multiple points", "version": {"major": 1, "minor": 0},
           "points": [{"name": name_of(v), "point": list(p)} for v, p in centres.items()]
           + [{"name": "vertebra-x", "point": [0, 0, 0]}]}
    points.write_text(json.dumps(doc))
    record = score_case(tiny_files(tmp_path, write(tmp_path, image), points))
    assert record["id_rate"] == 1.0 and record["localisation_mm"] == pytest.approx(0.0, abs=1e-6)
    assert "ignored 1 points with unknown names ('vertebra-x')" in record["status"]


def test_verse_centroid_json_as_prediction_points(tmp_path: Path) -> None:
    image = synthetic_case()
    geometry = Geometry.of(image)
    array = sitk.GetArrayFromImage(image)
    centres = {v: geometry.index_to_world(np.argwhere(array == v).mean(axis=0)[::-1]) for v in (20, 21, 22)}
    ctd = write_centroid_json(tmp_path / "pred_ctd.json", centres, geometry)
    record = score_case(tiny_files(tmp_path, write(tmp_path, image), ctd))
    assert record["id_rate"] == 1.0 and record["localisation_mm"] < 0.01


def test_an_exception_inside_a_case_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_files(tmp_path, write(tmp_path, synthetic_case()))
    real = score.score_label_maps

    def flaky(reference, prediction, geometry, **kwargs):
        if prediction is not None:
            raise RuntimeError("boom")
        return real(reference, prediction, geometry, **kwargs)

    monkeypatch.setattr(score, "score_label_maps", flaky)
    record = score_case(files)
    assert record["status"].startswith("error: RuntimeError: boom")
    assert record["vertebrae"] == 3 and record["dice"] == 0.0


def test_ground_truth_centroids_lacking_a_label_fall_back_to_the_mask(tmp_path: Path) -> None:
    image = synthetic_case()
    geometry = Geometry.of(image)
    gt = write(tmp_path, image, "gt_seg-vert_msk.nii.gz")
    ctd = write_centroid_json(tmp_path / "gt_ctd.json", {20: geometry.index_to_world([8, 7, 12])}, geometry)
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"name": "Vertebra centroids", "type": "Multiple points", "version":
                                  {"major": 1, "minor": 0}, "points": [
                                      {"name": name_of(v), "point": list(geometry.index_to_world(ijk))}
                                      for v, ijk in ((20, [8, 7, 12]), (21, [7.5, 6.5, 7.5]), (22, [7.5, 6.5, 2.5]))]}))
    record = score_case(CaseFiles("tiny", gt, ctd, write(tmp_path, image), points))
    assert record["id_rate"] == 1.0 and record["localisation_mm"] == pytest.approx(0.0, abs=1e-9)
    assert record["status"] == "ground-truth centroids lack L2, L3: the mask's centres of mass used"


@pytest.mark.parametrize("name", ["pred.mha", "pred.nii.gz", "pred.nii"])
def test_nan_in_a_float_prediction_is_unreadable(tmp_path: Path, name: str) -> None:
    """Regression: a NIfTI prediction's NaN voxels read as 0 (ITK) and scored as background."""
    array = sitk.GetArrayFromImage(synthetic_case()).astype(np.float32)
    array[0, 0, 0] = np.nan
    array[0, 0, 1] = np.inf
    record = score_case(tiny_files(tmp_path, write(tmp_path, with_array(synthetic_case(), array), name)))
    assert record["status"].startswith("unreadable prediction: prediction has 2 NaN or infinite voxels")
    assert record["dice"] == 0.0 and record["hd95"] == record["penalty_mm"]


def test_unreadable_ground_truth_is_an_error_record(tmp_path: Path) -> None:
    (tmp_path / "gt.nii.gz").write_bytes(b"garbage")
    record = score_case(CaseFiles("bad", tmp_path / "gt.nii.gz", None, None, None))
    assert record["status"].startswith("error") and record["vertebrae"] == 0


# --------------------------------------------------------------------------- aggregates


def test_aggregates_with_no_scored_case_are_zero_with_count_zero() -> None:
    agg = aggregate({})
    assert agg["dice"] == {"mean": 0.0, "std": 0.0, "median": 0.0, "min": 0.0, "max": 0.0, "count": 0}
    assert agg["id_rate_total"] == 0.0 and agg["per_region"]["lumbar"]["dice"]["count"] == 0
    assert set(agg["per_label"]) == {name_of(v) for v in (*range(1, 26), 28)}


def test_statistics() -> None:
    assert statistics([1.0, 2.0, 3.0, 10.0]) == {"mean": 4.0, "std": pytest.approx(3.5355339), "median": 2.5,
                                                 "min": 1.0, "max": 10.0, "count": 4}


def test_no_case_drops_out_of_a_ranked_aggregate(tmp_path: Path) -> None:
    perfect = score_case(tiny_files(tmp_path, write(tmp_path, synthetic_case())))
    missing = score_case(tiny_files(tmp_path, None))
    d = missing["penalty_mm"]
    agg = aggregate({"a": perfect, "b": missing})
    assert agg["dice"]["mean"] == 0.5 and agg["dice"]["count"] == 2
    for ranked in ("hd95", "hd", "localisation_mm"):
        assert agg[ranked]["mean"] == pytest.approx(d / 2) and agg[ranked]["count"] == 2
    for matched in ("hd95_matched", "hd_matched", "localisation_matched_mm"):  # VerSe's: misses left out
        assert agg[matched]["mean"] == 0.0 and agg[matched]["count"] == 1
    assert agg["per_label"]["L1"]["hd95"]["mean"] == pytest.approx(d / 2)
    assert agg["id_rate_total"] == 0.5 and agg["vertebrae_total"] == 6
    assert agg["cases"]["missing_prediction"] == 1
    assert agg["per_label"]["L1"]["id_rate"]["mean"] == 0.5
    assert agg["per_region"]["lumbar"]["dice"]["count"] == 6


# --------------------------------------------------------------------------- discovery


def test_ground_truth_discovery_with_nested_files_and_centroids(tmp_path: Path) -> None:
    root = make_ground_truth(tmp_path / "gt", [(CASE, sample_mask(), sample_centroids()),
                                               ("sub-tiny001_dir-ax", synthetic_case(), None)], suffix=".nii.gz")
    (root / "derivatives" / "sub-tiny001_dir-ax" / "sub-tiny001_dir-ax_seg-vb_ctd.json").write_text("[]")
    found = find_ground_truth(root)
    assert sorted(found) == sorted([CASE, "sub-tiny001_dir-ax"])
    assert found[CASE].centroids is not None and found[CASE].centroids.name.endswith("_ctd.json")
    assert found["sub-tiny001_dir-ax"].centroids is not None


# --------------------------------------------------------------------------- GC mode end to end


@pytest.mark.parametrize("variant", ["socket", "interface"])
def test_gc_mode_end_to_end(tmp_path: Path, variant: str) -> None:
    gt = make_ground_truth(tmp_path / "gt", [(CASE, sample_mask(), sample_centroids()),
                                             ("sub-tiny001", synthetic_case(), None),
                                             ("sub-nojob001", synthetic_case(), None)], suffix=".mha")
    image = read_image(sample_mask())
    centroids = read_centroids_mm(sample_centroids(), Geometry.of(image))
    points = [Point(name_of(v), tuple(p), 0.9) for v, p in centroids.items()]
    inp = make_evaluation_input(tmp_path / "input", [
        (f"{CASE}_ct.nii.gz", sitk.Cast(image, sitk.sitkUInt8), points),
        ("sub-tiny001.mha", synthetic_case(), None),
        ("sub-other999_ct.mha", synthetic_case(), None),
    ], variant=variant)
    out = tmp_path / "out" / "metrics.json"
    assert run_cli("--input", inp, "--ground-truth", gt, "--output", out, "--no-progress") == 0
    doc = check_document(out)
    assert set(doc["case"]) == {CASE, "sub-tiny001", "sub-nojob001"}
    real = doc["case"][CASE]
    assert real["dice"] == 1.0 and real["id_rate"] == 1.0 and real["hd95"] == 0.0 and real["status"] == "ok"
    assert real["localisation_mm"] == pytest.approx(0.0, abs=1e-6)
    assert doc["case"]["sub-tiny001"]["dice"] == 1.0
    assert doc["case"]["sub-nojob001"]["status"].startswith("missing prediction")
    assert [u["image_name"] for u in doc["unmatched_predictions"]] == ["sub-other999_ct.mha"]
    assert doc["aggregates"]["cases"] == {"total": 3, "scored": 3, "missing_prediction": 1,
                                          "unreadable_prediction": 0, "error": 0, "without_points": 1,
                                          "unusable_points": 0, "resampled": 0}
    assert doc["aggregates"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert doc["aggregates"]["hd95"]["count"] == 3 and doc["aggregates"]["hd95_matched"]["count"] == 2


def test_gc_mode_job_without_segmentation_and_with_bad_points(tmp_path: Path) -> None:
    gt = make_ground_truth(tmp_path / "gt", [("sub-tiny001", synthetic_case(), None),
                                             ("sub-tiny002", synthetic_case(), None)])
    data = write_image(synthetic_case(), tmp_path / "x.mha").read_bytes()
    inp = make_evaluation_input(tmp_path / "input", [("sub-tiny001_ct.mha", None, None),
                                                     ("sub-tiny002_ct.mha", data[:200], "{broken")])
    out = tmp_path / "metrics.json"
    assert run_cli("--input", inp, "--ground-truth", gt, "--output", out, "--no-progress") == 0
    doc = check_document(out)
    assert doc["case"]["sub-tiny001"]["status"].startswith("missing prediction: no image in job")
    assert doc["case"]["sub-tiny002"]["status"].startswith("unreadable prediction")
    assert doc["aggregates"]["cases"]["unreadable_prediction"] == 1


def test_gc_mode_with_two_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [(f"sub-tiny{i:03d}", synthetic_case(), None) for i in range(3)]
    gt = make_ground_truth(tmp_path / "gt", cases)
    shifted = synthetic_case()
    shifted = with_array(shifted, np.roll(sitk.GetArrayFromImage(shifted), 1, axis=0))
    inp = make_evaluation_input(tmp_path / "input", [(f"{c}_ct.mha", shifted, None) for c, _, _ in cases])
    monkeypatch.setenv("GRAND_CHALLENGE_MAX_WORKERS", "1")
    assert run_cli("--input", inp, "--ground-truth", gt, "--output", tmp_path / "one.json", "--no-progress") == 0
    monkeypatch.setenv("GRAND_CHALLENGE_MAX_WORKERS", "2")
    assert run_cli("--input", inp, "--ground-truth", gt, "--output", tmp_path / "two.json", "--no-progress") == 0
    one, two = check_document(tmp_path / "one.json"), check_document(tmp_path / "two.json")
    assert one == two
    assert one["aggregates"]["dice"]["mean"] == pytest.approx(0.75)


def test_malformed_predictions_json_exits_2_without_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt = make_ground_truth(tmp_path / "gt", [("sub-tiny001", synthetic_case(), None)])
    inp = tmp_path / "input"
    inp.mkdir()
    out = tmp_path / "metrics.json"
    for text in ("[{not json", '{"pk": 1}', '[{"inputs": []}]'):
        (inp / "predictions.json").write_text(text)
        capsys.readouterr()
        assert run_cli("--input", inp, "--ground-truth", gt, "--output", out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "predictions.json" in err[0], err
        assert not out.exists()


def test_missing_predictions_json_exits_2(tmp_path: Path, tiny_gt: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "metrics.json"
    assert run_cli("--input", tmp_path / "nothing", "--ground-truth", tiny_gt, "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predictions.json: no such file" in err[0] and not out.exists()


@pytest.mark.parametrize("make", ["empty", "absent", "no masks"])
def test_empty_or_missing_ground_truth_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture, make: str) -> None:
    inp = make_evaluation_input(tmp_path / "input", [("sub-tiny001_ct.mha", synthetic_case(), None)])
    gt = tmp_path / "gt"
    if make != "absent":
        gt.mkdir()
    if make == "no masks":
        (gt / "readme.txt").write_text("nothing here")
    out = tmp_path / "metrics.json"
    assert run_cli("--input", inp, "--ground-truth", gt, "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(gt) in err[0] and not out.exists()


# --------------------------------------------------------------------------- folder mode end to end


def test_folder_mode_with_points_ctd_and_report(tmp_path: Path) -> None:
    gt = make_ground_truth(tmp_path / "gt", [(CASE, sample_mask(), sample_centroids()),
                                             ("sub-tiny001", synthetic_case(), None),
                                             ("sub-tiny002", synthetic_case(), None)])
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copyfile(sample_mask(), pred / f"{CASE}_seg-vert_msk.nii.gz")
    shutil.copyfile(sample_centroids(), pred / f"{CASE}_seg-subreg_ctd.json")
    write_image(synthetic_case(), pred / "sub-tiny001_seg-vert_msk.nii.gz")
    (pred / "sub-tiny001_points.json").write_text(json.dumps(
        {"type": "Multiple points", "points": [{"name": "L1", "point": [0, 0, 0]}]}))
    write_image(synthetic_case(), pred / "sub-extra001_seg-vert_msk.nii.gz")
    out = tmp_path / "metrics.json"
    report = tmp_path / "report"
    assert run_cli("folders", "--predictions", pred, "--ground-truth", gt, "--output", out, "--report", report,
                   "--no-progress", "-v") == 0
    doc = check_document(out)
    assert doc["case"][CASE]["dice"] == 1.0 and doc["case"][CASE]["localisation_mm"] < 1e-6
    tiny = doc["case"]["sub-tiny001"]  # its one point is far off; L2, L3 keep their masks' centres of mass
    assert tiny["id_rate"] == pytest.approx(2 / 3) and tiny["per_vertebra"]["L1"]["identified"] is False
    assert doc["case"]["sub-tiny002"]["status"].startswith("missing prediction")
    assert doc["unmatched_predictions"][0]["case"] == "sub-extra001"
    page = (report / "index.html").read_text()
    assert "per_vertebra.png" in page and CASE in page
    for png in ("per_vertebra.png", "per_region.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_folder_mode_missing_predictions_folder_exits_2(tmp_path: Path, tiny_gt: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.json"
    assert run_cli("folders", "--predictions", tmp_path / "none", "--ground-truth", tiny_gt, "--output", out) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()


def test_case_ids_with_dots_are_written_without_dots(tmp_path: Path) -> None:
    gt = make_ground_truth(tmp_path / "gt", [("sub-a.b", synthetic_case(), None)], nested=False)
    pred = tmp_path / "pred"
    pred.mkdir()
    write_image(synthetic_case(), pred / "sub-a.b_seg-vert_msk.nii.gz")
    out = tmp_path / "m.json"
    assert run_cli("folders", "--predictions", pred, "--ground-truth", gt, "--output", out, "--no-progress") == 0
    assert check_document(out)["case"]["sub-a_b"]["dice"] == 1.0


def test_module_help_and_console_entry(tmp_path: Path) -> None:
    root = HERE.parent
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([sys.executable, "-m", "evaluation", "--help"], capture_output=True, text=True,
                            cwd=root, env=env, timeout=60)
    assert result.returncode == 0 and "folders" in result.stdout and "gc" in result.stdout
    result = subprocess.run([sys.executable, "-m", "evaluation", "folders", "--help"], capture_output=True,
                            text=True, cwd=root, env=env, timeout=60)
    assert result.returncode == 0 and "--predictions" in result.stdout


def run_evaluator(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluation", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=HERE.parent)


def test_unreadable_predictions_get_one_warning_line_each(tmp_path: Path) -> None:
    """Regression: an unreadable or truncated prediction was only visible inside metrics.json."""
    gt = make_ground_truth(tmp_path / "gt", [(f"sub-tiny00{n}", synthetic_case(), None) for n in (1, 2, 3)])
    pred = tmp_path / "pred"
    good = write_image(synthetic_case(), pred / "sub-tiny001_seg-vert_msk.nii.gz")
    (pred / "sub-tiny002_seg-vert_msk.nii.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (pred / "sub-tiny003_seg-vert_msk.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "m.json"
    done = run_evaluator("folders", "--predictions", pred, "--ground-truth", gt, "--output", out)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    warnings = sorted(line for line in done.stderr.splitlines() if line.startswith("WARNING"))
    assert len(warnings) == 3, done.stderr
    assert "sub-tiny001: no points file" in warnings[0]
    assert "sub-tiny002: unreadable prediction" in warnings[1]
    assert "sub-tiny003: unreadable prediction" in warnings[2]
    assert "2 unreadable predictions" in done.stderr
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal


def test_verbose_report_keeps_third_party_loggers_quiet(tmp_path: Path, tiny_gt: Path) -> None:
    """Regression: -v printed ~600 matplotlib.font_manager debug lines."""
    pred = tmp_path / "pred"
    write_image(synthetic_case(), pred / "sub-tiny001_seg-vert_msk.nii.gz")
    done = run_evaluator("folders", "--predictions", pred, "--ground-truth", tiny_gt, "--output", tmp_path / "m.json",
                         "--report", tmp_path / "report", "-v")
    assert done.returncode == 0, done.stderr
    assert "DEBUG evaluation" in done.stderr  # ours do debug
    assert [line for line in done.stderr.splitlines() if "matplotlib" in line or "PIL" in line] == []


def _scoring_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any scoring fail the test: the output must be checked before it."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a case was scored before the output was checked")
    monkeypatch.setattr(cli, "evaluate_cases", refuse)


@pytest.mark.parametrize("flag", ["--output", "--report"])
def test_output_under_a_file_is_one_line_before_any_work(tmp_path: Path, tiny_gt: Path, flag: str,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A path under a regular file cannot be written by anyone, root included."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = {"--output": tmp_path / "m.json", "--report": tmp_path / "report"}
    args[flag] = blocker / "below" / ("m.json" if flag == "--output" else "")
    _scoring_refused(monkeypatch)
    assert run_cli("folders", "--predictions", tmp_path, "--ground-truth", tiny_gt,
                   *(x for pair in args.items() for x in pair)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the output" in err[0] and f"{blocker} is a file, not a folder" in err[0]
    assert not (tmp_path / "m.json").exists()


def test_output_that_is_a_folder_is_refused(tmp_path: Path, tiny_gt: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "folder.json"
    folder.mkdir()
    _scoring_refused(monkeypatch)
    assert run_cli("folders", "--predictions", tmp_path, "--ground-truth", tiny_gt, "--output", folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder, not a file" in err[0]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only (chmod 555) folder: covered by the path-under-a-file test")
def test_read_only_output_folder_is_one_line_before_any_work(tmp_path: Path, tiny_gt: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 20): an unwritable /output was found only after scoring, as a 28-line traceback."""
    locked = tmp_path / "output"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _scoring_refused(monkeypatch)
        assert run_cli("folders", "--predictions", tmp_path, "--ground-truth", tiny_gt, "--output",
                       locked / "metrics.json") == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write in" in err[0] and "Permission denied" in err[0]


def test_gc_default_output_is_checked_too(tmp_path: Path, tiny_gt: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """GC mode's default /output/metrics.json (no --output given) is checked like an explicit one."""
    blocker = tmp_path / "output"
    blocker.write_text("a file where /output should be a folder")
    monkeypatch.setattr(cli, "EvaluationLayout", functools.partial(EvaluationLayout,
                                                                    metrics_path=blocker / "metrics.json"))
    _scoring_refused(monkeypatch)
    inp = make_evaluation_input(tmp_path / "input", [("sub-tiny001_ct.mha", synthetic_case(), None)])
    assert run_cli("--input", inp, "--ground-truth", tiny_gt) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker / "metrics.json") in err[0]


def test_existing_outputs_are_overwritten(tmp_path: Path, tiny_gt: Path) -> None:
    pred = tmp_path / "pred"
    write_image(synthetic_case(), pred / "sub-tiny001_seg-vert_msk.nii.gz")
    existing = tmp_path / "again.json"
    for _ in range(2):  # an existing metrics file and report folder are overwritten, not refused
        assert run_cli("folders", "--predictions", pred, "--ground-truth", tiny_gt, "--output", existing,
                       "--report", tmp_path / "report", "--no-progress") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".write-probe")]


# --------------------------------------------------------------------------- one stderr line per affected case


def _problem_case(folder: Path, problem: str) -> tuple[Path, Path]:
    """Ground truth (mask + annotated centroids) and a prediction folder with one problem of one case."""
    image = synthetic_case()
    geometry = Geometry.of(image)
    array = sitk.GetArrayFromImage(image)
    centres = {v: geometry.index_to_world(np.argwhere(array == v).mean(axis=0)[::-1]) for v in (20, 21, 22)}
    gt = make_ground_truth(folder / "gt", [("sub-tiny001", image, centres)])
    pred = folder / "pred"
    mask = pred / "sub-tiny001_seg-vert_msk.nii.gz"
    points = pred / "sub-tiny001_points.json"
    pred.mkdir(parents=True)
    if problem != "missing prediction":
        write_image(image, mask)
        points.write_text(json.dumps(points_document([Point(name_of(v), tuple(p), 1.0) for v, p in centres.items()])))
    if problem == "unreadable mask":
        mask.write_bytes(mask.read_bytes()[:100])
    elif problem == "unreadable points":
        points.write_text("{not json")
    elif problem == "invalid points":
        points.write_text('{"type": "Multiple points", "points": [{"name": "L1", "point": [1, 2]}]}')
    elif problem == "no points file":
        points.unlink()
    elif problem == "resampled":
        coarse = Geometry(size=(8, 7, 9), spacing_mm=(2.0, 2.0, 4.0), origin_mm=geometry.origin_mm,
                          direction=geometry.direction)
        write_image(resample_onto(image, coarse, nearest=True), mask)
    return gt, pred


PROBLEM_LINES = {
    "missing prediction": "sub-tiny001: missing prediction: no sub-tiny001_seg-vert_msk image in the predictions "
                          "folder",
    "unreadable mask": "sub-tiny001: unreadable prediction: sub-tiny001_seg-vert_msk.nii.gz: ",
    "unreadable points": "sub-tiny001: unreadable points, scored as absent, the mask's centres of mass used "
                         "(sub-tiny001_points.json: Expecting property name",
    "invalid points": "sub-tiny001: invalid points, scored as absent, the mask's centres of mass used "
                      "(sub-tiny001_points.json: point 0 is malformed",
    "no points file": "sub-tiny001: no points file: the mask's centres of mass used",
    "resampled": "sub-tiny001: prediction resampled (nearest neighbour) from 8x7x9 voxels of 2x2x4 mm onto the "
                 "ground truth's 16x14x17 voxels of 1x1x2 mm",
}


@pytest.mark.parametrize("problem", list(PROBLEM_LINES))
def test_each_problem_is_one_stderr_line_naming_the_case(tmp_path: Path, problem: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Regression (issue 20): a missing prediction, a broken points file or a resampled prediction
    printed nothing; an organiser reads stderr, not every metrics.json."""
    gt, pred = _problem_case(tmp_path, problem)
    out = tmp_path / "m.json"
    assert run_cli("folders", "--predictions", pred, "--ground-truth", gt, "--output", out, "--no-progress") == 0
    lines = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("WARNING evaluation.run: " + PROBLEM_LINES[problem]), warnings[0]
    assert str(tmp_path) not in warnings[0]  # file names, not the organiser's folders
    assert lines[-1].startswith("INFO evaluation: wrote") and lines.index(warnings[0]) < len(lines) - 1
    record = check_document(out)["case"]["sub-tiny001"]
    assert PROBLEM_LINES[problem].split(": ", 1)[1] in record["status"]


def test_a_case_without_problems_prints_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt, pred = _problem_case(tmp_path, "none")
    assert run_cli("folders", "--predictions", pred, "--ground-truth", gt, "--output", tmp_path / "m.json",
                   "--no-progress") == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")] == []
    record = check_document(tmp_path / "m.json")["case"]["sub-tiny001"]
    assert record["status"] == "ok" and record["localisation_mm"] < 1e-6


EXAMPLE = HERE.parent / "examples" / "totalsegmentator-example"


def test_folder_mode_pairs_the_bundled_example(tmp_path: Path) -> None:
    """The bundled example's unprefixed ground truth pairs with predict's ct_* outputs."""
    found = find_ground_truth(EXAMPLE)
    assert list(found) == ["ct"] and found["ct"].centroids == EXAMPLE / "seg-vert_ctd.json"
    pred = tmp_path / "out"
    pred.mkdir()
    shutil.copyfile(EXAMPLE / "seg-vert_msk.nii.gz", pred / "ct_seg-vert_msk.nii.gz")
    out = tmp_path / "m.json"
    assert run_cli("folders", "--predictions", pred, "--ground-truth", EXAMPLE, "--output", out, "--no-progress") == 0
    case = check_document(out)["case"]["ct"]
    assert case["dice"] == 1.0 and case["vertebrae"] == 7 and case["id_rate"] == 1.0


@pytest.mark.slow
def test_readme_accuracy_row_of_the_bundled_example_is_reproducible(tmp_path: Path) -> None:
    """Runs the README's two commands and compares Dice and id rate with its table."""
    root = HERE.parent
    row = next(line for line in (root / "README.md").read_text().splitlines()
               if line.startswith("| `examples/totalsegmentator-example`"))
    cells = [c.strip() for c in row.split("|")[1:]]
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "algorithm", "predict", str(EXAMPLE / "ct.nii.gz"), "--output", str(out),
                    "-q"], check=True, cwd=root, timeout=600)
    done = run_evaluator("folders", "--predictions", out, "--ground-truth", EXAMPLE, "--output", out / "m.json")
    assert done.returncode == 0, done.stderr
    case = check_document(out / "m.json")["case"]["ct"]
    assert f"{case['dice']:.2f}" == cells[1]
    assert cells[2].startswith(f"{case['id_rate']:.2f} ({case['hits']} of {case['vertebrae']})")
    assert cells[3].startswith(f"{case['localisation_mm']:.1f} mm; {case['localisation_matched_mm']:.1f} mm")


# --------------------------------------------------------------------------- the Centroids rule on both paths


@pytest.mark.parametrize("mode", ["gc", "folders"])
def test_leaving_out_or_breaking_points_never_pays(tmp_path: Path, mode: str) -> None:
    """Regression (issue 20): the same real mask with a broken points file scored 0.87 mm where
    good points scored 9.57 mm (both sides fell back to centres of mass). Now absent and broken
    points score alike, against the annotated centroids, and good points score best."""
    image = read_image(sample_mask())
    geometry = Geometry.of(image)
    annotated = read_centroids_mm(sample_centroids(), geometry)
    good = [Point(name_of(v), tuple(p), 1.0) for v, p in annotated.items()]
    variants = {"absent": None, "broken": "{not json", "invalid": {"points": "L1"}, "good": good}
    gt = make_ground_truth(tmp_path / "gt", [(f"sub-v{name}", sample_mask(), sample_centroids())
                                             for name in variants])
    out = tmp_path / "m.json"
    if mode == "gc":
        inp = make_evaluation_input(tmp_path / "input", [(f"sub-v{name}_ct.nii.gz", sitk.Cast(image, sitk.sitkUInt8),
                                                          points) for name, points in variants.items()])
        assert run_cli("--input", inp, "--ground-truth", gt, "--output", out, "--no-progress") == 0
    else:
        pred = tmp_path / "pred"
        pred.mkdir()
        for name, points in variants.items():
            write_image(sitk.Cast(image, sitk.sitkUInt8), pred / f"sub-v{name}_seg-vert_msk.nii.gz")
            if isinstance(points, str):
                (pred / f"sub-v{name}_points.json").write_text(points)
            elif isinstance(points, dict):
                (pred / f"sub-v{name}_points.json").write_text(json.dumps(points))
            elif points is not None:
                (pred / f"sub-v{name}_points.json").write_text(json.dumps(points_document(points)))
        assert run_cli("folders", "--predictions", pred, "--ground-truth", gt, "--output", out, "--no-progress") == 0
    doc = check_document(out)
    record = {name: doc["case"][f"sub-v{name}"] for name in variants}

    def scores(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k != "status"}

    assert scores(record["broken"]) == scores(record["absent"]) == scores(record["invalid"])
    assert "no points file" in record["absent"]["status"]
    assert "unreadable points, scored as absent" in record["broken"]["status"]
    assert "invalid points, scored as absent" in record["invalid"]["status"]
    assert record["good"]["status"] == "ok" and record["good"]["localisation_mm"] == pytest.approx(0.0, abs=1e-6)
    assert record["absent"]["localisation_mm"] > 5.0  # centres of mass against the annotated body centres
    assert record["good"]["localisation_mask_mm"] == record["absent"]["localisation_mask_mm"] == pytest.approx(0.0)
    assert doc["aggregates"]["localisation_mask_mm"]["count"] == 4
    assert doc["aggregates"]["cases"]["without_points"] == 1 and doc["aggregates"]["cases"]["unusable_points"] == 2

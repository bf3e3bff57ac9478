"""VerSe names and centroid JSON, Grand Challenge sockets and points, model metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_support import shared_data

from spine import gc
from spine.image import Geometry, array_of, read_image
from spine.modelmeta import Intensity, ModelMeta, ModelMetaError
from spine.verse import (
    CentroidFileError,
    case_id_of,
    parse_verse_name,
    read_centroid_json,
    read_centroids_mm,
    write_centroid_json,
)

REPO = Path(__file__).resolve().parents[1]
VERSE004 = REPO / "test" / "data" / "verse-sub-verse004"


@pytest.mark.parametrize(("name", "case"), [
    ("sub-verse004_ct.nii.gz", "sub-verse004"),
    ("sub-verse004_seg-vert_msk.nii.gz", "sub-verse004"),
    ("sub-verse004_seg-subreg_ctd.json", "sub-verse004"),
    ("sub-gl003_dir-ax_seg-vb_ctd.json", "sub-gl003_dir-ax"),
    ("sub-gl003_dir-ax_ct.nii.gz", "sub-gl003_dir-ax"),
    ("verse014.nii.gz", "verse014"),
    ("3f9c2a1e-7a1b-4b8e-9d1c-0e5f.mha", "3f9c2a1e-7a1b-4b8e-9d1c-0e5f"),
    ("case_ct.nrrd", "case"),
])
def test_case_ids(name: str, case: str) -> None:
    assert case_id_of(name) == case


def test_parse_verse_name() -> None:
    parsed = parse_verse_name("sub-gl003_dir-ax_seg-vert_msk.nii.gz")
    assert parsed is not None
    fields = (parsed.subject, parsed.seg, parsed.suffix, parsed.case_id)
    assert fields == ("sub-gl003", "vert", "msk", "sub-gl003_dir-ax")
    assert parse_verse_name("verse014.nii.gz") is None


def test_annotated_verse004_centroids_lie_inside_their_labels() -> None:
    mask = read_image(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz")
    geometry = Geometry.of(mask)
    centroids = read_centroids_mm(VERSE004 / "sub-verse004_seg-subreg_ctd.json", geometry)
    assert sorted(centroids) == list(range(16, 25))
    labels = array_of(mask)
    for label, point in centroids.items():
        i, j, k = np.round(geometry.world_to_index(point)).astype(int)
        assert labels[k, j, i] == label, f"centroid of {label} falls on {labels[k, j, i]}"


def test_centroid_json_written_for_a_reoriented_copy_maps_back(tmp_path: Path) -> None:
    """A JSON in another orientation's voxel indices converts with size - 1 - c flips."""
    mask = read_image(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz")
    truth = read_centroids_mm(VERSE004 / "sub-verse004_seg-subreg_ctd.json", Geometry.of(mask))
    for code in ("RAS", "LPS", "SAR", "IPL"):
        turned = sitk.DICOMOrient(mask, code)  # ITK codes name where axes come FROM; any permutation will do
        path = write_centroid_json(tmp_path / f"{code}.json", truth, Geometry.of(turned), decimals=6)
        codes, _ = read_centroid_json(path)
        assert codes == Geometry.of(turned).orientation_codes()
        back = read_centroids_mm(path, Geometry.of(mask))  # read on the ORIGINAL image
        for label in truth:
            assert np.allclose(back[label], truth[label], atol=1e-3), (code, label)


def test_centroid_json_skips_nan_and_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[{"direction": ["L","P","S"]}, {"label": 20, "X": NaN, "Y": 1, "Z": 2}, '
                    '{"label": 21, "X": 1, "Y": 2, "Z": 3}]')
    codes, voxels = read_centroid_json(path)
    assert codes == ("L", "P", "S") and list(voxels) == [21]
    for text, match in [("{}", "list"), ("[{\"label\": 3}]", "malformed"), ("nope", "JSON"),
                        ('[{"label": 99, "X": 1, "Y": 1, "Z": 1}]', "unknown vertebra label")]:
        path.write_text(text)
        with pytest.raises(CentroidFileError, match=match):
            read_centroid_json(path)


def test_shared_totalsegmentator_centroids_lie_in_their_labels() -> None:
    folder = shared_data("totalsegmentator-example")
    mask = read_image(folder / "seg-vert_msk.nii.gz")
    geometry = Geometry.of(mask)
    labels = array_of(mask)
    for label, point in read_centroids_mm(folder / "seg-vert_ctd.json", geometry).items():
        i, j, k = np.round(geometry.world_to_index(point)).astype(int)
        assert labels[k, j, i] == label


def socket_value(slug: str, variant: str, **extra) -> dict:
    body = {"slug": slug, "kind": "Image", "relative_path": f"images/{slug}", "super_kind": "Image"}
    return {variant: body, **extra}


@pytest.mark.parametrize("variant", ["socket", "interface"])
def test_inputs_and_predictions_json_both_variants(tmp_path: Path, variant: str) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([socket_value("ct-image", variant, image={"name": "case7_ct.mha"})]))
    (value,) = gc.read_inputs_json(inputs)
    assert (value.slug, value.relative_path, value.image_name) == ("ct-image", "images/ct-image", "case7_ct.mha")
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{
        "pk": "abc", "status": "Succeeded",
        "inputs": [socket_value("ct-image", variant, image={"name": "case7_ct.mha"})],
        "outputs": [socket_value("vertebrae-segmentation", variant, image={"name": "output.mha"})],
    }]))
    (job,) = gc.read_predictions_json(predictions)
    assert job.pk == "abc" and job.input_image_name() == "case7_ct.mha"
    assert job.output("vertebrae-segmentation") is not None and job.output("nope") is None


def test_malformed_contract_files_raise_with_the_file_name(tmp_path: Path) -> None:
    bad = tmp_path / "predictions.json"
    for text in ("{", "{}", '[{"inputs": []}]', '[{"pk": 1, "inputs": [{"value": 1}]}]'):
        bad.write_text(text)
        with pytest.raises(gc.ContractError, match=r"predictions\.json"):
            gc.read_predictions_json(bad)
    with pytest.raises(gc.ContractError, match="no such file"):
        gc.read_inputs_json(tmp_path / "inputs.json")


def test_points_round_trip_with_exact_keys(tmp_path: Path) -> None:
    points = [gc.Point("L1", (1.0, 2.0, 3.5), 0.97), gc.Point("T13", (-4.0, 5.0, 6.0), 0.5)]
    path = gc.write_points(tmp_path / "points.json", points)
    document = json.loads(path.read_text())
    assert set(document) == {"name", "type", "points", "version"}
    assert document["type"] == "Multiple points" and document["version"] == {"major": 1, "minor": 0}
    assert all(set(p) == {"name", "point", "probability"} for p in document["points"])
    assert gc.read_points(path) == points
    centroids, unknown = gc.points_to_centroids([*points, gc.Point("spleen", (0, 0, 0))])
    assert sorted(centroids) == [20, 28] and unknown == ["spleen"]


def test_a_repeated_name_keeps_its_more_confident_point() -> None:
    points = [gc.Point("L1", (0.0, 0.0, 0.0), 0.4), gc.Point("L1", (0.0, 0.0, 30.0), 0.9),
              gc.Point("L1", (0.0, 0.0, 60.0), 0.9)]  # equal to the kept one: the first stays
    kept, unknown = gc.points_by_label(points)
    assert kept == {20: points[1]} and unknown == []
    centroids, _ = gc.points_to_centroids(points)
    np.testing.assert_array_equal(centroids[20], [0.0, 0.0, 30.0])


def test_points_reject_non_finite_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        gc.write_points(tmp_path / "p.json", [gc.Point("L1", (float("nan"), 0.0, 0.0))])
    with pytest.raises(ValueError, match="probability"):
        gc.write_points(tmp_path / "p.json", [gc.Point("L1", (0.0, 0.0, 0.0), 1.5)])
    assert not (tmp_path / "p.json").exists()
    (tmp_path / "q.json").write_text('{"points": [{"name": "L1", "point": [1, 2]}]}')
    with pytest.raises(gc.ContractError, match="malformed"):
        gc.read_points(tmp_path / "q.json")


def locate_meta(**changes) -> ModelMeta:
    fields = dict(stage="locate", spacing_zyx_mm=(2.0, 2.0, 2.0), patch_shape_zyx=(64, 64, 64),
                  input_channels=("ct",), channels=("C1", "L6", "T13"), heatmap_sigma_mm=4.0,
                  intensity=Intensity(-1000, 1500, 100, 500), trained_on="synthetic", version="1")
    fields.update(changes)
    return ModelMeta(**fields)


def test_model_meta_round_trips_through_string_props() -> None:
    meta = locate_meta()
    props = meta.to_props()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    assert ModelMeta.from_props(props) == meta
    assert meta.channel_labels == (1, 25, 28)


def test_model_meta_rejects_what_inference_cannot_use() -> None:
    with pytest.raises(ModelMetaError, match="stage"):
        locate_meta(stage="classify")
    with pytest.raises(ModelMetaError, match="vertebra name"):
        locate_meta(channels=("C1", "X9"))
    with pytest.raises(ModelMetaError, match="sigma"):
        locate_meta(heatmap_sigma_mm=0.0)
    with pytest.raises(ModelMetaError, match="spacing"):
        locate_meta(spacing_zyx_mm=(2.0, 0.0, 2.0))
    props = locate_meta().to_props()
    with pytest.raises(ModelMetaError, match="not a verse-gc model"):
        ModelMeta.from_props({}, source="m.onnx")
    missing = {k: v for k, v in props.items() if not k.endswith("patch_shape_zyx")}
    with pytest.raises(ModelMetaError, match=r"m\.onnx.*patch_shape_zyx"):
        ModelMeta.from_props(missing, source="m.onnx")


def test_peak_threshold_travels_with_the_model_and_older_files_read_as_0_3() -> None:
    meta = locate_meta(peak_threshold=0.12)
    assert ModelMeta.from_props(meta.to_props()).peak_threshold == pytest.approx(0.12)
    older = {k: v for k, v in meta.to_props().items() if not k.endswith("peak_threshold")}
    assert ModelMeta.from_props(older).peak_threshold == pytest.approx(0.3)
    with pytest.raises(ModelMetaError, match="peak_threshold"):
        locate_meta(peak_threshold=1.5)


def test_intensity_mapping() -> None:
    intensity = Intensity(hu_min=-1000, hu_max=2000, center=0, scale=1000)
    out = intensity.apply(np.array([-3000, 0, 500, 5000], dtype=np.int16))
    assert out.dtype == np.float32 and np.allclose(out, [-1.0, 0.0, 0.5, 2.0])
    assert intensity.background == pytest.approx(-1.0)

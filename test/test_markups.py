"""3D Slicer markups JSON: the schema's facts, exact round trip, and the centroid reader of all three formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.centroids import CentroidFileError, centroid_format, read_labelled_centroids
from spine.gc import Point, write_points
from spine.image import Geometry
from spine.labels import EVALUATED, name_of
from spine.markups import markups_document, read_markups, write_markups
from spine.verse import read_centroids_mm, write_centroid_json

REPO = Path(__file__).resolve().parents[1]
VERSE004 = REPO / "test" / "data" / "verse-sub-verse004"

# The facts of 3D Slicer's markups JSON schema v1.0.3 (Slicer/Slicer,
# Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json; 3D Slicer licence, BSD-style) that a
# Fiducial list touches: required keys, types, enums and array lengths, restated here (not copied) as a JSON
# schema subset. Keys the schema leaves open ("additionalProperties": true) stay open.
_NUMBERS = {"type": "array", "items": {"type": "number"}}
SLICER_MARKUPS_V1_0_3: dict[str, Any] = {
    "type": "object", "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string"},
        "markups": {"type": "array", "items": {
            "type": "object", "required": ["type"],
            "properties": {
                "type": {"type": "string",
                         "enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                "name": {"type": "string"},
                "coordinateSystem": {"type": "string", "enum": ["LPS", "RAS"]},
                "coordinateUnits": {"type": "string", "enum": ["mm", "um"]},
                "locked": {"type": "boolean"},
                "fixedNumberOfControlPoints": {"type": "boolean"},
                "labelFormat": {"type": "string"},
                "controlPoints": {"type": "array", "items": {
                    "type": "object", "required": [],
                    "properties": {
                        "id": {"type": "string"}, "label": {"type": "string"},
                        "description": {"type": "string"}, "associatedNodeID": {"type": "string"},
                        "position": {**_NUMBERS, "minItems": 3, "maxItems": 3},
                        "orientation": {**_NUMBERS, "minItems": 9, "maxItems": 9},
                        "selected": {"type": "boolean"}, "locked": {"type": "boolean"},
                        "visibility": {"type": "boolean"},
                        "positionStatus": {"type": "string", "enum": ["undefined", "preview", "defined"]},
                    }}},
                "display": {"type": "object", "required": [], "properties": {
                    "visibility": {"type": "boolean"},
                    "opacity": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                    "pointLabelsVisibility": {"type": "boolean"},
                    "textScale": {"type": "number", "minimum": 0.0},
                    "glyphType": {"type": "string", "enum": [
                        "Vertex2D", "Dash2D", "Cross2D", "ThickCross2D", "Triangle2D", "Square2D", "Circle2D",
                        "Diamond2D", "Arrow2D", "ThickArrow2D", "HookedArrow2D", "StarBurst2D", "Sphere3D",
                        "Diamond3D"]},
                    "glyphScale": {"type": "number", "minimum": 0.0},
                }},
            }}},
    },
}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Violations of the JSON-schema keywords used above (type, required, enum, properties, items,
    minItems, maxItems, minimum, maximum)."""
    kind = schema.get("type")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{where}: {value!r} is not a number"]
    elif kind is not None and not isinstance(value, _TYPES[kind]):
        return [f"{where}: {value!r} is not {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if ("minimum" in schema and value < schema["minimum"]) or ("maximum" in schema and value > schema["maximum"]):
        errors.append(f"{where}: {value!r} out of range")
    if isinstance(value, dict):
        errors += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items")
        for k, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{where}[{k}]")
    return errors


def _points(seed: int = 0, n: int = 5) -> list[Point]:
    rng = np.random.default_rng(seed)
    labels = sorted(rng.choice(EVALUATED, n, replace=False), key=lambda v: v)
    return [Point(name_of(int(v)), tuple(rng.normal(0, 200, 3)), float(rng.uniform())) for v in labels]


def test_the_schema_check_catches_what_slicer_would_refuse() -> None:
    good = markups_document(_points())
    assert schema_errors(good, SLICER_MARKUPS_V1_0_3) == []
    bad = json.loads(json.dumps(good))
    bad["markups"][0]["coordinateSystem"] = "IJK"
    bad["markups"][0]["controlPoints"][0]["position"] = [1.0, 2.0]
    bad["markups"][0]["controlPoints"][1]["selected"] = "yes"
    del bad["@schema"]
    assert len(schema_errors(bad, SLICER_MARKUPS_V1_0_3)) == 4


def test_written_markups_pass_the_schema_and_carry_names_and_confidence(tmp_path: Path) -> None:
    points = _points()
    path = write_markups(tmp_path / "case_ctd.mrk.json", points)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert schema_errors(document, SLICER_MARKUPS_V1_0_3) == []
    markup = document["markups"][0]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    assert [c["label"] for c in markup["controlPoints"]] == [p.name for p in points]
    assert [c["description"] for c in markup["controlPoints"]] == [f"confidence {p.probability:.4f}" for p in points]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([name_of(v) for v in EVALUATED]),
                          st.tuples(*[st.floats(-1e4, 1e4, allow_nan=False)] * 3),
                          st.floats(0.0, 1.0)), max_size=8))
def test_markups_round_trip_exactly(tmp_path_factory: pytest.TempPathFactory,
                                    rows: list[tuple[str, tuple[float, float, float], float]]) -> None:
    path = tmp_path_factory.mktemp("mrk") / "x.mrk.json"
    points = [Point(name, xyz, p) for name, xyz, p in rows]
    back = read_markups(write_markups(path, points))
    assert [p.name for p in back] == [p.name for p in points]
    assert np.array_equal(np.array([p.point_mm for p in back]).reshape(-1, 3),
                          np.array([p.point_mm for p in points]).reshape(-1, 3))
    assert np.allclose([p.probability for p in back], [p.probability for p in points], atol=5e-5)


def test_slicer_variants_are_read_in_lps_mm(tmp_path: Path) -> None:
    """What Slicer may write: RAS coordinates, micrometres, unset points, other markup types."""
    document = {"@schema": "x", "markups": [
        {"type": "Line", "controlPoints": [{"label": "L1", "position": [0, 0, 0]}]},
        {"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "um", "controlPoints": [
            {"label": "L1", "position": [1000.0, -2000.0, 3000.0]},
            {"label": "L2", "position": [0, 0, 0], "positionStatus": "undefined"},
            {"label": "L3", "position": [5.0, 5.0, 5.0], "description": "moved by hand"}]}]}
    path = tmp_path / "f.mrk.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    points = read_markups(path)
    assert [(p.name, p.point_mm, p.probability) for p in points] == [
        ("L1", (-1.0, 2.0, 3.0), 1.0), ("L3", (-0.005, -0.005, 0.005), 1.0)]


# --------------------------------------------------------------------------- centroids in any format


@pytest.fixture(scope="module")
def verse004() -> tuple[Geometry, dict[int, np.ndarray]]:
    geometry = Geometry.of(sitk.ReadImage(str(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz")))
    return geometry, read_centroids_mm(VERSE004 / "sub-verse004_seg-subreg_ctd.json", geometry)


def test_the_three_formats_give_the_same_centroids(tmp_path: Path, verse004) -> None:
    geometry, truth = verse004
    points = [Point(name_of(v), tuple(truth[v]), 1.0) for v in sorted(truth)]
    files = {"verse": VERSE004 / "sub-verse004_seg-subreg_ctd.json",
             "points": write_points(tmp_path / "p.json", points),
             "markups": write_markups(tmp_path / "m.mrk.json", points)}
    for kind, path in files.items():
        assert centroid_format(path) == kind
        read = read_labelled_centroids(path, geometry)
        assert sorted(read) == sorted(truth)
        assert max(float(np.abs(read[v] - truth[v]).max()) for v in truth) < 1e-6
    # VerSe JSON written by us (2 decimals of a voxel) reads back within the rounding.
    again = read_labelled_centroids(write_centroid_json(tmp_path / "v_ctd.json", truth, geometry), geometry)
    assert max(float(np.abs(again[v] - truth[v]).max()) for v in truth) < 0.02


@pytest.mark.parametrize(("edit", "message"), [
    (lambda pts: [*pts, Point("L7", pts[0].point_mm)], "'L7'"),
    (lambda pts: [*pts, Point("spleen", pts[0].point_mm)], "are not vertebrae"),
    (lambda pts: [*pts, Point(pts[0].name, pts[1].point_mm)], "given twice"),
    (lambda pts: [Point(pts[0].name, (10000.0, 0.0, 0.0)), *pts[1:]], "lies outside the CT"),
    (lambda pts: [], "no labelled centroid"),
])
def test_bad_centroids_give_one_error_naming_the_file(tmp_path: Path, verse004, edit, message: str) -> None:
    geometry, truth = verse004
    points = edit([Point(name_of(v), tuple(truth[v]), 1.0) for v in sorted(truth)])
    for path in (write_markups(tmp_path / "bad.mrk.json", points), write_points(tmp_path / "bad.json", points)):
        with pytest.raises(CentroidFileError, match=message) as error:
            read_labelled_centroids(path, geometry)
        assert str(error.value).startswith(str(path))


def test_a_file_of_no_known_format_is_refused(tmp_path: Path, verse004) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"something": 1}', encoding="utf-8")
    with pytest.raises(CentroidFileError, match="not a centroid file"):
        read_labelled_centroids(path, verse004[0])
    path.write_text("{", encoding="utf-8")
    with pytest.raises(CentroidFileError, match="not valid JSON"):
        read_labelled_centroids(path, verse004[0])

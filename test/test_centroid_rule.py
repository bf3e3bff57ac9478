"""DESIGN.md's Centroids rule (issue 20): leaving out points, or breaking them, never pays.

Every ranked centroid value compares the prediction (its points when present and valid, else
its mask's centres of mass, label by label) with the ground truth's annotated centroids; the
mask-to-mask comparison is the unranked ``localisation_mask_mm``. Properties over random
ground truths (with and without a centroid JSON, complete or not) and random masks, on the
pure scorer and end to end through real files.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ranking import cases

from evaluation.score import CaseFiles, score_case, score_label_maps
from spine.gc import Point, points_document
from spine.image import Geometry, image_from_array, write_image
from spine.labels import EVALUATED, name_of
from spine.verse import read_centroids_mm, write_centroid_json

BROKEN_POINTS: tuple[bytes, ...] = (
    b"{not json",  # unreadable: not JSON
    b"\xff\xfe\x00garbage",  # unreadable: not UTF-8
    b"",  # unreadable: empty
    b'{"points": [{"name": "L1", "point": [1, 2]}]}',  # invalid: a point of two coordinates
    b'{"type": "Multiple points"}',  # invalid: no points list
    b"[1, 2, 3]",  # invalid: a list, but no VerSe centroid entries
)


@st.composite
def predictions(draw: st.DrawFn, reference: np.ndarray) -> np.ndarray:
    """Any mask on the ground truth's grid: random boxes of random labels, some of G, some not,
    drawn over the ground truth, a copy of it, or nothing."""
    start = draw(st.sampled_from(["empty", "copy", "shifted"]))
    out = np.zeros_like(reference) if start == "empty" else reference.copy()
    if start == "shifted":
        out = np.roll(out, draw(st.integers(-2, 2)), axis=draw(st.integers(0, 2)))
    g = sorted(set(np.unique(reference).tolist()) - {0})
    for _ in range(draw(st.integers(0, 4))):
        label = draw(st.sampled_from([*g, 1, 28]))
        k0, j0, i0 = (draw(st.integers(0, n - 1)) for n in out.shape)
        k1, j1, i1 = (draw(st.integers(a + 1, n)) for a, n in zip((k0, j0, i0), out.shape, strict=True))
        out[k0:k1, j0:j1, i0:i1] = label
    return out


@st.composite
def annotations(draw: st.DrawFn, reference: np.ndarray, geometry: Geometry) -> dict[int, np.ndarray] | None:
    """None (no centroid JSON) or annotated centroids for some or all of G, anywhere in the image
    (VerSe's body centres are not the masks' centres of mass)."""
    if draw(st.booleans(), label="no centroid JSON"):
        return None
    g = sorted(set(np.unique(reference).tolist()) - {0})
    labels = draw(st.lists(st.sampled_from(g), min_size=1, unique=True), label="annotated")
    out = {}
    for v in labels:
        ijk = [draw(st.floats(0, n - 1, allow_nan=False)) for n in geometry.size]
        out[v] = geometry.index_to_world(ijk)
    return out


def ranked(record: dict[str, Any]) -> tuple[float, float, float]:
    return record["localisation_mm"], record["id_rate"], record["localisation_matched_mm"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), data=st.data())
def test_points_at_the_annotated_centroids_never_raise_the_ranked_localisation(
        case: tuple[np.ndarray, Geometry], data: st.DataObject) -> None:
    reference, geometry = case
    prediction = data.draw(predictions(reference))
    annotated = data.draw(annotations(reference, geometry))
    without = score_label_maps(reference, prediction, geometry, reference_centroids_mm=annotated).to_dict()
    g_centroids = {v: p for v, p in (annotated or {}).items()}
    chosen = data.draw(st.lists(st.sampled_from(sorted(g_centroids)), unique=True), label="pointed") \
        if g_centroids else []
    points = {v: g_centroids[v] for v in chosen}
    extra = data.draw(st.sampled_from([None, *sorted(set(EVALUATED) - set(g_centroids))]), label="extra point")
    if extra is not None:  # a point for a vertebra without annotation is scored too, but changes no pointed one
        points[extra] = geometry.index_to_world([0.0, 0.0, 0.0])
    with_points = score_label_maps(reference, prediction, geometry, reference_centroids_mm=annotated,
                                   predicted_centroids_mm=points).to_dict()
    if extra is None or extra not in set(np.unique(reference).tolist()):
        assert with_points["localisation_mm"] <= without["localisation_mm"] + 1e-9
        assert with_points["id_rate"] >= without["id_rate"]
    for v in chosen:
        vertebra = with_points["per_vertebra"][name_of(v)]
        assert vertebra["identified"] and vertebra["distance_mm"] == pytest.approx(0.0, abs=1e-9)
    # the unranked mask-to-mask value ignores points and annotations alike
    assert with_points["localisation_mask_mm"] == without["localisation_mask_mm"]
    plain = score_label_maps(reference, prediction, geometry).to_dict()
    assert plain["localisation_mask_mm"] == without["localisation_mask_mm"]


def _points_file(path: Path, centroids: dict[int, np.ndarray]) -> Path:
    doc = points_document([Point(name_of(v), tuple(float(x) for x in p), 1.0) for v, p in centroids.items()])
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), data=st.data())
def test_files_no_points_broken_points_and_annotated_points(case: tuple[np.ndarray, Geometry],
                                                            data: st.DataObject) -> None:
    """End to end through real files: a broken points file scores exactly like no points file
    (only the status differs, and says so); points at the annotated centroids never score worse."""
    reference, geometry = case
    prediction = data.draw(predictions(reference))
    annotated = data.draw(annotations(reference, geometry))
    with tempfile.TemporaryDirectory() as where:
        _check_files(Path(where), reference, geometry, prediction, annotated,
                     data.draw(st.sampled_from(BROKEN_POINTS), label="broken"))


def _check_files(folder: Path, reference: np.ndarray, geometry: Geometry, prediction: np.ndarray,
                 annotated: dict[int, np.ndarray] | None, broken_bytes: bytes) -> None:
    gt = write_image(image_from_array(reference, geometry), folder / "gt_seg-vert_msk.nii.gz")
    pred = write_image(image_from_array(prediction, geometry), folder / "pred_seg-vert_msk.mha")
    ctd = write_centroid_json(folder / "gt_ctd.json", annotated, geometry) if annotated else None
    broken = folder / "broken_points.json"
    broken.write_bytes(broken_bytes)

    absent = score_case(CaseFiles("c", gt, ctd, pred, None))
    bad = score_case(CaseFiles("c", gt, ctd, pred, broken))
    assert "no points file" in absent["status"]
    assert ("unreadable points, scored as absent" in bad["status"]) or ("invalid points, scored as absent"
                                                                        in bad["status"]), bad["status"]
    assert {k: v for k, v in bad.items() if k != "status"} == {k: v for k, v in absent.items() if k != "status"}
    assert str(folder) not in bad["status"]

    read_back = read_centroids_mm(ctd, geometry) if ctd else {}  # the annotated centroids as the evaluator reads them
    good = score_case(CaseFiles("c", gt, ctd, pred, _points_file(folder / "points.json", read_back)))
    assert good["localisation_mm"] <= absent["localisation_mm"] + 1e-9
    assert good["id_rate"] >= absent["id_rate"]
    assert good["localisation_mask_mm"] == absent["localisation_mask_mm"]

"""The whole case on ONNX Runtime: a phantom with known vertebrae, GC exec mode, predict mode on a real CT.

The fixture models (``algorithm_fixtures``) are real ONNX files whose outputs are known
analytically, so the pipeline's answer is checkable: each phantom vertebra found within a
millimetre, named right, and segmented; outputs on the input's exact grid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from algorithm_fixtures import PHANTOM_LABELS, all_files, fixture_model_dir, gc_input, make_phantom

from algorithm.cli import main
from algorithm.models import ModelSource, load_models
from algorithm.pipeline import predict_case
from algorithm.plausibility import IMPLAUSIBLE_CAP
from spine.gc import read_points
from spine.image import Geometry
from spine.labels import MAX_LABEL, name_of
from spine.markups import read_markups
from spine.verse import read_centroids_mm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models():
    return load_models(ModelSource(fixture_model_dir(), "fixture"), device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


def assert_same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    """Exactly the reference's size, spacing, origin and direction (no tolerance), UInt8, 0..28."""
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()
    assert image.GetPixelID() == sitk.sitkUInt8
    values = np.unique(sitk.GetArrayViewFromImage(image))
    assert values.min() >= 0 and values.max() <= MAX_LABEL


def test_phantom_vertebrae_are_found_named_and_segmented(models, phantom) -> None:
    result = predict_case(phantom.image, models)
    assert [v.label for v in result.vertebrae] == list(PHANTOM_LABELS)  # head to foot
    # The phantom's bodies are small spheres, a tenth of a real vertebra's volume: the anatomy check says so
    # and caps the decoder's (high) confidence.
    assert result.details["plausibility"]["size_ratio"] < 0.2
    for vertebra in result.vertebrae:
        assert np.linalg.norm(np.asarray(vertebra.position_mm) - phantom.centres_mm[vertebra.label]) < 1.0
        assert vertebra.confidence == pytest.approx(IMPLAUSIBLE_CAP)
    assert_same_grid(result.labels, phantom.image)
    predicted = sitk.GetArrayFromImage(result.labels)
    truth = sitk.GetArrayFromImage(phantom.truth)
    for label in PHANTOM_LABELS:
        both = np.sum((predicted == label) & (truth == label))
        dice = 2 * both / (np.sum(predicted == label) + np.sum(truth == label))
        assert dice > 0.9, (label, dice)
    assert set(np.unique(predicted)) == {0, *PHANTOM_LABELS}  # the far blob and the bar stay background
    # Sized as no real vertebra is (3.5 ml), no labelling would pass the size check: not labelled again by size.
    assert result.check is not None and result.check.size_doubtful and "by_size" not in result.details["label"]
    assert [s["stage"] for s in result.timer.to_list()] == ["detect", "locate", "label", "segment", "resample"]
    report = result.report(models, source="phantom")
    json.dumps(report, allow_nan=False)
    assert report["providers"] == ["CPUExecutionProvider"] and report["spine_found"]
    # No ribs on the phantom, and its CT covers where they would run: every labelled vertebra says so.
    assert report["label"]["ribs"] == {v.name: "no rib" for v in result.vertebrae}


def test_without_region_evidence_no_rib_search_and_no_rib_report(models, phantom) -> None:
    """The ribs are region evidence: with the region evidence off nothing reads them, so none are sought."""
    from algorithm.pipeline import Options

    result = predict_case(phantom.image, models, options=Options(region_evidence=False))
    assert [v.label for v in result.vertebrae] == list(PHANTOM_LABELS)
    assert "ribs" not in result.report(models)["label"]


@pytest.mark.parametrize("direction", [
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),  # RAS, as NIfTI files usually are
    (0.0, 0.9659258, -0.258819, 1.0, 0.0, 0.0, 0.0, -0.258819, -0.9659258),  # oblique, 15 degrees
])
def test_outputs_keep_any_input_grid(models, direction) -> None:
    phantom = make_phantom(direction=direction, spacing_mm=(1.3, 0.7, 2.5), extent_mm=(100.0, 90.0, 230.0))
    result = predict_case(phantom.image, models)
    assert_same_grid(result.labels, phantom.image)
    assert [v.label for v in result.vertebrae] == list(PHANTOM_LABELS)
    for vertebra in result.vertebrae:
        assert np.linalg.norm(np.asarray(vertebra.position_mm) - phantom.centres_mm[vertebra.label]) < 1.5


def test_no_spine_is_an_empty_valid_result(models) -> None:
    phantom = make_phantom(with_spine=False)
    # only soft tissue and the far blob: the blob is too small to be a spine
    result = predict_case(phantom.image, models)
    assert result.vertebrae == () and not result.spine_found
    assert "no spine found" in result.note
    assert_same_grid(result.labels, phantom.image)
    assert not sitk.GetArrayViewFromImage(result.labels).any()


@pytest.mark.parametrize("variant", ["socket", "interface", None])
def test_exec_mode_on_a_gc_layout(tmp_path: Path, phantom, variant, capsys) -> None:
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    outputs.mkdir()
    gc_input(inputs, phantom.image, variant=variant)
    code = main(["--input", str(inputs), "--output", str(outputs), "--models", str(fixture_model_dir())])
    assert code == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert captured.out == ""  # logs go to stderr: stdout stays clean
    others = [line for line in captured.err.splitlines() if " INFO " not in line]
    # nothing but info logs and two warnings about the phantom's tiny uniform balls: the segment model's
    # outlines of them are no vertebra (locate falls back to the heatmap peaks) and the anatomy check
    assert len(others) == 2, others
    assert "outlined no vertebra" in others[0] and "the volume of real vertebrae" in others[1], others
    segmentation = outputs / "images" / "vertebrae-segmentation" / "output.mha"
    points_path = outputs / "vertebrae-centroids.json"
    assert all_files(outputs) == sorted([segmentation, points_path])  # nothing else in /output
    assert_same_grid(sitk.ReadImage(str(segmentation)), phantom.image)
    document = json.loads(points_path.read_text())
    assert set(document) == {"name", "type", "points", "version"}
    assert document["type"] == "Multiple points" and document["version"] == {"major": 1, "minor": 0}
    points = read_points(points_path)
    assert [p.name for p in points] == [name_of(label) for label in PHANTOM_LABELS]
    for point in points:
        label = next(k for k in PHANTOM_LABELS if name_of(k) == point.name)
        assert np.linalg.norm(np.asarray(point.point_mm) - phantom.centres_mm[label]) < 1.0
        assert 0.0 <= point.probability <= 1.0


def test_exec_mode_without_a_spine_writes_empty_outputs(tmp_path: Path, capsys) -> None:
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    image = make_phantom(with_spine=False).image
    gc_input(inputs, image)
    assert main(["--input", str(inputs), "--output", str(outputs), "--models", str(fixture_model_dir())]) == 0
    assert "no spine found" in capsys.readouterr().err
    labels = sitk.ReadImage(str(outputs / "images" / "vertebrae-segmentation" / "output.mha"))
    assert_same_grid(labels, image)
    assert not sitk.GetArrayViewFromImage(labels).any()
    assert json.loads((outputs / "vertebrae-centroids.json").read_text())["points"] == []


def example_ct() -> Path:
    for path in (REPO / "examples" / "totalsegmentator-example" / "ct.nii.gz",
                 REPO.parent / "shared" / "data" / "totalsegmentator-example" / "ct.nii.gz"):
        if path.is_file():
            return path
    pytest.skip("the example CT is not available")


def test_predict_mode_on_the_real_example_ct(tmp_path: Path, phantom, capsys) -> None:
    ct = example_ct()
    phantom_path = tmp_path / "cases" / "sub-phantom_ct.mha"
    phantom_path.parent.mkdir()
    sitk.WriteImage(phantom.image, str(phantom_path))
    sitk.WriteImage(phantom.truth, str(tmp_path / "cases" / "sub-phantom_seg-vert_msk.nii.gz"))  # skipped
    out = tmp_path / "out"
    code = main(["predict", str(ct), str(phantom_path.parent), "--output", str(out),
                 "--models", str(fixture_model_dir()), "--overlap", "0.25"])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{case}_{suffix}" for case in ("ct", "sub-phantom") for suffix in
                           ("seg-vert_msk.nii.gz", "seg-subreg_ctd.json", "points.json", "ctd.mrk.json", "snp.png",
                            "vertebrae.csv", "report.json"))
    original = sitk.ReadImage(str(ct))
    mask = sitk.ReadImage(str(out / "ct_seg-vert_msk.nii.gz"))
    assert mask.GetSize() == original.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(mask.GetOrigin(), original.GetOrigin(), atol=1e-4)
    assert np.allclose(mask.GetDirection(), original.GetDirection(), atol=1e-6)
    report = json.loads((out / "ct_report.json").read_text())
    assert [s["stage"] for s in report["stages"]][:2] == ["detect", "locate"]
    assert report["stages"][-1]["stage"] == "qc"
    assert {"onnxruntime", "numpy", "SimpleITK", "python"} <= set(report["versions"])
    assert report["models"]["directory"] == str(fixture_model_dir())
    assert (out / "ct_snp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the body measurements: a CSV that says what it is, one row a measured vertebra, the same in the report
    csv_lines = (out / "ct_vertebrae.csv").read_text().splitlines()
    assert csv_lines[0].startswith("#") and "not a diagnosis" in csv_lines[0]
    measured = report["measurements"]["vertebrae"]
    assert [line.split(",")[1] for line in csv_lines[2:]] == [m["name"] for m in measured]
    assert report["measurements"]["screening"].startswith("L1 ")
    assert "measure" in [s["stage"] for s in report["stages"]]
    # the phantom case: VerSe centroid JSON in voxel indices of the CT, back to world mm
    centroids = read_centroids_mm(out / "sub-phantom_seg-subreg_ctd.json", Geometry.of(phantom.image))
    assert sorted(centroids) == list(PHANTOM_LABELS)
    for label, point in centroids.items():
        assert np.linalg.norm(point - phantom.centres_mm[label]) < 1.0
    # the Slicer markups hold the same points as the GC points file, names and confidences included
    points = read_points(out / "sub-phantom_points.json")
    markups = read_markups(out / "sub-phantom_ctd.mrk.json")
    assert [(p.name, p.point_mm, p.probability) for p in markups] == [(p.name, p.point_mm, p.probability)
                                                                        for p in points]


@pytest.mark.slow
def test_a_512x512x400_ct_stays_within_4_gb(tmp_path: Path) -> None:
    """GC's smallest memory option is 4 GB: the whole case, in a fresh process, peaks well below it."""
    example = sitk.ReadImage(str(example_ct()))
    size, spacing = (512, 512, 400), (0.78, 0.78, 1.0)
    centre = example.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in example.GetSize()])
    matrix = np.asarray(example.GetDirection()).reshape(3, 3)
    origin = np.asarray(centre) - matrix @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))
    big = sitk.Resample(example, list(size), sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                        example.GetDirection(), -1024.0, sitk.sitkInt16)
    path = tmp_path / "big_ct.mha"
    sitk.WriteImage(big, str(path), False)
    del big, example
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "algorithm", "predict", str(path), "--output", str(tmp_path / "out"),
                           "--models", str(fixture_model_dir()), "--no-qc"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "big_report.json").read_text())
    peak = max(stage["peak_rss_mib"] for stage in report["stages"])
    assert peak < 4096, report["stages"]
    assert sitk.ReadImage(str(tmp_path / "out" / "big_seg-vert_msk.nii.gz")).GetSize() == size


def test_an_outline_model_places_the_candidates_and_the_segment_model_segments(
        tmp_path: Path, phantom, caplog: pytest.LogCaptureFixture) -> None:
    """``outline.onnx`` beside the stages outlines the candidates (algorithm.recentre); one that outlines nothing
    leaves the heatmap peaks as candidates, and the segment model still segments them. A broken one is skipped."""
    import shutil

    import torch
    from algorithm_fixtures import export_module, segment_meta

    class Nothing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * 0.0

    folder = tmp_path / "models"
    shutil.copytree(fixture_model_dir(), folder)
    export_module(Nothing(), segment_meta(), folder / "outline.onnx")
    shutil.copy(folder / "segment.onnx", folder / "sacrum.onnx")  # the sacrum check's ratios: over the outlines
    models = load_models(ModelSource(folder, "test"), device="cpu")
    assert models.outliner is models.outline and "outline" in models.describe()
    patches = {"outline": 0, "segment": 0, "sacrum": 0}
    for name in patches:
        model = getattr(models, name)
        model.run = (lambda run, key: lambda batch: (patches.__setitem__(key, patches[key] + len(batch)),
                                                     run(batch))[1])(model.run, name)
    result = predict_case(phantom.image, models)
    assert "outlined no vertebra" in caplog.text  # the outline model was asked, and drew nothing
    assert patches["outline"] > 0 and patches["segment"] == len(PHANTOM_LABELS)  # segment: the final masks only
    assert patches["sacrum"] > 0  # the sacrum check ran, its ratios over the outline model's outlines
    assert [v.label for v in result.vertebrae] == list(PHANTOM_LABELS)  # from the peaks
    assert all(v.voxels > 0 for v in result.vertebrae)  # segmented by the segment model
    (folder / "outline.onnx").write_bytes(b"not a model")
    models = load_models(ModelSource(folder, "test"), device="cpu")
    assert models.outline is None and models.outliner is models.segment
    assert "the segment model outlines the candidates" in caplog.text


def test_a_level_passed_over_where_the_ct_shows_no_body_is_placed_and_left_out(models, phantom,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The phantom with L2's body erased (soft tissue where it was): locate finds T12, L1, L3-L5 and the decoder
    passes over L2. L2 is placed between L1 and L3 (within 5 mm of where its body was) and segmented there, but the
    segment stage finds nothing, so its point goes and the report says why; with the placing off nothing is placed."""
    import algorithm.pipeline as pipeline
    from algorithm.pipeline import Options

    hu = sitk.GetArrayFromImage(phantom.image)
    hu[sitk.GetArrayViewFromImage(phantom.truth) == 21] = 40
    image = sitk.GetImageFromArray(hu)
    image.CopyInformation(phantom.image)
    seen: list = []
    original = pipeline._skipped

    def spy(vertebrae):
        seen.extend(original(vertebrae))
        return seen

    monkeypatch.setattr(pipeline, "_skipped", spy)
    result = predict_case(image, models)
    ((l2, _),) = seen
    assert l2.label == 21 and np.linalg.norm(np.asarray(l2.position_mm) - phantom.centres_mm[21]) < 5.0
    assert [v.label for v in result.vertebrae] == [19, 20, 22, 23, 24]
    report = result.report(models, source="phantom")
    assert report["label"]["placed"] == {
        "L2": "passed over by the chain: placed between L1 and L3; nothing segmented there: left out"}
    without = predict_case(image, models, options=Options(fill_skipped=False))
    assert [v.label for v in without.vertebrae] == [19, 20, 22, 23, 24]
    assert "placed" not in without.report(models, source="phantom")["label"]

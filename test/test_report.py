"""The organiser's report (``--report``): what the page says, and the page as a real browser draws it.

The submission scored here is built from real VerSe ground truth (manual masks and annotated
centroids: the shipped sub-verse004, the bundled TotalSegmentator example and, when
``../shared/data`` is there, VerSe's sub-gl108 (C1-T3, brought to 1 mm) and sub-verse010), with
the problems an organiser meets: a good prediction with points, masks without points, a broken
points file, a prediction on another grid, a missing prediction and one that matches no case.

``VERSE_REPORT_SCREENSHOT=docs/evaluation_report.png python -m pytest test/test_report.py -k chromium``
also keeps the browser's screenshot (how the README's picture was made).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from evaluation.report import METRICS, ReportHeader, plural, public_text, write_report
from evaluation.score import empty_record
from spine.gc import Point, points_document
from spine.image import Geometry, axis_aligned_geometry, image_from_array, read_image, resample_onto, write_image
from spine.labels import name_of
from spine.verse import read_centroids_mm, write_centroid_json

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
SUBMISSION = "team-demo (run 3)"


def _ground_truth_case(gt: Path, case: str, mask: Path, centroids: Path, *, spacing: float | None = None) -> sitk.Image:
    """Copy a real VerSe case into ``gt`` (optionally brought onto a coarser LPS grid, nearest neighbour)."""
    image = read_image(mask)
    geometry = Geometry.of(image)
    annotated = read_centroids_mm(centroids, geometry)
    if spacing is not None:
        geometry = axis_aligned_geometry(geometry, (spacing,) * 3)
        image = sitk.Cast(resample_onto(image, geometry, nearest=True, default=0), sitk.sitkUInt8)
    write_image(image, gt / f"{case}_seg-vert_msk.nii.gz")
    write_centroid_json(gt / f"{case}_seg-subreg_ctd.json", annotated, geometry)
    return image


def _points(path: Path, centroids: dict[int, np.ndarray], noise_mm: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = [Point(name_of(v), tuple(float(x) for x in p + rng.normal(0, noise_mm, 3)), 0.9)
              for v, p in centroids.items()]
    path.write_text(json.dumps(points_document(points)), encoding="utf-8")


def _erode_surface(array: np.ndarray) -> np.ndarray:
    """Each label loses the voxels on its boundary along k (a segmentation a little too thin)."""
    out = array.copy()
    out[1:][array[1:] != array[:-1]] = 0
    return out


@pytest.fixture(scope="module")
def submission(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    gt, pred, report = root / "verse-test-gt", root / "predictions", root / "report"
    gt.mkdir()
    pred.mkdir()
    sample = HERE / "data" / "verse-sub-verse004"
    example = HERE.parent / "examples" / "totalsegmentator-example"
    good = _ground_truth_case(gt, "sub-verse004", sample / "sub-verse004_seg-vert_msk.nii.gz",
                              sample / "sub-verse004_seg-subreg_ctd.json")
    write_image(good, pred / "sub-verse004_seg-vert_msk.nii.gz")
    _points(pred / "sub-verse004_points.json",
            read_centroids_mm(sample / "sub-verse004_seg-subreg_ctd.json", Geometry.of(good)), 2.0, 1)
    thin = _ground_truth_case(gt, "sub-tseg001", example / "seg-vert_msk.nii.gz", example / "seg-vert_ctd.json")
    thin_array = _erode_surface(sitk.GetArrayFromImage(thin).astype(np.uint8))
    write_image(image_from_array(thin_array, Geometry.of(thin)), pred / "sub-tseg001_seg-vert_msk.nii.gz")
    (pred / "sub-tseg001_points.json").write_text('{"points": [{"name": "L1", "point": [1, 2', encoding="utf-8")
    write_image(good, pred / "sub-extra001_seg-vert_msk.nii.gz")  # matches no ground-truth case
    missing = ["sub-verse004-repeat"]
    shutil.copyfile(gt / "sub-verse004_seg-vert_msk.nii.gz", gt / "sub-verse004-repeat_seg-vert_msk.nii.gz")
    shared = SHARED / "verse-label-masks"
    if shared.is_dir():
        neck = _ground_truth_case(gt, "sub-gl108", shared / "sub-gl108_seg-vert_msk.nii.gz",
                                  shared / "sub-gl108_seg-subreg_ctd.json", spacing=1.0)
        write_image(neck, pred / "sub-gl108_seg-vert_msk.nii.gz")  # a mask without points
        lumbar = _ground_truth_case(gt, "sub-verse010", shared / "sub-verse010_seg-vert_msk.nii.gz",
                                    shared / "sub-verse010_seg-subreg_ctd.json")
        coarse = axis_aligned_geometry(Geometry.of(lumbar), (2.0, 2.0, 2.0))  # the prediction's own grid
        write_image(sitk.Cast(resample_onto(lumbar, coarse, nearest=True), sitk.sitkUInt8),
                    pred / "sub-verse010_seg-vert_msk.nii.gz")
        _points(pred / "sub-verse010_points.json",
                read_centroids_mm(gt / "sub-verse010_seg-subreg_ctd.json", Geometry.of(lumbar)), 3.0, 2)
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", "folders", "--predictions", str(pred),
         "--ground-truth", str(gt), "--output", str(root / "metrics.json"), "--report", str(report),
         "--submission", SUBMISSION],
        capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    assert done.returncode == 0, done.stderr
    document = json.loads((root / "metrics.json").read_text())
    return {"root": root, "report": report, "page": (report / "index.html").read_text(), "document": document,
            "stderr": done.stderr, "missing": missing, "shared": shared.is_dir()}


def _cells(page: str, first: str) -> list[str]:
    """The cells of the table row whose first cell holds ``first``."""
    for row in re.findall(r"<tr>(.*?)</tr>", page, flags=re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", " ", c)).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        if cells and re.sub(r"\s+", " ", cells[0]).startswith(first):
            return cells
    raise AssertionError(f"no row starting with {first!r}")


def test_header_names_submission_date_evaluator_and_ground_truth(submission: dict[str, Any]) -> None:
    page, document = submission["page"], submission["document"]
    cases = len(document["case"])
    assert f"Evaluation report: {SUBMISSION}" in page
    assert re.search(r"<dt>Evaluated</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d UTC</dd>", page)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    expected = f"commit <code>{commit[:12]}</code>" if commit else "commit unknown"
    assert f"verse-gc 0.1.0, {expected}" in page
    assert f"<dt>Ground truth</dt><dd>verse-test-gt, {cases} cases</dd>" in page


def test_metrics_have_unit_and_direction_ranked_first(submission: dict[str, Any]) -> None:
    page = submission["page"]
    diagnostics_at = page.index("Unranked diagnostics")
    for metric in ("dice", "hd95", "hd", "id_rate", "localisation_mm"):
        cells = _cells(page, METRICS[metric].title)
        assert page.index(f"<code>{metric}</code>") < diagnostics_at, metric
        assert cells[2] == ("higher is better \u2191" if metric in ("dice", "id_rate") else "lower is better \u2193")
        assert cells[1] == ("mm" if metric in ("hd95", "hd", "localisation_mm") else "\u2013")
    for metric in ("hd95_matched", "hd_matched", "localisation_matched_mm", "localisation_mask_mm"):
        assert page.index(f"<code>{metric}</code>") > diagnostics_at, metric
        assert _cells(page, METRICS[metric].title)[1] == "mm"
    aggregates = submission["document"]["aggregates"]
    dice = _cells(page, "Dice dice")
    assert dice[3] == f"{aggregates['dice']['mean']:.3f}" and dice[8] == str(aggregates["dice"]["count"])
    missed = _cells(page, "missed vertebrae")
    assert missed[6] == str(int(aggregates["hd_missing"]["min"])) and "." not in missed[8]  # counts as integers


def test_per_vertebra_and_per_region_tables(submission: dict[str, Any]) -> None:
    page, aggregates = submission["page"], submission["document"]["aggregates"]
    assert "n (cases)" in page and "n (vertebrae)" in page
    l1 = _cells(page, "L1")
    assert l1[1] == str(aggregates["per_label"]["L1"]["dice"]["count"])
    assert l1[2] == f"{aggregates['per_label']['L1']['dice']['mean']:.3f}"
    lumbar = _cells(page, "lumbar")
    assert lumbar[1] == str(aggregates["per_region"]["lumbar"]["dice"]["count"])
    assert lumbar[4] == f"{aggregates['per_region']['lumbar']['id_rate']['mean']:.3f}"
    for region, stats in aggregates["per_region"].items():
        shown = re.search(rf"<tr><td>{region}</td>", page) is not None
        assert shown == (stats["dice"]["count"] > 0), region  # empty regions left out
    if not submission["shared"]:
        assert "<td>cervical</td>" not in page
    for png in ("per_vertebra.png", "per_region.png"):
        assert (submission["report"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_status_cells_are_public_and_say_each_reason_once(submission: dict[str, Any]) -> None:
    page = submission["page"]
    assert str(submission["root"]) not in page and "/tmp/" not in page
    assert "<td class='text status note'>missing prediction: no sub-verse004-repeat_seg-vert_msk image" in page
    tseg = _cells(page, "sub-tseg001")[-1]
    assert tseg.startswith("unreadable points, scored as absent") and tseg.count("scored as absent") == 1
    assert "sub-tseg001_points.json" in tseg
    assert "Predictions not scored (1 prediction)" in page
    if submission["shared"]:
        assert "resampled (nearest neighbour) from 93x93x103 voxels of 2x2x2 mm" in _cells(page, "sub-verse010")[-1]
    for record in submission["document"]["case"].values():
        for note in record["status"].split("; "):
            assert page.count(public_text(note)) <= 1, note


def test_stderr_names_each_affected_case_once_then_the_summary(submission: dict[str, Any]) -> None:
    lines = submission["stderr"].splitlines()
    warnings = [line for line in lines if line.startswith("WARNING evaluation.run")]
    by_case = {line.split(": ")[1]: line for line in warnings}
    assert len(by_case) == len(warnings)  # one line per case
    assert "missing prediction" in by_case["sub-verse004-repeat"]
    assert "unreadable points, scored as absent" in by_case["sub-tseg001"]
    assert "sub-verse004" not in by_case  # good mask and points: nothing to say
    if submission["shared"]:
        assert "no points file" in by_case["sub-gl108"]
        assert "prediction resampled (nearest neighbour) from 93x93x103 voxels of 2x2x2 mm onto the ground " \
               "truth's 186x206x186 voxels of 1x1x1 mm" in by_case["sub-verse010"]
    summary = next(i for i, line in enumerate(lines) if line.startswith("INFO evaluation: wrote") and "metrics" in line)
    assert summary > max(lines.index(w) for w in warnings)


def test_plural_and_public_text() -> None:
    assert plural(1, "case") == "1 case" and plural(2, "case") == "2 cases" and plural(0, "case") == "0 cases"
    assert plural(1, "vertebra", "vertebrae") == "1 vertebra" and plural(3, "vertebra", "vertebrae") == "3 vertebrae"
    assert public_text("unreadable prediction: /srv/gc/in/abc/x_seg-vert_msk.nii.gz: cannot read") == \
        "unreadable prediction: x_seg-vert_msk.nii.gz: cannot read"
    assert public_text("values 0..28 (-3, 200); 1x1x2 mm") == "values 0..28 (-3, 200); 1x1x2 mm"


def test_one_case_report_says_one_case(tmp_path: Path) -> None:
    record = empty_record("missing prediction: no job")
    from evaluation.run import metrics_document

    document = metrics_document({"sub-a": record})
    header = ReportHeader("x", "2026-01-01 00:00 UTC", "0.1.0", "", "gt", 1)
    page = write_report(document, tmp_path / "r", header).read_text()
    assert "gt, 1 case<" in page and "1 case scored" in page and "commit unknown" in page
    assert "<td>cervical</td>" not in page and "<td>lumbar</td>" not in page


# --------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if (found := shutil.which(name))), None)


WINDOW = (1280, 2500)


def test_page_renders_in_headless_chromium(submission: dict[str, Any], tmp_path: Path) -> None:
    """Chromium (Debian's ``chromium``; ``.ci/run`` installs it) draws the page with its plots."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    from PIL import Image

    shot = tmp_path / "page.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", "--user-data-dir=" + str(tmp_path / "p"),
         (submission["report"] / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    ink = np.any(pixels < 200, axis=2)
    assert 0.03 < ink.mean() < 0.6, f"{ink.mean():.3f} of the page inked: blank or a black screen"
    assert ink[: WINDOW[1] // 4].mean() > 0.02 and ink[WINDOW[1] // 2:].mean() > 0.02  # text at the top and below
    assert not ink[:, -16:].any(), "something runs past the page's right margin (a table too wide for the window)"
    # the plots were loaded and drawn: the lumbar bars' red (#C44E52) and thoracic green (#55A868) are on the page
    for rgb in ((0xC4, 0x4E, 0x52), (0x55, 0xA8, 0x68)):
        near = np.all(np.abs(pixels - np.array(rgb)) < 12, axis=2)
        assert near.sum() > 500, f"no bars of colour {rgb} drawn"
    keep = os.environ.get("VERSE_REPORT_SCREENSHOT")
    if keep:
        Image.open(shot).convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(keep, optimize=True)


def test_evaluator_commit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container has no .git: build.sh passes the commit as VERSE_GC_COMMIT."""
    from evaluation.report import evaluator_commit

    monkeypatch.setenv("VERSE_GC_COMMIT", "0123456789abcdef")
    assert evaluator_commit() == "0123456789abcdef"
    monkeypatch.delenv("VERSE_GC_COMMIT")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    assert evaluator_commit() == head

"""The QC picture (algorithm.qc) as a reader meets it: the whole subtitle on a whole spine, uncertain vertebrae
marked and explained, no two names on top of each other on a crowded spine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithm.pipeline import CaseResult, Vertebra
from algorithm.qc import UNCERTAIN_BELOW, label_runs, qc_figure, render_qc, spread_labels
from spine.image import Geometry


def spine_case(step_mm: float, doubtful: tuple[int, ...] = (7, 19, 20), labels=tuple(range(1, 25))) -> tuple:
    """A 640 mm tall CT and a labelled spine ``step_mm`` apart, labels in ``doubtful`` at confidence 0.5."""
    array = np.full((320, 60, 60), -1000, np.int16)
    array[:, 20:40, 20:40] = 400
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    vertebrae = tuple(Vertebra(label, (40.0 + (k % 3), 60.0, 620.0 - step_mm * k), 0.5 if label in doubtful else 0.99)
                      for k, label in enumerate(labels))
    labelmap = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    labelmap.CopyInformation(image)
    return image, CaseResult(Geometry.of(image), labelmap, vertebrae)


def _drawn(figure):
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return renderer


@pytest.mark.parametrize("step_mm", [24.0, 8.0], ids=["whole spine", "crowded"])
def test_names_never_overlap_and_the_subtitle_fits(step_mm: float) -> None:
    from matplotlib import pyplot as plt

    image, result = spine_case(step_mm)
    figure = qc_figure(image, result, title="sub-verse999_dir-iso_ct, a whole spine with a long name")
    try:
        renderer = _drawn(figure)
        frame = figure.bbox
        title = figure._suptitle.get_window_extent(renderer)
        assert frame.x0 <= title.x0 and title.x1 <= frame.x1 and frame.y0 <= title.y0 and title.y1 <= frame.y1
        assert "C1-L5" in figure._suptitle.get_text() and "check C7 (0.50), T12 (0.50), L1 (0.50)" in \
            figure._suptitle.get_text()
        for axis in figure.axes:
            names = [t for t in axis.texts if t.get_gid() == "vertebra-name"]
            assert len(names) == 24
            boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in names]
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), (a, b)
            assert all(axis.bbox.y0 - 1 <= b.y0 and b.y1 <= axis.bbox.y1 + 1 for b in boxes)  # inside the view
            marked = {t.get_text() for t in names if t.get_bbox_patch().get_linestyle() == "--"}
            assert marked == {"C7?", "T12?", "L1?"}
        legend = figure.legends[0]
        assert any(f"under {UNCERTAIN_BELOW:g}" in t.get_text() for t in legend.get_texts())
    finally:
        plt.close(figure)


def test_the_png_of_a_whole_spine_renders() -> None:
    image, result = spine_case(24.0)
    png = render_qc(image, result, title="case")
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_label_runs() -> None:
    assert label_runs(list(range(1, 25))) == "C1-L5"
    assert label_runs([18, 19, 20, 22]) == "T11-L1, L3"
    assert label_runs([19, 28, 20]) == "T12-L1"  # T13 between T12 and L1
    assert label_runs([24, 25]) == "L5-L6"
    assert label_runs([18, 20]) == "T11, L1"  # 11 thoracic: two runs, no T12 implied


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=30), st.floats(1, 30))
def test_spread_labels_keeps_order_gap_and_bounds(z: list[float], gap: float) -> None:
    low, high = 0.0, 600.0
    placed = spread_labels(z, gap, low, high)
    order = np.argsort(-np.asarray(z), kind="stable")
    heights = placed[order]
    assert np.all(np.diff(heights) <= -gap + 1e-9)  # head to foot, at least a gap apart, order kept
    if gap * (len(z) - 1) <= high - low:  # when they fit, they stay inside
        assert heights.max() <= high + 1e-9 and heights.min() >= low - 1e-9
    if all(b - a >= gap for a, b in itertools.pairwise(sorted(z))) and low <= min(z) and max(z) <= high:
        assert np.allclose(placed, z)  # nothing moves that need not

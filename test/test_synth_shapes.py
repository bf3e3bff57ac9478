"""Real vertebra templates (export.synth_shapes) from the bundled VerSe sample mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.anatomy import SpineLevel
from export.synth_render import Canvas
from export.synth_shapes import (
    STEP_MM,
    TEMPLATE_MM,
    _templates_of,
    nearest_templates,
    paint_real_vertebra,
    template_depth,
)

VERSE004 = Path(__file__).parent / "data" / "verse-sub-verse004"


@pytest.fixture(scope="module")
def templates():
    return _templates_of(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz", VERSE004 / "sub-verse004_seg-subreg_ctd.json")


def _local_centre_of_mass(template) -> np.ndarray:
    zyx = np.argwhere(template.depth > 0)
    return zyx.mean(axis=0)[::-1] * STEP_MM - TEMPLATE_MM / 2.0  # (u, v, w)


def test_templates_sit_in_their_own_frame(templates) -> None:
    assert {t.label for t in templates} >= {17, 18, 19, 20, 21, 22, 23}
    for template in templates:
        centre = template.depth.shape[0] // 2
        assert template.depth[centre, centre, centre] > 2.0, template.source  # the body centre is deep in bone
        u, v, _ = _local_centre_of_mass(template)
        assert v > 4.0, template.source  # posterior elements behind the body (+v = posterior)
        assert abs(u) < 4.0, template.source  # left-right symmetric
        assert 15.0 < template.spacing_mm < 45.0


def test_painted_volume_follows_the_scale(templates) -> None:
    template = next(t for t in templates if t.label == 22)
    own = float((template.depth > 0).sum()) * STEP_MM**3
    canvas = Canvas.empty(np.array([-60.0, -60.0, -60.0]), np.array([1.0, 1.0, 1.0]), (120, 120, 120))
    frame = np.eye(3)
    level = SpineLevel(22, np.zeros(3), frame, 25.0, 18.0, 12.0, template.spacing_mm * 1.1)
    paint_real_vertebra(canvas, level, [template], np.random.default_rng(0))
    painted = float(((canvas.depth > 0) & (canvas.label == 22)).sum())
    assert 1.1**3 * 0.8 < painted / own < 1.1**3 * 1.2


def test_depth_is_exact_on_the_template_grid(templates) -> None:
    template = templates[0]
    axis = np.arange(-10.0, 10.5, STEP_MM)
    w, v, u = np.meshgrid(axis, axis, axis, indexing="ij")
    sampled = template_depth(template, u, v, w, (1.0, 1.0, 1.0))
    half = int(TEMPLATE_MM / 2 / STEP_MM)
    np.testing.assert_allclose(sampled, template.depth[half - 10:half + 11, half - 10:half + 11, half - 10:half + 11],
                               atol=1e-5)


def test_missing_levels_borrow_the_nearest(templates) -> None:
    library = {t.label: (t,) for t in templates}
    assert nearest_templates(library, 15)[0].label == 16  # T8 borrows T9
    assert nearest_templates(library, 25)[0].label == 24  # L6 borrows L5

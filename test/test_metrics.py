"""Metric definitions: geometry you can check by hand, pinned empty cases, properties on random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from evaluation import metrics
from evaluation.metrics import (
    SurfaceDistances,
    bounding_boxes,
    centres_of_mass_index,
    dice,
    hausdorff_mm,
    hd95_mm,
    identify,
    surface,
    surface_distances_mm,
)
from spine.image import Geometry

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

masks_3d = arrays(np.bool_, st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7)))
spacings = st.tuples(*(st.floats(0.3, 3.0, allow_nan=False) for _ in range(3)))


def box_mask(shape: tuple[int, int, int], start: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return m


def plain_directed_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The definition, full volume, SciPy only: d(s, surface b) for s on surface a."""
    cross = ndimage.generate_binary_structure(3, 1)
    s_a = a & ~ndimage.binary_erosion(a, cross, border_value=0)
    s_b = b & ~ndimage.binary_erosion(b, cross, border_value=0)
    return ndimage.distance_transform_edt(~s_b, sampling=spacing)[s_a]


# --------------------------------------------------------------------------- Dice


def test_dice_identical_is_one_and_disjoint_is_zero() -> None:
    m = box_mask((6, 6, 6), (1, 1, 1), (3, 3, 3))
    assert dice(m, m) == 1.0
    assert dice(m, box_mask((6, 6, 6), (4, 4, 4), (2, 2, 2))) == 0.0


def test_dice_by_hand() -> None:
    a = box_mask((4, 4, 4), (0, 0, 0), (2, 2, 2))  # 8 voxels
    b = box_mask((4, 4, 4), (1, 0, 0), (2, 2, 2))  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)


def test_dice_empty_masks_pinned() -> None:
    empty = np.zeros((3, 3, 3), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, box_mask((3, 3, 3), (0, 0, 0), (1, 1, 1))) == 0.0


def test_dice_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))


@FAST
@given(st.data())
def test_dice_symmetric_and_bounded(data: st.DataObject) -> None:
    a = data.draw(masks_3d)
    b = data.draw(arrays(np.bool_, a.shape))
    d = dice(a, b)
    assert 0.0 <= d <= 1.0
    assert d == dice(b, a)
    if a.any():
        assert dice(a, a) == 1.0


# --------------------------------------------------------------------------- surfaces


def test_surface_of_a_cube_is_its_shell() -> None:
    m = box_mask((5, 5, 5), (1, 1, 1), (3, 3, 3))
    s = surface(m)
    assert s.sum() == 26 and not s[2, 2, 2]


def test_surface_includes_voxels_on_the_volume_edge() -> None:
    full = np.ones((3, 3, 3), bool)
    assert surface(full).sum() == 26  # only the centre has all six neighbours inside
    assert surface(np.ones((2, 2, 2), bool)).all()


def test_surface_uses_the_6_connected_cross() -> None:
    m = box_mask((5, 5, 5), (1, 1, 1), (3, 3, 3))
    m[1, 1, 1] = False  # a missing corner exposes no face of the centre voxel
    assert not surface(m)[2, 2, 2]


# --------------------------------------------------------------------------- distances by hand


def test_two_single_voxels_two_mm_apart() -> None:
    a = np.zeros((3, 3, 6), bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[1, 1, 3] = True
    sd = surface_distances_mm(a, b, (1.0, 1.0, 1.0))
    assert hausdorff_mm(sd) == pytest.approx(2.0)
    assert hd95_mm(sd) == pytest.approx(2.0)
    # the same pair one voxel apart along an axis of 2 mm voxels
    c = np.zeros_like(a)
    c[1, 1, 2] = True
    assert hausdorff_mm(surface_distances_mm(a, c, (1.0, 1.0, 2.0))) == pytest.approx(2.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_anisotropic_spacing_scales_each_axis(axis: int) -> None:
    spacing = (0.7, 1.3, 2.5)
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    index = [1, 1, 1]
    index[axis] = 3
    b[tuple(index)] = True
    assert hausdorff_mm(surface_distances_mm(a, b, spacing)) == pytest.approx(2 * spacing[axis])


def test_diagonal_distance_is_euclidean_in_mm() -> None:
    a = np.zeros((3, 3, 3), bool)
    b = np.zeros_like(a)
    a[0, 0, 0] = b[1, 2, 2] = True
    expected = math.sqrt(1.5**2 + (2 * 0.5) ** 2 + (2 * 2.0) ** 2)
    assert hausdorff_mm(surface_distances_mm(a, b, (1.5, 0.5, 2.0))) == pytest.approx(expected, rel=1e-6)


@FAST
@given(axis=st.integers(0, 2), shift=st.integers(1, 3), spacing=spacings)
def test_box_translated_by_k_voxels_has_hd_k_times_spacing(axis: int, shift: int, spacing: tuple) -> None:
    shape = (12, 12, 12)
    a = box_mask(shape, (2, 2, 2), (5, 5, 5))
    start = [2, 2, 2]
    start[axis] += shift
    b = box_mask(shape, tuple(start), (5, 5, 5))  # type: ignore[arg-type]
    sd = surface_distances_mm(a, b, spacing)
    assert hausdorff_mm(sd) == pytest.approx(shift * spacing[axis], rel=1e-5)
    assert hd95_mm(sd) <= hausdorff_mm(sd) + 1e-9


def test_identical_masks_have_zero_distances() -> None:
    m = box_mask((6, 7, 8), (1, 2, 3), (3, 3, 2))
    sd = surface_distances_mm(m, m, (1.0, 2.0, 3.0))
    assert hd95_mm(sd) == hausdorff_mm(sd) == 0.0


def test_hd95_is_directed_not_pooled() -> None:
    # P: one voxel; G: that voxel plus one 9 mm away. G->P = [0, 9], P->G = [0].
    # Directed: P95 of [0, 9] = 8.55 mm. Pooled (MedPy's hd95): P95 of [0, 0, 9] = 8.1 mm.
    p = np.zeros((3, 3, 12), bool)
    p[1, 1, 1] = True
    g = p.copy()
    g[1, 1, 10] = True
    sd = surface_distances_mm(p, g, (1.0, 1.0, 1.0))
    assert hd95_mm(sd) == pytest.approx(8.55)
    pooled = np.percentile(np.concatenate([sd.prediction_to_reference_mm, sd.reference_to_prediction_mm]), 95)
    assert pooled == pytest.approx(8.1)
    assert hausdorff_mm(sd) == pytest.approx(9.0)


def test_mask_touching_the_volume_edge_equals_the_plain_definition() -> None:
    a = box_mask((6, 6, 6), (0, 0, 0), (6, 3, 6))  # touches five faces of the volume
    b = box_mask((6, 6, 6), (0, 2, 0), (6, 4, 6))
    sd = surface_distances_mm(a, b, (1.0, 0.8, 1.2))
    np.testing.assert_allclose(sd.prediction_to_reference_mm, plain_directed_distances(a, b, (1.0, 0.8, 1.2)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sd.reference_to_prediction_mm, plain_directed_distances(b, a, (1.0, 0.8, 1.2)),
                               rtol=1e-5, atol=1e-5)


@FAST
@given(seed=st.integers(0, 2**16), spacing=spacings)
def test_threads_give_the_same_distances_bit_for_bit(seed: int, spacing: tuple) -> None:
    """The inline path runs the far-off distance transforms on every core: nothing may change."""
    rng = np.random.default_rng(seed)
    a = ndimage.binary_dilation(rng.random((14, 18, 16)) < 0.05, iterations=2)
    b = ndimage.binary_dilation(rng.random((14, 18, 16)) < 0.05, iterations=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "SHELL_OFFSETS", 7)  # most voxels go to the distance transform
        one, two = surface_distances_mm(a, b, spacing), surface_distances_mm(a, b, spacing, threads=2)
    np.testing.assert_array_equal(one.prediction_to_reference_mm, two.prediction_to_reference_mm)
    np.testing.assert_array_equal(one.reference_to_prediction_mm, two.reference_to_prediction_mm)


# --------------------------------------------------------------------------- empty masks, pinned


def test_both_empty_distances_are_zero() -> None:
    empty = np.zeros((4, 4, 4), bool)
    sd = surface_distances_mm(empty, empty, (1.0, 1.0, 1.0))
    assert sd.prediction_to_reference_mm.size == sd.reference_to_prediction_mm.size == 0
    assert hd95_mm(sd) == hausdorff_mm(sd) == 0.0


def test_one_empty_mask_gives_infinite_distances() -> None:
    empty = np.zeros((4, 4, 4), bool)
    m = box_mask((4, 4, 4), (1, 1, 1), (2, 2, 2))
    for p, g in ((m, empty), (empty, m)):
        sd = surface_distances_mm(p, g, (1.0, 1.0, 1.0))
        assert hd95_mm(sd) == hausdorff_mm(sd) == math.inf
    sd = surface_distances_mm(m, empty, (1.0, 1.0, 1.0))
    assert sd.prediction_to_reference_mm.size == 8 and np.isinf(sd.prediction_to_reference_mm).all()
    assert sd.reference_to_prediction_mm.size == 0


def test_reducers_of_empty_distance_arrays() -> None:
    assert metrics.directed_percentile_mm(np.zeros(0), 95) == 0.0
    assert hd95_mm(SurfaceDistances(np.zeros(0), np.array([1.0, 2.0]))) == pytest.approx(1.95)


def test_bad_spacing_is_rejected() -> None:
    m = np.ones((2, 2, 2), bool)
    with pytest.raises(ValueError, match="spacing"):
        surface_distances_mm(m, m, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances_mm(m, m, (1.0, 1.0))


# --------------------------------------------------------------------------- properties vs the plain definition


@FAST
@given(st.data())
def test_box_cropped_distances_equal_full_volume_scipy(data: st.DataObject) -> None:
    shape = data.draw(st.tuples(st.integers(3, 9), st.integers(3, 9), st.integers(3, 9)))
    a = data.draw(arrays(np.bool_, shape))
    b = data.draw(arrays(np.bool_, shape))
    spacing = data.draw(spacings)
    if not (a.any() and b.any()):
        return
    sd = surface_distances_mm(a, b, spacing)
    np.testing.assert_allclose(sd.prediction_to_reference_mm, plain_directed_distances(a, b, spacing),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sd.reference_to_prediction_mm, plain_directed_distances(b, a, spacing),
                               rtol=1e-5, atol=1e-5)


@FAST
@given(st.data())
def test_small_blobs_in_a_large_volume_equal_full_volume_scipy(data: st.DataObject) -> None:
    # Sparse masks in a bigger volume: here the crop really is smaller than the volume.
    shape = (14, 15, 16)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    for m in (a, b):
        start = data.draw(st.tuples(st.integers(0, 11), st.integers(0, 12), st.integers(0, 13)))
        m[tuple(slice(s, s + 3) for s in start)] = data.draw(arrays(np.bool_, (3, 3, 3)))
        m[start] = True
    spacing = data.draw(spacings)
    sd = surface_distances_mm(a, b, spacing)
    np.testing.assert_allclose(sd.prediction_to_reference_mm, plain_directed_distances(a, b, spacing),
                               rtol=1e-5, atol=1e-5)
    assert hd95_mm(sd) <= hausdorff_mm(sd) + 1e-9


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (0.3, 0.3, 0.3), (3.0, 0.5, 0.8), (2.5, 2.5, 2.5)])
def test_shell_holds_every_offset_up_to_its_radius_nearest_first(spacing: tuple) -> None:
    offsets, lengths = metrics._shell(spacing, 300)
    assert np.array_equal(offsets[0], [0, 0, 0]) and lengths[0] == 0.0
    assert np.all(np.diff(lengths) >= 0) and len(offsets) >= 300
    np.testing.assert_array_equal(lengths, np.sqrt(((offsets * np.array(spacing)) ** 2).sum(axis=1)))
    radius = lengths[-1]
    reach = [math.ceil(radius / s) + 1 for s in spacing]  # a cube surely holding the whole ball
    cube = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    inside = cube[np.sqrt(((cube * np.array(spacing)) ** 2).sum(axis=1)) <= radius]
    assert {tuple(o) for o in offsets} == {tuple(o) for o in inside}


def test_distances_within_the_shell_are_exact_in_float64() -> None:
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = b[2, 2, 1] = True
    spacing = (0.7, 1.1, 0.9)
    sd = surface_distances_mm(a, b, spacing)
    assert sd.prediction_to_reference_mm.tolist() == [math.sqrt(0.7**2 + 1.1**2)]


@pytest.mark.parametrize(("shell", "limit", "progress"), [(None, None, None), (27, None, None), (None, 200, None),
                                                          (None, None, 1.1)])
@FAST
@given(data=st.data())
def test_surfaces_beyond_the_shell_equal_full_volume_scipy(data: st.DataObject, shell: int | None,
                                                          limit: int | None, progress: float | None) -> None:
    # A near pair (found in the shell) and a far-off part of one mask: the search and, with a
    # small shell, a small gather limit or a demand for more progress than any step makes,
    # the distance transform's fallback, both in one pair.
    shape = (10, 24, 26)
    spacing = data.draw(spacings)
    a = box_mask(shape, (2, 2, 2), (4, 5, 5))
    b = box_mask(shape, (2, 3, 2), (4, 5, 4))
    far = data.draw(st.tuples(st.integers(0, 6), st.integers(12, 20), st.integers(14, 22)))
    b[tuple(slice(s, s + 3) for s in far)] = data.draw(arrays(np.bool_, (3, 3, 3)))
    b[far] = True
    with pytest.MonkeyPatch.context() as patch:
        if shell:
            patch.setattr(metrics, "SHELL_OFFSETS", shell)
        if limit:
            patch.setattr(metrics, "GATHER_LIMIT", limit)
        if progress:
            patch.setattr(metrics, "STEP_PROGRESS", progress)
        sd = surface_distances_mm(a, b, spacing)
    np.testing.assert_allclose(sd.prediction_to_reference_mm, plain_directed_distances(a, b, spacing),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sd.reference_to_prediction_mm, plain_directed_distances(b, a, spacing),
                               rtol=1e-6, atol=1e-6)


@FAST
@given(st.data())
def test_hd95_at_most_hd_and_symmetric(data: st.DataObject) -> None:
    a = data.draw(masks_3d)
    b = data.draw(arrays(np.bool_, a.shape))
    spacing = data.draw(spacings)
    ab = surface_distances_mm(a, b, spacing)
    ba = surface_distances_mm(b, a, spacing)
    assert hd95_mm(ab) <= hausdorff_mm(ab)
    assert hausdorff_mm(ab) == pytest.approx(hausdorff_mm(ba))
    assert hd95_mm(ab) == pytest.approx(hd95_mm(ba))


# --------------------------------------------------------------------------- boxes and centres


@example(np.array([[[0, 1, 1, 0, 1]]], dtype=np.uint8))  # offset added after the division: 1 ulp off
@FAST
@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
              elements=st.integers(0, 5)))
def test_bounding_boxes_and_centres_match_per_label_scans(label_map: np.ndarray) -> None:
    boxes = bounding_boxes(label_map, 5)
    centres = centres_of_mass_index(label_map, 5)
    assert set(boxes) == set(np.unique(label_map)) - {0}
    for label, box in boxes.items():
        where = np.argwhere(label_map == label)
        assert [s.start for s in box] == list(where.min(axis=0))
        assert [s.stop for s in box] == list(where.max(axis=0) + 1)
        np.testing.assert_array_equal(centres[label], where.sum(axis=0) / len(where))  # exact sum, one rounding


def test_bounding_boxes_ignore_labels_above_max() -> None:
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0], m[2, 2, 2] = 3, 30
    assert list(bounding_boxes(m, 28)) == [3]


def test_label_extents_of_wide_integer_maps() -> None:
    """uint64 maps (NumPy's bincount refuses them as they are) with a value far above max_label."""
    m = np.zeros((4, 5, 6), np.uint64)
    m[1, 2, 3], m[1, 2, 4], m[2, 2, 2] = 7, 7, 2**40
    extents = metrics.label_extents(m, 28)
    assert list(extents) == [7] and extents[7].voxels == 2
    np.testing.assert_array_equal(extents[7].centre_index, [1.0, 2.0, 3.5])


def test_bounding_boxes_reject_float_maps_and_negative_labels() -> None:
    with pytest.raises(TypeError):
        bounding_boxes(np.zeros((2, 2, 2)), 28)
    with pytest.raises(ValueError, match="negative"):
        bounding_boxes(np.full((2, 2, 2), -1, dtype=np.int16), 28)


def test_label_extents_in_a_large_sparse_volume() -> None:
    # labels far apart inside a larger volume (offsets of the occupied crop), one above max_label
    m = np.zeros((30, 40, 50), np.uint8)
    m[2:5, 3:9, 4:6] = 20
    m[20:28, 30:33, 40:49] = 28
    m[10, 10, 10] = 29
    m[11, 10, 10] = 1
    extents = metrics.label_extents(m, 28)
    assert sorted(extents) == [1, 20, 28]
    assert extents[20].box == (slice(2, 5), slice(3, 9), slice(4, 6)) and extents[20].voxels == 36
    np.testing.assert_allclose(extents[28].centre_index, [23.5, 31.0, 44.0])


# --------------------------------------------------------------------------- identification


def test_identified_within_20_mm_of_its_own_centroid() -> None:
    ref = {20: np.array([0.0, 0.0, 0.0]), 21: np.array([0.0, 0.0, -30.0])}
    out = identify({20: [0.0, 0.0, 19.0], 21: [0.0, 0.0, -30.0]}, ref)
    assert out[20].identified and out[20].distance_mm == pytest.approx(19.0)
    assert out[21].identified and out[21].distance_mm == 0.0


def test_exactly_20_mm_is_a_hit_and_beyond_is_not() -> None:
    ref = {20: np.zeros(3)}
    assert identify({20: [20.0, 0.0, 0.0]}, ref)[20].identified
    assert not identify({20: [20.001, 0.0, 0.0]}, ref)[20].identified


def test_nearest_among_all_ground_truth_rule() -> None:
    # p_L1 is 12 mm from g_L1 (within 20 mm) but 8 mm from g_L2: not a hit.
    ref = {20: np.array([0.0, 0.0, 0.0]), 21: np.array([0.0, 0.0, -20.0])}
    out = identify({20: [0.0, 0.0, -12.0]}, ref)
    assert out[20].nearest == 21 and not out[20].identified
    assert out[20].distance_mm == pytest.approx(12.0)


def test_predictions_of_labels_not_in_ground_truth_are_ignored() -> None:
    assert identify({5: [0.0, 0.0, 0.0]}, {20: np.zeros(3)}) == {}
    assert identify({20: [0.0, 0.0, 0.0]}, {}) == {}


def test_identification_rate_counts_missing_predictions_as_misses() -> None:
    ref = {20: np.zeros(3), 21: np.array([0.0, 0.0, -30.0])}
    out = identify({20: [0.0, 0.0, 1.0]}, ref)
    assert metrics.identification_rate(out, ref) == 0.5
    assert metrics.identification_rate({}, []) == 0.0


def test_threshold_is_in_mm_with_anisotropic_spacing() -> None:
    # 5 mm slices: a prediction 5 voxels off along k is 25 mm away: a miss, although it is
    # within "20" in voxel units (the reference helpers' bug). 3 voxels = 15 mm: a hit.
    geometry = Geometry(size=(40, 40, 40), spacing_mm=(1.0, 1.0, 5.0), origin_mm=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    g = {20: geometry.index_to_world([10, 10, 10])}
    assert not identify({20: geometry.index_to_world([10, 10, 15])}, g)[20].identified
    assert identify({20: geometry.index_to_world([10, 10, 13])}, g)[20].identified
    # and 15 voxels of 1 mm in-plane are 15 mm: a hit
    assert identify({20: geometry.index_to_world([25, 10, 10])}, g)[20].identified


# --------------------------------------------------------------------------- confidence calibration


def test_calibration_bins_and_ece_pinned() -> None:
    table, ece = metrics.calibration([0.95, 0.95, 0.55, 0.55], [True, True, True, False])
    assert [(b.low, b.high, b.count, b.confidence, b.accuracy) for b in table] == [
        (0.5, 0.6, 2, 0.55, 0.5), (0.9, 1.0, 2, 0.95, 1.0)]
    assert ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    # Bins are [low, high): a confidence on an edge opens the bin above it; 1.0 closes the last, 0.0 opens the first.
    assert [(b.low, b.high) for b in metrics.calibration([0.3, 0.6, 0.7], [True] * 3)[0]] == [
        (0.3, 0.4), (0.6, 0.7), (0.7, 0.8)]
    assert metrics.calibration([1.0], [True]) == ([metrics.ReliabilityBin(0.9, 1.0, 1, 1.0, 1.0)], 0.0)
    assert metrics.calibration([0.0], [False]) == ([metrics.ReliabilityBin(0.0, 0.1, 1, 0.0, 0.0)], 0.0)
    assert metrics.calibration([], []) == ([], 0.0)  # nothing claimed, nothing miscalibrated


def test_calibration_refuses_mismatched_or_out_of_range_input() -> None:
    with pytest.raises(ValueError, match="2 confidences but 1 outcomes"):
        metrics.calibration([0.5, 0.5], [True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.calibration([1.2], [True])


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60),
       seed=st.integers(0, 2**16))
def test_calibration_properties(pairs: list[tuple[float, bool]], seed: int) -> None:
    """ECE lies in [0, 1], ignores the order of the claims, counts every claim once, and with one bin is the gap
    between the mean confidence and the share right."""
    p, right = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    table, ece = metrics.calibration(p, right)
    assert 0.0 <= ece <= 1.0 and sum(b.count for b in table) == len(p)
    order = np.random.default_rng(seed).permutation(len(p))
    assert metrics.calibration(p[order], right[order])[1] == pytest.approx(ece, abs=1e-12)
    assert metrics.calibration(p, right, bins=1)[1] == pytest.approx(abs(right.mean() - p.mean()), abs=1e-12)

"""Fragments at the field of view's ends (algorithm.fragments) on drawn phantoms: a vertebra the view cuts, its
own arch, and the neighbour's arch beyond it as a sliver of unclaimed bone."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from algorithm.detect import sub_grid
from algorithm.fragments import MIN_ML, edge_fragments
from spine.image import Geometry

SPACING = 1.5
T12, T11, L1, L2, L5 = 19, 18, 20, 21, 24


def _box(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    return (x, y, z)


# The neighbour's arch at the top: behind the canal, midline, above the cut vertebra's centroid, up to the view's end.
SLIVER = _box((-8.0, 8.0), (36.0, 50.0), (5.0, 12.0))


def _phantom(top_mm: float = 12.0, bottom_mm: float = -80.0, sliver: tuple[tuple[float, float], ...] | None = SLIVER,
             sliver_hu: float = 400.0) -> tuple[sitk.Image, np.ndarray, list[tuple[int, np.ndarray]]]:
    """CT (LPS, identity, 1.5 mm), the label map on its grid and the chain: T12 centred at z 0 (its body reaching
    the view's top at ``top_mm``, its own arch at its mid-height), L1 below it at z -35."""
    x = np.arange(-45.0, 45.0 + 1e-6, SPACING)
    y = np.arange(-30.0, 90.0 + 1e-6, SPACING)
    z = np.arange(bottom_mm, top_mm + 1e-6, SPACING)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    ct = np.full(xx.shape, -50.0, dtype=np.float32)
    labels = np.zeros(xx.shape, dtype=np.uint8)
    for label, centre in ((T12, 0.0), (L1, -35.0)):
        body = (xx**2 + yy**2 <= 14.0**2) & (np.abs(zz - centre) <= 12.0)
        arch = (np.abs(xx) <= 10.0) & (yy >= 28.0) & (yy <= 45.0) & (np.abs(zz - centre + 4.0) <= 5.0)
        ct[body | arch] = 400.0
        labels[body | arch] = label
    if sliver is not None:
        (x0, x1), (y0, y1), (z0, z1) = sliver
        ct[(xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & (zz >= z0) & (zz <= z1)] = sliver_hu
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((SPACING,) * 3)
    image.SetOrigin((float(x[0]), float(y[0]), float(z[0])))
    chain = [(T12, np.array([0.0, 0.0, 0.0])), (L1, np.array([0.0, 0.0, -35.0]))]
    return image, labels, chain


def _sliver_centre(sliver: tuple[tuple[float, float], ...] = SLIVER) -> np.ndarray:
    return np.array([(a + b) / 2.0 for a, b in sliver])


def test_the_neighbours_arch_beyond_a_cut_vertebra_is_its_fragment() -> None:
    image, labels, chain = _phantom()
    fragments = edge_fragments(image, labels, Geometry.of(image), chain)
    assert [(f.label, f.end) for f in fragments] == [(T11, "top")]
    fragment = fragments[0]
    (x0, x1), (y0, y1), (z0, z1) = SLIVER
    assert fragment.volume_ml == pytest.approx((x1 - x0) * (y1 - y0) * (z1 - z0) / 1000.0, rel=0.3)
    assert np.linalg.norm(np.asarray(fragment.position_mm) - _sliver_centre()) < 1.5
    assert np.all(labels.flat[fragment.indices] == 0)  # only unclaimed voxels
    assert fragment.to_dict()["name"] == "T11"


def test_a_label_map_reaching_past_the_view_finds_the_same_fragment() -> None:
    """The segment stage's map may end at the view's end (as above) or reach past it over the padding."""
    image, labels, chain = _phantom()
    grid = Geometry.of(image)
    wider = sub_grid(grid, (0, 0, 0), (labels.shape[0] + 10, *labels.shape[1:]))
    padded = np.zeros((labels.shape[0] + 10, *labels.shape[1:]), dtype=np.uint8)
    padded[:labels.shape[0]] = labels
    first = edge_fragments(image, labels, grid, chain)[0]
    second = edge_fragments(image, padded, wider, chain)[0]
    assert second.label == first.label and second.volume_ml == first.volume_ml
    assert np.allclose(second.position_mm, first.position_mm)


def test_a_label_map_short_of_the_view_end_takes_only_voxels_inside_it() -> None:
    """The map covers the patches only: bone between its end and the view's end cannot be written into it
    (a synthetic phantom whose map stopped one voxel short once raised an index error)."""
    image, labels, chain = _phantom()
    short = labels[:-1]
    fragments = edge_fragments(image, short, Geometry.of(image), chain)
    assert [f.label for f in fragments] == [T11]
    assert fragments[0].indices.max() < short.size and np.all(short.flat[fragments[0].indices] == 0)


@pytest.mark.parametrize(("sliver", "top_mm", "why"), [
    (_box((10.0, 34.0), (36.0, 60.0), (5.0, 12.0)), 12.0, "beside the midline: a rib's neck, not an arch"),
    (_box((-8.0, 8.0), (-10.0, 4.0), (5.0, 12.0)), 12.0, "in the body's own column, not behind it"),
    (_box((-8.0, 8.0), (46.0, 58.0), (-6.0, 4.0)), 4.0, "the view cuts the vertebra at its centre: its own arch"),
    (_box((-8.0, 8.0), (36.0, 50.0), (3.0, 8.0)), 12.0, "short of the view's end"),
    (_box((-3.0, 3.0), (36.0, 42.0), (6.0, 12.0)), 12.0, f"smaller than {MIN_ML} ml"),
])
def test_bone_that_is_not_the_neighbours_arch_is_no_fragment(sliver, top_mm, why) -> None:
    image, labels, chain = _phantom(sliver=sliver, top_mm=top_mm)
    assert edge_fragments(image, labels, Geometry.of(image), chain) == [], why


def test_soft_tissue_is_no_fragment() -> None:
    image, labels, chain = _phantom(sliver_hu=80.0)
    assert edge_fragments(image, labels, Geometry.of(image), chain) == []


def test_a_vertebra_that_does_not_reach_the_view_end_has_no_fragment_beyond() -> None:
    image, labels, chain = _phantom(top_mm=30.0, sliver=_box((-8.0, 8.0), (36.0, 50.0), (20.0, 30.0)))
    assert edge_fragments(image, labels, Geometry.of(image), chain) == []


def test_claimed_voxels_stay_with_their_vertebra() -> None:
    """T12's mask takes the sliver's lower part: the fragment is the rest, and smaller."""
    sliver = _box((-10.0, 10.0), (36.0, 56.0), (5.0, 12.0))
    image, labels, chain = _phantom(sliver=sliver)
    grid = Geometry.of(image)
    whole = edge_fragments(image, labels, grid, chain)[0]
    z, y, _ = np.meshgrid(*(np.arange(n) * SPACING + o for n, o in zip(labels.shape, grid.origin_mm[::-1],
                                                                       strict=True)), indexing="ij")
    labels[(z <= 8.0) & (y >= 30.0) & (labels == 0)] = T12
    fragments = edge_fragments(image, labels, grid, chain)
    assert [f.label for f in fragments] == [T11]
    assert np.all(labels.flat[fragments[0].indices] == 0)
    assert fragments[0].volume_ml < 0.75 * whole.volume_ml


def test_no_label_that_the_chain_has_already() -> None:
    """A chain labelled T12 above T11 (a decoder's or a person's slip): neither end gets a fragment, the top's
    would be T11, the bottom's T12."""
    image, labels, chain = _phantom()
    assert edge_fragments(image, labels, Geometry.of(image), [(T12, chain[0][1]), (T11, chain[1][1])]) == []
    assert edge_fragments(image, labels, Geometry.of(image), []) == []


def test_a_centroid_past_the_map_end_finds_nothing_and_does_not_fail() -> None:
    """The top vertebra's centroid a few voxels above the map's end (or the bottom's below its start)."""
    image, labels, chain = _phantom()
    grid = Geometry.of(image)
    for centre_z in (15.5, 17.0):
        assert edge_fragments(image, labels, grid, [(T12, np.array([0.0, 0.0, centre_z])), chain[1]]) == []
    for rows in (3, 5):
        short = labels[rows:]
        below = float(grid.origin_mm[2]) + (rows - 2) * SPACING
        assert all(f.end == "top" for f in edge_fragments(image, short, sub_grid(grid, (rows, 0, 0), short.shape),
                                                           [chain[0], (L1, np.array([0.0, 0.0, below]))]))


def test_a_chain_of_one_reads_the_spine_along_the_scanner_axis() -> None:
    image, labels, chain = _phantom()
    assert [(f.label, f.end) for f in edge_fragments(image, labels, Geometry.of(image), chain[:1])] == [(T11, "top")]


def test_the_bottom_end_mirrors_the_top() -> None:
    """Flipped head to foot: L1 (label 20) cut at the view's bottom, the arch beyond it below its centroid is
    L2's. Below L5 lies the sacrum: no fragment there."""
    image, labels, _ = _phantom()
    flipped = sitk.Flip(image, [False, False, True])
    flipped.SetDirection(image.GetDirection())
    top = image.TransformIndexToPhysicalPoint((0, 0, image.GetSize()[2] - 1))[2]
    flipped.SetOrigin((image.GetOrigin()[0], image.GetOrigin()[1], -top))
    flipped_labels = labels[::-1].copy()
    flipped_labels[flipped_labels == T12] = 99
    flipped_labels[flipped_labels == L1] = T12
    flipped_labels[flipped_labels == 99] = L1
    chain = [(T12, np.array([0.0, 0.0, 35.0])), (L1, np.array([0.0, 0.0, 0.0]))]
    fragments = edge_fragments(flipped, flipped_labels, Geometry.of(flipped), chain)
    assert [(f.label, f.end) for f in fragments] == [(L2, "bottom")]
    assert np.linalg.norm(np.asarray(fragments[0].position_mm) - _sliver_centre() * [1, 1, -1]) < 1.5
    flipped_labels[flipped_labels == L1] = L5
    assert edge_fragments(flipped, flipped_labels, Geometry.of(flipped),
                          [(T12, np.array([0.0, 0.0, 35.0])), (L5, np.array([0.0, 0.0, 0.0]))]) == []


def test_height_and_depth_are_judged_along_the_spine_not_the_scanner() -> None:
    """The same sliver, 5-12 mm above and 36-50 mm behind T12's centroid in scanner axes: with the chain leaning
    forward 40 degrees (a kyphotic upper back, a flexed neck) it lies behind and below T12's centroid along the
    spine, where T12's own arch is, so it is no fragment."""
    image, labels, chain = _phantom()
    lean = np.deg2rad(40.0)
    leaning = [(T12, chain[0][1]), (L1, chain[0][1] - 35.0 * np.array([0.0, -np.sin(lean), np.cos(lean)]))]
    assert [f.label for f in edge_fragments(image, labels, Geometry.of(image), chain)] == [T11]
    assert edge_fragments(image, labels, Geometry.of(image), leaning) == []


def test_a_fragment_takes_what_a_neighbour_holds_by_the_bone_floor_alone() -> None:
    """T12's doubtful extension (held by the segment stage's bone floor) covers the sliver's lower part: the
    fragment takes it back, and the voxel counts and ``held_by_bone`` follow."""
    from algorithm.fragments import write_fragments
    from algorithm.segment import Segmentation

    image, labels, chain = _phantom()
    grid = Geometry.of(image)
    whole = edge_fragments(image, labels, grid, chain)[0]
    z = (np.arange(labels.shape[0]) * SPACING + grid.origin_mm[2])[:, None, None]
    held = (z <= 8.0) & (labels == 0) & (sitk.GetArrayFromImage(image) >= 300.0)
    held[:, :, :] &= np.isin(np.arange(labels.size).reshape(labels.shape), whole.indices)
    assert held.any()
    labels[held] = T12
    assert edge_fragments(image, labels, grid, chain)[0].volume_ml < whole.volume_ml  # claimed: not taken
    fragments = edge_fragments(image, labels, grid, chain, held)
    assert fragments[0].volume_ml == whole.volume_ml  # held by the bone floor alone: taken
    counts = {T12: int((labels == T12).sum()), L1: int((labels == L1).sum())}
    segmentation = Segmentation(labels.copy(), grid, dict(counts), held.copy())
    write_fragments(segmentation, fragments)
    assert segmentation.voxels == {T12: counts[T12] - int(held.sum()), L1: counts[L1],
                                   T11: int(fragments[0].indices.size)}
    assert segmentation.voxels[T12] == int((segmentation.labels == T12).sum())
    assert not segmentation.held_by_bone.any()

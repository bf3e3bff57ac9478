"""export.reformat: real CTs in the forms users meet, labels following (bench/real.py --reformats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from test_support import REPO

from export.real_cases import shared_data_dir
from export.reformat import FWHM_PER_SIGMA, REFORMATS, Reformat, index_axis, reformat, reformats
from spine.case import Case
from spine.image import Geometry, image_from_array

PIR = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # i -> P, j -> I, k -> R (VerSe's sagittal scans), LPS


def stacked_case(direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(2.0, 2.0, 2.0),
                 levels: int = 5) -> Case:
    """A 60 mm wide column (in a 160 mm wide CT) of ``levels`` 16 mm bone blocks (labels 20, 21, ... from the
    head down), 4 mm discs, 34 mm of CT below the lowest: world z runs head-up whatever the grid's direction."""
    extent_mm = np.array([160.0, 80.0, 20.0 * levels + 40.0])  # world x, y, z
    grid_world_spacing = np.abs(np.asarray(direction, dtype=float).reshape(3, 3)) @ np.asarray(spacing)
    size = tuple(round(e / s) for e, s in zip(extent_mm, grid_world_spacing, strict=True))
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    index_size = np.rint(np.abs(matrix.T) @ np.asarray(size, dtype=float)).astype(int)  # world sizes -> index sizes
    # origin: the world corner the index (0, 0, 0) maps to, so the grid covers [0, extent] in world mm
    world_of_last = matrix @ ((index_size - 1) * np.asarray(spacing))
    origin = np.where(world_of_last < 0, -world_of_last, 0.0)
    geometry = Geometry(tuple(int(s) for s in index_size), tuple(spacing), tuple(origin), tuple(direction))
    k, j, i = np.meshgrid(*(np.arange(n) for n in geometry.shape_zyx), indexing="ij")
    world = geometry.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)).reshape(
        (*geometry.shape_zyx, 3))
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    ct = np.full(geometry.shape_zyx, -50.0, dtype=np.float32)
    mask = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    centroids = {}
    for level in range(levels):
        top = extent_mm[2] - 10.0 - 20.0 * level
        inside = (np.abs(x - 80.0) <= 30.0) & (np.abs(y - 40.0) <= 15.0) & (z <= top) & (z > top - 16.0)
        ct[inside] = 400.0
        mask[inside] = 20 + level
        centroids[20 + level] = np.array([80.0, 40.0, top - 8.0])
    return Case("blocks", image_from_array(ct.astype(np.int16), geometry), image_from_array(mask, geometry),
                centroids, "test")


def labels_of(case: Case) -> list[int]:
    return [int(v) for v in np.unique(sitk.GetArrayViewFromImage(case.mask)) if v]


def test_each_variant_is_asked_for_by_its_own_name() -> None:
    """``bench/real.py --reformats NAME`` takes the name its tables print (a key once read "thick-slices" and built
    "slices-5mm")."""
    case = stacked_case((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    neck = Case("neck", case.ct, None, {level: case.centroids_mm[20 + k] for k, level in enumerate((3, 4, 5, 6, 7))},
                "test")
    for name, build in REFORMATS.items():
        recipe = build(neck if name == "from-c6" else case)
        assert recipe is not None and recipe.name == name


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), PIR])
def test_every_variant_keeps_what_is_in_view(direction):
    case = stacked_case(tuple(float(d) for d in direction))
    variants = {recipe.name: variant for recipe, variant in reformats(case)}
    assert set(variants) == {"sacrum-cropped", "top-cropped", "sagittal-slab", "slices-5mm", "slices-3mm",
                             "pixels-4mm", "slab-sacrum-cropped"}
    # the crop below the lowest vertebra keeps all five, and nothing of the CT below them
    bottom = variants["sacrum-cropped"]
    assert labels_of(bottom) == [20, 21, 22, 23, 24]
    corners = np.array(list(np.ndindex(2, 2, 2))) * (np.array(bottom.geometry.size) - 1)
    z_low = bottom.geometry.index_to_world(corners.astype(float))[:, 2].min()
    labelled = np.argwhere(sitk.GetArrayViewFromImage(case.mask) > 0)[:, ::-1].astype(float)
    lowest = case.geometry.index_to_world(labelled)[:, 2].min()
    # 3 mm below the lowest block's lowest voxel, or up to one voxel less where the grid ends on that side
    assert lowest - 3.0 - 1e-6 <= z_low <= lowest - 3.0 + 2.0
    # the top two levels leave the top crop, with their centroids
    top = variants["top-cropped"]
    assert labels_of(top) == [22, 23, 24] and sorted(top.centroids_mm) == [22, 23, 24]
    # thicker slices along the head-foot axis, whichever index axis that is
    for name, mm in (("slices-5mm", 5.0), ("slices-3mm", 3.0)):
        thick = variants[name]
        axis, _ = index_axis(thick.geometry, 2)
        assert thick.geometry.spacing_mm[axis] == pytest.approx(mm)
        assert labels_of(thick) == [20, 21, 22, 23, 24]
    coarse = variants["pixels-4mm"]
    for world_axis in (0, 1):
        assert coarse.geometry.spacing_mm[index_axis(coarse.geometry, world_axis)[0]] == pytest.approx(4.0)
    # a 104 mm slab of a 160 mm wide CT, oriented as VerSe stores sagittal scans
    slab = variants["sagittal-slab"]
    assert slab.geometry.orientation_codes() == ("P", "I", "R")
    assert slab.geometry.spacing_mm[2] == pytest.approx(3.0)
    assert labels_of(slab) == [20, 21, 22, 23, 24]
    # both at once: the slab's width, slices and orientation, and the sacrum crop's bottom
    both = variants["slab-sacrum-cropped"]
    assert both.geometry.orientation_codes() == ("P", "I", "R") and labels_of(both) == [20, 21, 22, 23, 24]
    np.testing.assert_allclose(both.geometry.world_spacing_mm, slab.geometry.world_spacing_mm)
    for world_axis in (0, 2):
        extent = [view.geometry.index_to_world(np.array(list(np.ndindex(2, 2, 2))) * (np.array(view.geometry.size)
                  - 1.0))[:, world_axis] for view in (both, slab, bottom)]
        assert extent[0].min() == pytest.approx(max(extent[1].min(), extent[2].min()), abs=3.0)
        assert extent[0].max() == pytest.approx(min(extent[1].max(), extent[2].max()), abs=3.0)
    for variant in variants.values():  # annotated centroids keep their world position
        for v, c in variant.centroids_mm.items():
            np.testing.assert_allclose(c, case.centroids_mm[v])


def test_variants_that_do_not_apply_are_left_out():
    few = stacked_case(levels=3)
    names = {recipe.name for recipe, _ in reformats(few)}
    assert "top-cropped" not in names  # fewer than four vertebrae: no two to crop away
    thin = stacked_case(spacing=(4.0, 4.0, 5.0))
    assert {recipe.name for recipe, _ in reformats(thin)} == {"sacrum-cropped", "top-cropped", "sagittal-slab",
                                                               "slab-sacrum-cropped"}
    with pytest.raises(ValueError, match="unknown reformat"):
        reformats(few, ["rotated"])


@pytest.mark.parametrize(("slices_mm", "thickened"), [(2.0, True), (3.0, False)])
def test_a_slab_already_gets_slab_thick_slices(slices_mm: float, thickened: bool) -> None:
    """A CT 100 mm wide (a VerSe sagittal scan) is not cut to a slab again; its sagittal slices are thickened to a
    slab's 3 mm where they are thinner (verse014's 2 mm), and a scan of 3 mm slices has no such variant."""
    wide = stacked_case()
    narrow = reformat(wide, Reformat("narrow", (slices_mm, 2.0, 2.0), (15.0, 0.0, 0.0),
                                     (15.0 + 100.0 / 2.0, wide.geometry.size[1] - 1.0, wide.geometry.size[2] - 1.0),
                                     0.5, orientation="PIR"))
    assert narrow.geometry.world_spacing_mm[0] == pytest.approx(slices_mm)
    variants = {recipe.name: variant for recipe, variant in reformats(narrow)}
    assert ("sagittal-slab" in variants) is thickened
    if thickened:
        slab = variants["sagittal-slab"]
        assert slab.geometry.world_spacing_mm[0] == pytest.approx(3.0)
        assert labels_of(slab) == labels_of(narrow) == [20, 21, 22, 23, 24]


def test_a_vertebra_mostly_cut_away_loses_its_label():
    case = stacked_case()
    g = case.geometry
    # keep the top 4 of the lowest block's 8 voxel planes (z 36-50 mm): half of it is gone
    recipe = Reformat("cut", g.spacing_mm, (0.0, 0.0, float(g.world_to_index([0.0, 0.0, 44.0])[2])),
                      tuple(float(s - 1) for s in g.size), 0.85)
    cut = reformat(case, recipe)
    assert 24 not in labels_of(cut) and 24 not in cut.centroids_mm
    assert labels_of(cut) == [20, 21, 22, 23]


def test_a_thick_slice_averages_what_it_covers():
    """A 1 mm bright plate seen through 5 mm slices: the Gaussian slice profile of FWHM sqrt(5^2 - 1^2) mm."""
    shape = (60, 8, 8)
    ct = np.zeros(shape, dtype=np.float32)
    ct[30] = 1000.0
    geometry = Geometry((8, 8, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros(shape, dtype=np.uint8)
    case = Case("plate", image_from_array(ct.astype(np.int16), geometry), image_from_array(mask, geometry), {}, "t")
    recipe = Reformat("thick", (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (7.0, 7.0, 55.0), 0.5)
    thick = sitk.GetArrayFromImage(reformat(case, recipe).ct)[:, 4, 4].astype(float)
    sigma_mm = math.sqrt(5.0**2 - 1.0**2) / FWHM_PER_SIGMA
    peak = 1000.0 / (sigma_mm * math.sqrt(2.0 * math.pi))  # a unit-width plate under the profile
    assert thick.max() == pytest.approx(peak, rel=0.03)  # the slice centred on the plate (z = 30 mm)
    centre = int(np.argmax(thick))
    beside = peak * math.exp(-(5.0**2) / (2.0 * sigma_mm**2))  # the next slice, 5 mm away, sees the profile's tail
    assert thick[centre - 1] == pytest.approx(beside, abs=1.0) and thick[centre + 1] == pytest.approx(beside, abs=1.0)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([(1, 0, 0, 0, 1, 0, 0, 0, 1), PIR, (-1, 0, 0, 0, -1, 0, 0, 0, 1)]),
       st.sampled_from(["sacrum-cropped", "top-cropped", "slices-5mm", "slices-3mm", "pixels-4mm"]))
def test_a_variant_does_not_depend_on_the_grid_s_orientation(direction, name):
    """The same anatomy on grids of other orientations: the same world spacing, labels and volumes.

    Voxel for voxel the grids may differ by the phase of their samples (a grid is laid from its own first
    voxel), so a block's volume may differ by one voxel layer per axis: ``sum_a s_a / e_a`` of it, with
    ``e`` the block's extent (60, 30, 16 mm) and ``s`` the world spacing.
    """
    (_, a), = reformats(stacked_case(), [name])
    (_, b), = reformats(stacked_case(tuple(float(d) for d in direction)), [name])
    np.testing.assert_allclose(a.geometry.world_spacing_mm, b.geometry.world_spacing_mm)
    assert labels_of(a) == labels_of(b) and sorted(a.centroids_mm) == sorted(b.centroids_mm)
    voxel = float(np.prod(a.geometry.spacing_mm))
    layer = float(np.sum(a.geometry.world_spacing_mm / np.array([60.0, 30.0, 16.0])))
    for v in labels_of(a):
        volume_a = float((sitk.GetArrayViewFromImage(a.mask) == v).sum()) * voxel
        volume_b = float((sitk.GetArrayViewFromImage(b.mask) == v).sum()) * voxel
        assert abs(volume_b - volume_a) <= layer * 60.0 * 30.0 * 16.0


def test_the_bundled_example_in_every_form():
    """The real example CT: every variant applies, and the sacrum crop leaves no sacrum label."""
    from export.real_cases import RealCase

    example = REPO / "examples" / "totalsegmentator-example"
    case = RealCase("example", example / "ct.nii.gz", example / "seg-vert_msk.nii.gz").load()
    variants = {recipe.name: variant for recipe, variant in reformats(case)}
    assert set(variants) == {"sacrum-cropped", "top-cropped", "sagittal-slab", "slices-5mm", "pixels-4mm",
                             "slab-sacrum-cropped"}  # its slices are 3 mm already: no slices-3mm
    assert 26 not in labels_of(variants["sacrum-cropped"]) and 26 not in labels_of(variants["slab-sacrum-cropped"])
    assert {18, 19}.isdisjoint(labels_of(variants["top-cropped"]))


def test_a_case_with_centroids_only_is_cropped_and_keeps_the_centres_in_view():
    """A centroid-only case (OpenKBP: no masks) takes the crops only (``CENTROID_ONLY``): its top two levels
    leave with their centres, the rest keep theirs; a variant that needs the mask is refused by name."""
    from export.reformat import CENTROID_ONLY

    full = stacked_case()
    bare = Case("bare", full.ct, None, dict(full.centroids_mm), "test")
    out = reformats(bare)
    assert CENTROID_ONLY == ("top-cropped", "from-c6")
    assert [recipe.name for recipe, _ in out] == ["top-cropped"]  # no C5-C7: no chest CT's top
    variant = out[0][1]
    assert variant.mask is None and variant.case_id == "bare~top-cropped"
    assert sorted(variant.centroids_mm) == [22, 23, 24]
    np.testing.assert_allclose(variant.centroids_mm[23], full.centroids_mm[23])
    with pytest.raises(ValueError, match="needs the case's mask"):
        reformat(bare, REFORMATS["slices-5mm"](bare))


def test_a_chest_ct_s_top_starts_between_c5_and_c6():
    """``from-c6`` cuts half way between the annotated C5 and C6 centres: C6 and below stay, C5 and above leave,
    on any grid direction; a case without C5-C7 annotated does not take it."""
    for direction in ((1, 0, 0, 0, 1, 0, 0, 0, 1), PIR):
        full = stacked_case(direction)
        cervical = {level: full.centroids_mm[20 + k] for k, level in enumerate((3, 4, 5, 6, 7))}
        bare = Case("neck", full.ct, None, cervical, "test")
        ((recipe, variant),) = reformats(bare, ["from-c6"])
        assert recipe.name == "from-c6" and variant.case_id == "neck~from-c6"
        assert sorted(variant.centroids_mm) == [6, 7]
        corners = variant.geometry.index_to_world(np.array(list(np.ndindex(2, 2, 2))) * (
            np.array(variant.geometry.size) - 1.0))
        top = corners[:, 2].max()
        assert cervical[6][2] < top < cervical[5][2]
        assert top == pytest.approx(0.5 * (cervical[5][2] + cervical[6][2]), abs=full.geometry.spacing_mm[2])
    assert reformats(stacked_case(), ["from-c6"]) == []


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared OpenKBP CTs (../shared/data)")
def test_a_real_neck_from_c6_keeps_its_lower_levels():
    """OpenKBP dev pt_12 (annotated C1-T3) from C6 down: C6-T3 stay judged, C1-C5 leave with the skull."""
    from export.real_cases import openkbp_cases

    (case,) = [case for case in openkbp_cases("dev") if case.name == "openkbp-pt_12"]
    ((_, variant),) = reformats(case.load(), ["from-c6"])
    assert sorted(variant.centroids_mm) == [6, 7, 8, 9, 10]

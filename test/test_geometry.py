"""Image geometry and I/O: voxel <-> world in every orientation, exact round trips, clear errors."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.image import (
    Geometry,
    ImageError,
    array_of,
    axis_aligned_geometry,
    image_from_array,
    read_image,
    resample_onto,
    write_image,
    write_text_atomic,
)
from spine.preprocess import crop_patch, gaussian_heatmap, to_model_grid, world_to_zyx, zyx_to_world

REPO = Path(__file__).resolve().parents[1]

# All 48 axis-aligned orientations: a permutation of the world axes with a sign for each.
ORIENTATIONS = [
    (perm, signs)
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1.0, -1.0), repeat=3)
]


def direction_of(perm: tuple[int, ...], signs: tuple[float, ...]) -> tuple[float, ...]:
    matrix = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(zip(perm, signs, strict=True)):
        matrix[world, axis] = sign
    return tuple(matrix.ravel())


def make_image(array: np.ndarray, spacing=(0.8, 1.1, 2.5), origin=(10.0, -20.0, 30.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize(("perm", "signs"), ORIENTATIONS)
def test_index_world_round_trip_matches_itk_in_every_orientation(perm, signs) -> None:
    image = make_image(np.zeros((4, 5, 6), np.uint8), direction=direction_of(perm, signs))
    geometry = Geometry.of(image)
    index = np.array([[0, 0, 0], [5, 4, 3], [2.5, 1.25, 0.5]])
    world = geometry.index_to_world(index)
    for i, row in enumerate(index):
        assert np.allclose(world[i], image.TransformContinuousIndexToPhysicalPoint(row.tolist()))
    assert np.allclose(geometry.world_to_index(world), index)


@settings(max_examples=60, deadline=None)
@given(
    orientation=st.sampled_from(ORIENTATIONS),
    spacing=st.tuples(*[st.floats(0.2, 6.0)] * 3),
    origin=st.tuples(*[st.floats(-500, 500)] * 3),
    points=st.lists(st.tuples(*[st.floats(-300, 300)] * 3), min_size=1, max_size=8),
)
def test_world_index_world_round_trip(orientation, spacing, origin, points) -> None:
    geometry = Geometry((7, 8, 9), spacing, origin, direction_of(*orientation))
    world = np.array(points)
    assert np.allclose(geometry.index_to_world(geometry.world_to_index(world)), world, atol=1e-6)


def test_orientation_codes_follow_nibabel() -> None:
    # identity direction in ITK (LPS) is nibabel's LPS; RAS flips the first two axes
    assert Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).orientation_codes() == ("L", "P", "S")
    ras = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0), ras).orientation_codes() == ("R", "A", "S")
    pir = direction_of((1, 2, 0), (1.0, -1.0, -1.0))  # axis0 -> +y (P), axis1 -> -z (I), axis2 -> -x (R)
    assert Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0), pir).orientation_codes() == ("P", "I", "R")


def test_real_example_orientations(tmp_path: Path) -> None:
    ct = read_image(REPO / "examples" / "totalsegmentator-example" / "ct.nii.gz") if (
        REPO / "examples" / "totalsegmentator-example" / "ct.nii.gz").exists() else None
    if ct is not None:
        assert Geometry.of(ct).orientation_codes() == ("R", "A", "S")
    mask = read_image(REPO / "test" / "data" / "verse-sub-verse004" / "sub-verse004_seg-vert_msk.nii.gz")
    assert Geometry.of(mask).orientation_codes() == ("P", "I", "R")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_write_read_keeps_geometry_exactly(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).integers(0, 29, (5, 6, 7)).astype(np.uint8)
    image = make_image(array, direction=direction_of((2, 0, 1), (1.0, -1.0, 1.0)))
    path = write_image(image, tmp_path / f"mask{suffix}")
    back = read_image(path)
    assert Geometry.of(back).same_as(Geometry.of(image), tol_mm=1e-5)
    assert np.array_equal(array_of(back), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"mask{suffix}"]  # no temp file left


def test_atomic_write_gives_the_usual_permissions(tmp_path: Path) -> None:
    """Regression: results came out 0600 (mkstemp's mode), unreadable to the evaluation container's user."""
    import os

    umask = os.umask(0o022)
    try:
        path = write_image(make_image(np.zeros((2, 2, 2), np.uint8)), tmp_path / "out.mha")
        text = write_text_atomic(tmp_path / "out.json", "{}")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert text.stat().st_mode & 0o777 == 0o644


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.mha"
    with pytest.raises(RuntimeError):
        write_image(sitk.Image(), target)  # an empty image cannot be written
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.mha")
    good = write_image(make_image(np.zeros((20, 20, 20), np.int16)), tmp_path / "good.mha", compress=False)
    truncated = tmp_path / "truncated.mha"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"truncated\.mha"):
        read_image(truncated)
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4), np.int16)), str(flat))
    with pytest.raises(ImageError, match="3-D"):
        read_image(flat)
    rgb = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 4, 3), np.uint8), isVector=True), str(rgb))
    with pytest.raises(ImageError, match="components"):
        read_image(rgb)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"garbage\.nii\.gz"):
        read_image(garbage)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(tmp_path: Path, suffix: str) -> None:
    """Regression: ITK read a truncated NIfTI's missing voxels as garbage, without an error."""
    rng = np.random.default_rng(0)
    good = write_image(make_image(rng.integers(-1000, 2000, (40, 50, 60)).astype(np.int16)), tmp_path / f"ct{suffix}")
    assert read_image(good).GetSize() == (60, 50, 40)  # a whole file passes the check
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    with pytest.raises(ImageError, match=r"truncated"):
        read_image(truncated)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_and_inf_voxels_read_alike_in_every_format(tmp_path: Path, suffix: str, dtype: type) -> None:
    """Regression: ITK <= 5.4 reads a NIfTI file's NaN/inf voxels as 0 (nifti_read_buffer);
    read_image puts them back from the raw bytes, so the checks downstream see every format alike."""
    array = np.random.default_rng(1).normal(size=(9, 11, 13)).astype(dtype)
    array[2:4, 3:6, :] = np.nan
    array[0, 0, 0], array[-1, -1, -1] = np.inf, -np.inf
    path = write_image(make_image(array), tmp_path / f"nan{suffix}")
    back = sitk.GetArrayFromImage(read_image(path))
    np.testing.assert_array_equal(back, array)  # NaN positions included
    assert back.dtype == array.dtype


def test_nan_voxels_of_a_big_endian_nifti_are_found(tmp_path: Path) -> None:
    """A NIfTI-1 file written by hand in big-endian order (ITK writes little-endian only)."""
    array = np.arange(2 * 3 * 4, dtype=">f4").reshape(2, 3, 4)
    array[1, 2, 3] = np.nan
    header = bytearray(352)
    struct.pack_into(">i", header, 0, 348)
    struct.pack_into(">8h", header, 40, 3, 4, 3, 2, 1, 1, 1, 1)
    struct.pack_into(">2h", header, 70, 16, 32)  # float32
    struct.pack_into(">8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(">f", header, 108, 352.0)
    struct.pack_into(">f", header, 112, 1.0)  # scl_slope
    header[344:348] = b"n+1\0"
    path = tmp_path / "big.nii"
    path.write_bytes(bytes(header) + array.tobytes())
    assert np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 0) == 2  # ITK: NaN -> 0
    back = sitk.GetArrayFromImage(read_image(path))
    assert np.isnan(back[1, 2, 3]) and np.count_nonzero(np.isnan(back)) == 1
    np.testing.assert_array_equal(np.nan_to_num(back), np.nan_to_num(array.astype(np.float32)))


@pytest.mark.parametrize(("perm", "signs"), ORIENTATIONS[::5])
def test_model_grid_round_trip_on_anisotropic_non_ras_image(perm, signs) -> None:
    """Resampling a label map onto its model grid at its own spacing and back is lossless."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 29, (6, 7, 8)).astype(np.uint8)
    image = make_image(labels, spacing=(0.7, 1.3, 2.9), direction=direction_of(perm, signs))
    spacing_world = np.abs(Geometry.of(image).matrix) @ np.array(image.GetSpacing())
    on_grid, grid = to_model_grid(image, spacing_world[::-1], nearest=True, default=0)
    assert grid.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    back = resample_onto(image_from_array(on_grid, grid), Geometry.of(image), nearest=True)
    assert np.array_equal(array_of(back), labels)
    assert Geometry.of(back).same_as(Geometry.of(image))


def test_axis_aligned_geometry_covers_the_image() -> None:
    geometry = Geometry((10, 20, 30), (1.0, 1.0, 2.0), (5.0, 5.0, 5.0), direction_of((2, 1, 0), (-1.0, 1.0, 1.0)))
    grid = axis_aligned_geometry(geometry, (1.0, 1.0, 1.0))
    corners = geometry.index_to_world(np.array([[0, 0, 0], [9, 19, 29]]))
    inside = grid.world_to_index(corners)
    assert np.all(inside >= -1e-6) and np.all(inside <= np.array(grid.size) - 1 + 1e-6)
    with pytest.raises(ValueError):
        axis_aligned_geometry(geometry, (1.0, 0.0, 1.0))


def test_zyx_world_conversions_are_inverse() -> None:
    grid = Geometry((10, 20, 30), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    zyx = np.array([[1.0, 2.0, 3.0], [4.5, 0.0, 9.0]])
    world = zyx_to_world(grid, zyx)
    assert np.allclose(world[0], [1.0 + 3 * 1.0, 2.0 + 2 * 2.0, 3.0 + 1 * 3.0])
    assert np.allclose(world_to_zyx(grid, world), zyx)


def test_gaussian_heatmap_peak_and_width_in_mm() -> None:
    heat = gaussian_heatmap((21, 21, 21), (10, 10, 10), sigma_mm=4.0, spacing_zyx_mm=(2.0, 1.0, 1.0))
    assert heat.max() == pytest.approx(1.0) and heat[10, 10, 10] == pytest.approx(1.0)
    assert heat[12, 10, 10] == pytest.approx(np.exp(-0.5))  # 2 voxels x 2 mm = one sigma
    assert heat[10, 10, 14] == pytest.approx(np.exp(-0.5))  # 4 voxels x 1 mm


@settings(max_examples=80, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    patch=st.tuples(*[st.integers(1, 6)] * 3),
    center=st.tuples(*[st.floats(-5, 14)] * 3),
)
def test_crop_patch_copies_exactly_the_overlap(shape, patch, center) -> None:
    array = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    out, start = crop_patch(array, center, patch, pad_value=-1)
    assert out.shape == patch
    for p in np.ndindex(*patch):
        src = tuple(s + q for s, q in zip(start, p, strict=True))
        inside = all(0 <= v < n for v, n in zip(src, shape, strict=True))
        assert out[p] == (array[src] if inside else -1)

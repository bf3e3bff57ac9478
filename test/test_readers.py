"""Readers of VerSe BIDS, CTSpine1K and VerSe MICCAI layouts into Case objects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from export.anatomy import default_landmarks_path
from export.readers import (
    CaseFiles,
    centres_of_mass_mm,
    detect_layout,
    list_cases,
    read_case,
    read_cases,
)
from spine.image import Geometry, array_of, image_from_array, read_image, write_image
from spine.verse import read_centroids_mm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOTALSEG = DATA / "totalsegmentator-example"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared sample data not available")
needs_landmarks = pytest.mark.skipif(not default_landmarks_path().is_file(), reason="landmarks.csv not available")


def _synthetic(seed: int, **kwargs):
    from export.synth import synth_case

    return synth_case(seed, max_voxels=1_500_000, **kwargs)


@needs_data
def test_tptbox_sample_reads_as_verse_with_mask_centres():
    (case,) = list(read_cases(DATA / "tptbox-lumbar"))
    assert case.case_id == "sub-ct_label-22"
    assert case.mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(array_of(case.mask)).tolist()) == {0, 21, 22, 23}
    assert set(case.centroids_mm) == {21, 22, 23}  # no JSON: centres of mass
    mask = array_of(case.mask)
    i, j, k = np.rint(case.geometry.world_to_index(case.centroids_mm[22])).astype(int)
    assert mask[k, j, i] == 22


@needs_data
def test_mask_only_verse_sample_is_listed_skipped_or_refused():
    (files,) = list_cases(DATA / "verse-sub-verse004")
    assert files.case_id == "sub-verse004" and files.ct is None
    assert files.mask is not None and files.centroids is not None
    assert list(read_cases(DATA / "verse-sub-verse004")) == []
    with pytest.raises(ValueError, match=r"sub-verse004_seg-vert_msk\.nii\.gz: no CT"):
        list(read_cases(DATA / "verse-sub-verse004", strict=True))


def _bids_from_totalseg(root: Path, *, flat: bool = False, json_name: str = "sub-ts01_seg-vb_ctd.json") -> Path:
    raw = root if flat else root / "rawdata" / "sub-ts01"
    der = root if flat else root / "derivatives" / "sub-ts01"
    raw.mkdir(parents=True, exist_ok=True)
    der.mkdir(parents=True, exist_ok=True)
    shutil.copy(TOTALSEG / "ct.nii.gz", raw / "sub-ts01_ct.nii.gz")
    shutil.copy(TOTALSEG / "seg-vert_msk.nii.gz", der / "sub-ts01_seg-vert_msk.nii.gz")
    shutil.copy(TOTALSEG / "seg-vert_ctd.json", der / json_name)
    return der


@needs_data
@pytest.mark.parametrize("flat", [False, True])
def test_verse_bids_layout_from_real_ct(tmp_path: Path, flat: bool):
    _bids_from_totalseg(tmp_path, flat=flat)
    assert detect_layout(tmp_path) == "verse"
    (case,) = list(read_cases(tmp_path))
    assert case.case_id == "sub-ts01"
    ct = read_image(TOTALSEG / "ct.nii.gz")
    np.testing.assert_array_equal(array_of(case.ct), array_of(ct))
    np.testing.assert_array_equal(array_of(case.mask), array_of(read_image(TOTALSEG / "seg-vert_msk.nii.gz")))
    expected = read_centroids_mm(TOTALSEG / "seg-vert_ctd.json", Geometry.of(ct))
    assert case.centroids_mm.keys() == expected.keys()
    for label, point in expected.items():
        np.testing.assert_allclose(case.centroids_mm[label], point, atol=1e-9)


@needs_data
def test_subregion_centroids_preferred_over_vertebral_body_json(tmp_path: Path):
    der = _bids_from_totalseg(tmp_path)
    entries = json.loads((TOTALSEG / "seg-vert_ctd.json").read_text())
    entries[1]["X"] += 2.0
    (der / "sub-ts01_seg-subreg_ctd.json").write_text(json.dumps(entries))
    (files,) = list_cases(tmp_path)
    assert files.centroids.name == "sub-ts01_seg-subreg_ctd.json"


@needs_data
def test_mismatched_grids_name_the_mask(tmp_path: Path):
    der = _bids_from_totalseg(tmp_path)
    mask_path = der / "sub-ts01_seg-vert_msk.nii.gz"
    mask = read_image(mask_path)
    mask.SetSpacing((2.0, 3.0, 3.0))
    write_image(mask, mask_path)
    with pytest.raises(ValueError, match=r"sub-ts01_seg-vert_msk\.nii\.gz: grid does not match"):
        list(read_cases(tmp_path))


def test_missing_root_and_duplicate_cases_raise(tmp_path: Path):
    with pytest.raises(ValueError, match="no such folder"):
        list_cases(tmp_path / "absent")
    image = image_from_array(np.zeros((4, 4, 4), np.int16),
                             Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    write_image(image, tmp_path / "a" / "sub-x_ct.nii.gz")
    write_image(image, tmp_path / "b" / "sub-x_ct.nii.gz")
    with pytest.raises(ValueError, match="two CT files for case 'sub-x'"):
        list_cases(tmp_path)


def test_read_case_without_ct_names_the_ground_truth(tmp_path: Path):
    files = CaseFiles("sub-y", "verse", None, tmp_path / "sub-y_seg-vert_msk.nii.gz")
    with pytest.raises(ValueError, match=r"sub-y_seg-vert_msk\.nii\.gz: no CT"):
        read_case(files)


@needs_landmarks
def test_ctspine1k_layout_with_separate_trees(tmp_path: Path):
    case = _synthetic(31, region="lumbar", spacing_mm=(1.6, 1.6, 2.0), orientation="LPS")
    mask = array_of(case.mask).copy()
    lowest = max(label for label in np.unique(mask) if label < 26)
    mask[mask == lowest] = 25  # an L6, as in CTSpine1K's lumbarisation cases
    mask[mask == 26] = 30  # a value CTSpine1K does not use: dropped
    name = "1.3.6.1.4.1.9328.50.4.0004"
    write_image(case.ct, tmp_path / "volumes" / "COLONOG" / f"{name}.nii.gz")
    write_image(image_from_array(mask, case.geometry), tmp_path / "labels" / "COLONOG" / f"{name}_seg.nii.gz")
    assert detect_layout(tmp_path) == "ctspine1k"
    (read,) = list(read_cases(tmp_path))
    assert read.case_id == name
    values = set(np.unique(array_of(read.mask)).tolist())
    assert 25 in values and 30 not in values and 26 not in values
    assert set(read.centroids_mm) == values - {0}
    expected = centres_of_mass_mm(read.mask)
    for label, point in expected.items():
        np.testing.assert_allclose(read.centroids_mm[label], point)


@needs_landmarks
@pytest.mark.parametrize("orientation", ["IPL", "SAR"])
def test_verse_miccai_layout_mm_centroids(tmp_path: Path, orientation: str):
    """2019 MICCAI JSON: mm along I, P, L from the first voxel; checked on an IPL and a fully flipped image."""
    case = _synthetic(32, region="crop", spacing_mm=(1.0, 1.0, 1.0), orientation=orientation)
    write_image(case.ct, tmp_path / "verse014.nii.gz")
    write_image(case.mask, tmp_path / "verse014_seg.nii.gz")
    size = np.array(case.geometry.size)
    entries = []
    for label, point in case.centroids_mm.items():
        index = case.geometry.world_to_index(point)
        mm = index if orientation == "IPL" else (size - 1) - index
        entries.append({"label": int(label), "X": float(mm[0]), "Y": float(mm[1]), "Z": float(mm[2])})
    (tmp_path / "verse014_ctd.json").write_text(json.dumps(entries))
    (files,) = list_cases(tmp_path)
    assert files.layout == "verse-miccai"
    read = read_case(files)
    assert read.centroids_mm.keys() == case.centroids_mm.keys()
    for label, point in case.centroids_mm.items():
        np.testing.assert_allclose(read.centroids_mm[label], point, atol=1e-3)  # NIfTI stores float32


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "totalsegmentator-example"


@pytest.mark.parametrize("kind", ["markups", "points"])
def test_corrected_cases_train_without_conversion(tmp_path: Path, kind: str):
    """A folder of corrected cases: CT, mask and the centroids as 3D Slicer markups or GC points (``predict``'s
    files), read as the VerSe JSON would be; a VerSe JSON beside them still wins."""
    from spine.gc import Point, write_points
    from spine.labels import name_of
    from spine.markups import markups_name, write_markups

    ct = read_image(EXAMPLE / "ct.nii.gz")
    truth = read_centroids_mm(EXAMPLE / "seg-vert_ctd.json", Geometry.of(ct))
    corrected = {label: point + 2.0 for label, point in truth.items()}  # moved in the viewer
    points = [Point(name_of(v), tuple(p), 1.0) for v, p in corrected.items()]
    raw, der = tmp_path / "rawdata" / "sub-ts01", tmp_path / "derivatives" / "sub-ts01"
    raw.mkdir(parents=True)
    der.mkdir(parents=True)
    shutil.copy(EXAMPLE / "ct.nii.gz", raw / "sub-ts01_ct.nii.gz")
    shutil.copy(EXAMPLE / "seg-vert_msk.nii.gz", der / "sub-ts01_seg-vert_msk.nii.gz")
    if kind == "markups":
        write_markups(der / markups_name("sub-ts01"), points)
    else:
        write_points(der / "sub-ts01_points.json", points)
    (files,) = list_cases(tmp_path)
    assert files.layout == "verse" and files.centroids is not None
    (case,) = list(read_cases(tmp_path))
    assert case.centroids_mm.keys() == corrected.keys()
    for label, point in corrected.items():
        np.testing.assert_allclose(case.centroids_mm[label], point, atol=1e-6)
    shutil.copy(EXAMPLE / "seg-vert_ctd.json", der / "sub-ts01_seg-subreg_ctd.json")
    (case,) = list(read_cases(tmp_path))
    np.testing.assert_allclose(case.centroids_mm[20], truth[20], atol=1e-6)

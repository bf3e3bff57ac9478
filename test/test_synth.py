"""Synthetic spine phantoms: determinism, VerSe-valid ground truth, HU ranges, variants, geometry round trips."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from export.anatomy import LANDMARK_COLUMNS, build_spine, default_landmarks_path, load_landmarks
from export.cli import main
from export.readers import read_cases
from export.synth import synth_case, write_case
from spine.image import Geometry, array_of, resample_onto
from spine.labels import EVALUATED

SMALL = 2_000_000  # voxel cap that keeps one case well under a second

pytestmark = pytest.mark.skipif(not default_landmarks_path().is_file(), reason="landmarks.csv not available")


def _voxel_of(case, point_mm) -> tuple[int, int, int]:
    """(k, j, i) array index of the voxel nearest to a world point."""
    i, j, k = np.rint(case.geometry.world_to_index(point_mm)).astype(int)
    return int(k), int(j), int(i)


@pytest.fixture(scope="module")
def lumbar_case():
    """A 1 mm LPS lumbar case without metal: HU checks read it directly."""
    return synth_case(11, region="lumbar", spacing_mm=(1.0, 1.0, 1.0), orientation="LPS", metal_rate=0.0,
                      max_voxels=6_000_000)


@pytest.fixture(scope="module")
def random_cases():
    return [synth_case(seed, max_voxels=SMALL) for seed in range(8)]


def test_same_seed_gives_identical_arrays():
    a = synth_case(3, max_voxels=SMALL)
    b = synth_case(3, max_voxels=SMALL)
    assert Geometry.of(a.ct) == Geometry.of(b.ct)
    np.testing.assert_array_equal(array_of(a.ct), array_of(b.ct))
    np.testing.assert_array_equal(array_of(a.mask), array_of(b.mask))
    assert a.centroids_mm.keys() == b.centroids_mm.keys()
    for label in a.centroids_mm:
        np.testing.assert_array_equal(a.centroids_mm[label], b.centroids_mm[label])
    c = synth_case(4, max_voxels=SMALL)
    assert Geometry.of(c.ct) != Geometry.of(a.ct) or not np.array_equal(array_of(c.ct), array_of(a.ct))


def test_pixel_types_and_labels_are_verse_ids(random_cases):
    allowed = set(EVALUATED) | {26}
    for case in random_cases:
        assert case.ct.GetPixelID() == sitk.sitkInt16
        assert case.mask.GetPixelID() == sitk.sitkUInt8
        values = set(np.unique(array_of(case.mask)).tolist()) - {0}
        assert values, case.source
        assert values <= allowed, (case.source, values - allowed)
        assert set(case.centroids_mm) <= values


def test_centroids_lie_inside_their_vertebra(random_cases):
    for case in random_cases:
        mask = array_of(case.mask)
        assert case.centroids_mm, case.source
        for label, point in case.centroids_mm.items():
            if label == 1:  # the atlas has no body: its centre is inside the ring, around the dens of C2
                ring = np.argwhere(mask == 1)[:, ::-1]
                gap_mm = np.min(np.linalg.norm(case.geometry.index_to_world(ring) - point, axis=1))
                assert gap_mm < 15.0, (case.source, gap_mm)
                continue
            assert mask[_voxel_of(case, point)] == label, (case.source, label)


def test_hu_of_bone_disc_soft_tissue_and_air(lumbar_case):
    ct, mask = array_of(lumbar_case.ct).astype(np.float32), array_of(lumbar_case.mask)
    vertebra = (mask >= 20) & (mask <= 25)
    assert 100.0 < np.median(ct[vertebra]) < 500.0
    assert np.percentile(ct[vertebra], 99) > 450.0  # cortical shell
    # Disc: midway between neighbouring lumbar body centres.
    labels = sorted(label for label in lumbar_case.centroids_mm if 20 <= label <= 25)
    assert len(labels) >= 3
    discs = [ct[_voxel_of(lumbar_case, 0.5 * (lumbar_case.centroids_mm[a] + lumbar_case.centroids_mm[b]))]
             for a, b in itertools.pairwise(labels)]
    assert 20.0 < float(np.median(discs)) < 160.0
    soft = ct[(mask == 0) & (ct > -200) & (ct < 200)]
    assert -90.0 < np.median(soft) < 80.0
    assert ct.min() <= -900.0  # air outside the body or in the bowel
    assert ct.max() < 3072


def test_label_variants_occur_as_in_real_spines():
    spines = [[level.label for level in build_spine(np.random.default_rng(seed))] for seed in range(400)]
    assert all(labels[:18] == list(range(1, 19)) for labels in spines)  # C1..T11 always
    assert any(28 in labels for labels in spines)  # T13
    assert any(25 in labels for labels in spines)  # L6
    assert any(18 in labels and 19 not in labels for labels in spines)  # 11 thoracic
    assert any(23 in labels and 24 not in labels for labels in spines)  # 4 lumbar
    normal = sum(labels == list(range(1, 25)) for labels in spines)
    assert normal > 0.6 * len(spines)


def test_landmarks_file_shape():
    spines = load_landmarks()
    assert spines.shape[1:] == (len(LANDMARK_COLUMNS), 3)
    assert spines.shape[0] >= 100


def test_orientation_and_spacing_vary(random_cases):
    codes = {case.geometry.orientation_codes() for case in random_cases}
    assert len(codes) >= 3
    spacings = {tuple(round(s, 2) for s in case.geometry.spacing_mm) for case in random_cases}
    assert len(spacings) >= 4


def test_requested_orientation_and_spacing_are_exact_and_consistent():
    """The same seed stored as LPS and as PIR holds the same voxels at the same world points."""
    lps = synth_case(5, region="crop", spacing_mm=(1.5, 1.5, 2.0), orientation="LPS", max_voxels=SMALL)
    pir = synth_case(5, region="crop", spacing_mm=(1.5, 2.0, 1.5), orientation="PIR", max_voxels=SMALL)
    assert lps.geometry.orientation_codes() == ("L", "P", "S")
    assert pir.geometry.orientation_codes() == ("P", "I", "R")
    assert pir.geometry.spacing_mm == (1.5, 2.0, 1.5)
    back = resample_onto(pir.ct, lps.geometry, nearest=True, default=-2000)
    np.testing.assert_array_equal(array_of(back), array_of(lps.ct))
    back_mask = resample_onto(pir.mask, lps.geometry, nearest=True)
    np.testing.assert_array_equal(array_of(back_mask), array_of(lps.mask))
    assert lps.centroids_mm.keys() == pir.centroids_mm.keys()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="region"):
        synth_case(0, region="skull")
    with pytest.raises(ValueError, match="orientation"):
        synth_case(0, orientation="LPX")
    with pytest.raises(ValueError, match="spacing"):
        synth_case(0, spacing_mm=(1.0, 0.0, 1.0))


def test_write_case_round_trip_through_readers(tmp_path: Path):
    cases = [synth_case(seed, max_voxels=SMALL) for seed in (21, 22)]
    for case in cases:
        ct_path, mask_path, ctd_path = write_case(case, tmp_path)
        assert ct_path == tmp_path / "rawdata" / case.case_id / f"{case.case_id}_ct.nii.gz"
        assert mask_path.parent == ctd_path.parent == tmp_path / "derivatives" / case.case_id
    read = {case.case_id: case for case in read_cases(tmp_path)}
    assert set(read) == {case.case_id for case in cases}
    for case in cases:
        got = read[case.case_id]
        assert Geometry.of(got.ct).same_as(case.geometry)
        np.testing.assert_array_equal(array_of(got.ct), array_of(case.ct))
        np.testing.assert_array_equal(array_of(got.mask), array_of(case.mask))
        assert got.centroids_mm.keys() == case.centroids_mm.keys()
        for label, point in case.centroids_mm.items():
            assert np.linalg.norm(got.centroids_mm[label] - point) < 0.01


def test_cli_writes_cases(tmp_path: Path):
    code = main(["-q", "synth", "--out", str(tmp_path), "--cases", "2", "--seed", "7", "--max-voxels", str(SMALL)])
    assert code == 0
    assert len(list((tmp_path / "rawdata").glob("*/*_ct.nii.gz"))) == 2
    assert len(list((tmp_path / "derivatives").glob("*/*_seg-vert_msk.nii.gz"))) == 2
    assert len(list((tmp_path / "derivatives").glob("*/*_seg-subreg_ctd.json"))) == 2

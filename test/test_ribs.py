"""Rib evidence (algorithm.ribs) on drawn phantoms: a column of bodies, ribs that slope down and back,
short transverse processes, an iliac-like plate, and fields of view that cut the ribs off."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from algorithm.locate import Candidates
from algorithm.ribs import BEARING_LIKELIHOOD, FREE_SIDE_LIKELIHOOD, RibEvidence, region_likelihood, rib_evidence
from export.real_cases import shared_data_dir
from spine.labels import LOCATE_CHANNELS

SPACING = 2.0
CENTRES_Z = (0.0, 30.0, 60.0, 90.0, 120.0)  # feet to head
RIBBED = (False, False, True, True, True)


def _tube(volume: np.ndarray, coords: tuple[np.ndarray, ...], start: np.ndarray, end: np.ndarray,
          radius: float, hu: float) -> None:
    x, y, z = coords
    points = np.stack([x, y, z], axis=-1)
    axis = end - start
    t = np.clip(((points - start) @ axis) / float(axis @ axis), 0.0, 1.0)
    nearest = start + t[..., None] * axis
    volume[np.linalg.norm(points - nearest, axis=-1) <= radius] = hu


def _phantom(half_width_mm: float = 120.0, plate: bool = False, back_mm: float = 100.0,
             rib_end_y: float = 40.0, top_mm: float = 160.0, ribbed: tuple[bool, ...] = RIBBED,
             padded_beyond_mm: float | None = None) -> sitk.Image:
    """Soft tissue with bodies at CENTRES_Z; ribs (reach 100 mm, sloping down and back) on the upper three,
    transverse processes (reach 42 mm) on the lower two; LPS, +x the patient's left."""
    x = np.arange(-half_width_mm, half_width_mm + 1e-6, SPACING)
    y = np.arange(-60.0, back_mm + 1e-6, SPACING)
    z = np.arange(-40.0, top_mm + 1e-6, SPACING)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    coords = (xx, yy, zz)
    volume = np.full(xx.shape, -50.0, dtype=np.float32)
    for c, with_ribs in zip(CENTRES_Z, ribbed, strict=True):
        volume[(xx**2 + yy**2 + (zz - c) ** 2) <= 14.0**2] = 400.0
        for side in (-1.0, 1.0):
            if with_ribs:
                _tube(volume, coords, np.array([side * 22.0, 12.0, c + 4.0]),
                      np.array([side * 100.0, rib_end_y, c - 22.0]), 4.0, 600.0)
            else:
                _tube(volume, coords, np.array([side * 15.0, 15.0, c]), np.array([side * 42.0, 20.0, c]), 4.0,
                      600.0)
    if plate:  # an iliac wing beside the lowest vertebra: thick, tall, far-reaching
        volume[(np.abs(xx) >= 38.0) & (np.abs(xx) <= 110.0) & (yy >= 5.0) & (yy <= 20.0)
               & (zz >= CENTRES_Z[0] - 25.0) & (zz <= CENTRES_Z[0] + 15.0)] = 500.0
    if padded_beyond_mm is not None:  # a scanner's field of view: -3024 outside the reconstruction
        volume[np.abs(xx) > padded_beyond_mm] = -3024.0
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((SPACING,) * 3)
    image.SetOrigin((float(x[0]), float(y[0]), float(z[0])))
    return image


def _positions() -> np.ndarray:
    return np.array([[0.0, 0.0, c] for c in CENTRES_Z])


def test_ribs_are_found_on_the_ribbed_vertebrae_and_absence_counts_where_seen() -> None:
    evidence = rib_evidence(_phantom(), _positions())
    assert evidence.bearing.tolist() == list(RIBBED)
    assert np.all(evidence.reach_mm[2:] >= 90.0)
    assert np.all(evidence.reach_mm[:2] < 50.0)
    assert evidence.free_sides.tolist() == [2, 2, 0, 0, 0]


def test_order_of_the_candidates_does_not_matter() -> None:
    order = np.array([3, 0, 4, 2, 1])
    evidence = rib_evidence(_phantom(), _positions()[order])
    assert evidence.bearing.tolist() == [RIBBED[i] for i in order]


@pytest.mark.parametrize("padded", [False, True])
def test_a_narrow_view_reads_ribs_that_leave_it_sideways(padded: bool) -> None:
    """A VerSe-style sagittal slab (55 mm each side of the spine; the image ends there, or the scanner wrote
    -3024 beyond it): the ribs run out of it, the transverse processes (46 mm) end inside it."""
    image = _phantom(padded_beyond_mm=55.0) if padded else _phantom(half_width_mm=55.0)
    evidence = rib_evidence(image, _positions())
    assert evidence.bearing.tolist() == list(RIBBED)
    assert evidence.free_sides.tolist() == [2, 2, 0, 0, 0]


@pytest.mark.parametrize("padded", [False, True])
def test_a_view_too_narrow_to_tell_ribs_from_processes_says_nothing(padded: bool) -> None:
    """Cut 40 mm beside the spine, a rib and a transverse process both leave the view: neither bearing nor
    free (verse014's 80 mm slab cuts its lumbar processes so)."""
    image = _phantom(padded_beyond_mm=40.0) if padded else _phantom(half_width_mm=40.0)
    evidence = rib_evidence(image, _positions())
    assert not evidence.bearing.any()
    assert evidence.free_sides.tolist() == [0] * 5
    assert np.all(region_likelihood(evidence) == 1.0)


def test_an_off_centre_view_reads_ribs_on_its_wide_side() -> None:
    """The slab is off-centre: 35 mm on the right, 70 mm on the left. The left reads, the right says nothing."""
    image = _phantom()
    array = sitk.GetArrayFromImage(image)
    x = image.GetOrigin()[0] + SPACING * np.arange(array.shape[2])
    array[:, :, (x < -35.0) | (x > 70.0)] = -3024.0
    padded = sitk.GetImageFromArray(array)
    padded.CopyInformation(image)
    evidence = rib_evidence(padded, _positions())
    assert evidence.bearing.tolist() == list(RIBBED)
    assert evidence.free_sides.tolist() == [1, 1, 0, 0, 0]
    assert evidence.seen[:, 0].tolist() == [False] * 5


@pytest.mark.parametrize("opposite_free", [True, False])
def test_a_process_leaving_an_off_centre_view_is_no_rib_where_the_other_side_shows_none(opposite_free: bool) -> None:
    """The view ends 51 mm right of the spine and 70 mm left (an off-centre slab, as the aortic crop's). The
    second vertebra's right transverse process is long (56 mm) and leaves the view, like a rib cut by it; its
    left side is seen and free. A vertebra with a rib on one side only is rare; a long process is not: no rib
    (before, it read rib-bearing and named the thoracolumbar junction one level low). With a rib on the left,
    it stays rib-bearing."""
    ribbed = (False, opposite_free is False, True, True, True)
    image = _phantom(ribbed=ribbed)
    array = sitk.GetArrayFromImage(image)
    x, y, z = (image.GetOrigin()[a] + SPACING * np.arange(array.shape[2 - a]) for a in range(3))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    if opposite_free:
        _tube(array, (xx, yy, zz), np.array([-15.0, 15.0, CENTRES_Z[1]]), np.array([-56.0, 20.0, CENTRES_Z[1]]),
              4.0, 600.0)
    array[:, :, (x < -51.0) | (x > 70.0)] = -3024.0
    padded = sitk.GetImageFromArray(array)
    padded.CopyInformation(image)
    evidence = rib_evidence(padded, _positions())
    assert evidence.bearing.tolist() == list(ribbed)
    assert evidence.free_sides.tolist() == ([1, 1, 0, 0, 0] if opposite_free else [1, 0, 0, 0, 0])  # right: not seen


def test_a_rib_that_leaves_the_field_of_view_behind_the_spine_is_unknown_not_absent() -> None:
    """The CT ends 45 mm behind the bodies; the ribs run out of it 55 mm beside the spine. Where the CT
    covers the point a rib passes (65 mm out, 40 mm back), a cut rib must not read as no rib."""
    evidence = rib_evidence(_phantom(back_mm=45.0, rib_end_y=90.0), _positions())
    assert not evidence.bearing.any()
    assert evidence.free_sides.tolist() == [2, 2, 0, 0, 0]


def test_the_top_vertebra_cut_by_the_scan_says_nothing_of_its_ribs() -> None:
    """The CT ends 8 mm above the top body's centre; the candidate sits where a cut vertebra's visible part
    puts it, 6 mm low. Its own rib (the only ribs here) then crosses above it, like a rib of the vertebra
    above: unknown, not absent (a rib-free top vertebra reads as cervical)."""
    positions = _positions()
    positions[-1, 2] -= 6.0
    only_top = (False, False, False, False, True)
    evidence = rib_evidence(_phantom(top_mm=CENTRES_Z[-1] + 8.0, ribbed=only_top), positions)
    assert not evidence.bearing.any()
    assert evidence.free_sides.tolist() == [2, 2, 2, 2, 0]


def test_absence_speaks_only_below_the_lowest_rib() -> None:
    """A rib-free vertebra between ribbed ones (a rib given to a neighbour) and one above them (a short first
    rib) say nothing; below the lowest rib, absence places the thoracolumbar junction."""
    pattern = (False, True, False, True, False)
    evidence = rib_evidence(_phantom(ribbed=pattern), _positions())
    assert evidence.bearing.tolist() == list(pattern)
    assert evidence.free_sides.tolist() == [2, 0, 0, 0, 0]


def test_an_iliac_plate_is_not_a_rib() -> None:
    evidence = rib_evidence(_phantom(plate=True), _positions())
    assert evidence.bearing.tolist() == list(RIBBED)


def test_fewer_than_two_candidates_say_nothing() -> None:
    evidence = rib_evidence(_phantom(), _positions()[:1])
    assert evidence.reach_mm.shape == (1, 2) and not evidence.bearing.any() and evidence.free_sides[0] == 0


def test_region_likelihood_reads_bearing_free_and_unknown() -> None:
    evidence = RibEvidence(reach_mm=np.array([[100.0, 0.0], [40.0, 0.0], [40.0, 0.0], [0.0, 0.0]]),
                           seen=np.array([[True, True], [True, True], [True, False], [False, False]]))
    likelihood = region_likelihood(evidence)
    np.testing.assert_allclose(likelihood[0], BEARING_LIKELIHOOD)
    np.testing.assert_allclose(likelihood[1], FREE_SIDE_LIKELIHOOD**2)
    np.testing.assert_allclose(likelihood[2], FREE_SIDE_LIKELIHOOD)
    np.testing.assert_allclose(likelihood[3], 1.0)


@pytest.mark.parametrize(("reach", "seen", "likelihood", "status"), [
    (100.0, True, BEARING_LIKELIHOOD, "rib"),
    (40.0, True, FREE_SIDE_LIKELIHOOD**2, "no rib"),
    (40.0, False, np.ones(3), "unknown"),
    (55.0, True, FREE_SIDE_LIKELIHOOD, "no rib on one side"),  # 55 mm: a short floating rib or a long process
])
def test_candidates_regions_multiply_the_network_posterior_by_the_likelihood(
        reach: float, seen: bool, likelihood: np.ndarray, status: str) -> None:
    scores = np.zeros((1, len(LOCATE_CHANNELS)), dtype=np.float32)
    scores[0, LOCATE_CHANNELS.index(20)] = 0.6  # L1: a lumbar opinion
    plain = Candidates(np.zeros((1, 3)), scores, np.array([0.6]))
    ribs = RibEvidence(np.array([[reach, 0.0]]), np.array([[seen, seen]]))
    ribbed = Candidates(np.zeros((1, 3)), scores, np.array([0.6]), ribs=ribs)
    assert ribs.statuses() == [status]
    expected = plain.regions()[0] * likelihood
    np.testing.assert_allclose(ribbed.regions()[0], expected / expected.sum())
    assert ribbed.regions()[0].sum() == pytest.approx(1.0)


def test_candidates_at_one_height_give_one_centre_line_point() -> None:
    """Two candidates at the same height (possible without recentring) are averaged, not left to np.interp;
    the rib goes to one of the two (they are one vertebra), the others read as before."""
    positions = np.vstack([_positions(), _positions()[2] + np.array([4.0, 0.0, 0.0])])
    evidence = rib_evidence(_phantom(), positions)
    assert evidence.bearing.tolist()[:5] == list(RIBBED) or evidence.bearing.tolist()[5]
    assert evidence.bearing.tolist()[3:5] == [True, True] and evidence.free_sides.tolist()[:2] == [2, 2]


def test_a_sagittal_slab_of_the_real_example_reads_the_t12_ribs_and_lumbar_absence() -> None:
    """The bundled real CT as a VerSe-style sagittal slab (export.reformat: 104 mm wide, 3 mm sagittal
    slices, PIR): its T12 ribs run out of the slab 49-51 mm beside the spine, L1-L3's transverse processes
    end inside it. Before the slab rule every vertebra read "unknown" and the chain came out one level high."""
    from export.real_cases import find_real_cases
    from export.reformat import reformats

    case = find_real_cases(["totalsegmentator-example"])[0].load()
    ((_, slab),) = reformats(case, ["sagittal-slab"])
    levels = [v for v in (19, 20, 21, 22, 23) if v in slab.centroids_mm]  # T12, L1-L4
    assert levels == [19, 20, 21, 22, 23]
    evidence = rib_evidence(slab.ct, np.array([slab.centroids_mm[v] for v in levels]))
    assert evidence.bearing.tolist() == [True, False, False, False, False]
    assert evidence.free_sides[1:4].tolist() == [2, 2, 2]  # L4's processes meet the pelvis: unknown, not free
    likelihood = region_likelihood(evidence)
    assert likelihood[0].argmax() == 1 and np.all(likelihood[1:4, 1] < likelihood[1:4, 2])


def test_a_sliver_of_plate_leaving_a_narrow_view_is_no_rib() -> None:
    """Beside the lowest vertebra of a 55 mm view, a 2 mm sheet of bone (the sacral ala's or the ilium's
    edge in a slab) runs out sideways: no rib there, and the ribs above still place the junction."""
    image = _phantom(half_width_mm=55.0)
    array = sitk.GetArrayFromImage(image)
    x = image.GetOrigin()[0] + SPACING * np.arange(array.shape[2])
    y = image.GetOrigin()[1] + SPACING * np.arange(array.shape[1])
    z = image.GetOrigin()[2] + SPACING * np.arange(array.shape[0])
    sheet = ((np.abs(z - (CENTRES_Z[0] - 10.0)) <= 1.0)[:, None, None] & ((y >= 20.0) & (y <= 50.0))[None, :, None]
             & (np.abs(x) >= 20.0)[None, None, :])
    array[sheet] = 600.0
    sliver = sitk.GetImageFromArray(array)
    sliver.CopyInformation(image)
    evidence = rib_evidence(sliver, _positions())
    assert evidence.bearing.tolist() == list(RIBBED)
    assert evidence.free_sides.tolist()[1] == 2


def _leaning(image: sitk.Image, positions: np.ndarray, degrees: float) -> tuple[sitk.Image, np.ndarray]:
    """The phantom and its centres turned about the left-right axis through (0, 0, 60): the column rises
    forwards (LPS -y) by ``degrees``, as the neck and upper chest do at C7-T1."""
    angle = np.radians(degrees)
    centre = np.array([0.0, 0.0, 60.0])
    turn = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
    transform = sitk.Euler3DTransform(tuple(centre), -angle, 0.0, 0.0)  # output -> input: the inverse turn
    turned = sitk.Resample(image, image, transform, sitk.sitkLinear, -50.0)
    return turned, centre + (positions - centre) @ turn.T


def test_rise_above_is_the_height_difference_on_an_upright_column() -> None:
    from algorithm.ribs import rise_above

    chain = _positions()
    y, z = np.array([10.0, 30.0]), np.array([62.0, 65.0])
    np.testing.assert_allclose(rise_above(chain, y, z), 65.0 - chain[:, 2])


def test_rise_above_measures_along_a_leaning_column() -> None:
    """A point 25 mm behind a vertebra's centre and 2 mm above it along a column leaning 30 degrees lies 14.2 mm
    higher in z, but rises 2 mm above that vertebra along the spine."""
    from algorithm.ribs import rise_above

    angle = np.radians(30.0)
    up, back = np.array([-np.sin(angle), np.cos(angle)]), np.array([np.cos(angle), np.sin(angle)])  # (y, z)
    chain = np.array([[0.0, *(k * 17.0 * up)] for k in range(5)])
    point = chain[2, 1:] + 25.0 * back + 2.0 * up
    assert point[1] - chain[2, 2] == pytest.approx(14.2, abs=0.1)
    assert rise_above(chain, point[:1], point[1:])[2] == pytest.approx(2.0, abs=1e-6)


def test_the_lean_is_read_past_a_candidate_off_the_column() -> None:
    """One candidate 30 mm behind the column (a spinous process) barely moves the lean read at its neighbours."""
    from algorithm.ribs import rise_above

    chain = np.array([[0.0, 0.0, k * 17.0] for k in range(6)])
    chain[3, 1] = 30.0
    rise = rise_above(chain, np.array([0.0]), np.array([2.0 * 17.0 + 3.0]))
    assert rise[2] == pytest.approx(3.0, abs=1.5)


def test_ribs_of_a_leaning_column_stay_with_their_vertebrae() -> None:
    """The phantom turned 30 degrees (the column rising forwards): the ribs' crossings lie 8-12 mm above their own
    centres in z, more than ``CROSSING_RISE_MM``; measured along the column they stay with their vertebrae."""
    image, positions = _leaning(_phantom(), _positions(), 30.0)
    evidence = rib_evidence(image, positions)
    assert evidence.bearing.tolist() == list(RIBBED)


def _run(top_reach: float) -> RibEvidence:
    """Three rib-bearing candidates; the third reaches ``top_reach``."""
    reach = np.array([[110.0, 105.0], [100.0, 98.0], [top_reach, 0.0]])
    return RibEvidence(reach, np.ones((3, 2), dtype=bool))


@pytest.mark.parametrize(("top_reach", "heights", "doubted"), [
    (70.0, [0.0, 17.0, 34.0], True),  # short, at the top of the run: C7's process joined to bone beside it
    (100.0, [0.0, 17.0, 34.0], False),  # as long as the ribs below: the first rib, the chest CT's anchor
    (70.0, [34.0, 17.0, 0.0], False),  # the short one is the lowest: the thoracolumbar junction's, never doubted
    (70.0, None, False),  # heights not given: as before
])
def test_a_short_rib_at_the_top_of_a_run_speaks_only_against_lumbar(top_reach: float, heights: list[float] | None,
                                                                   doubted: bool) -> None:
    from algorithm.ribs import TOP_BEARING_LIKELIHOOD

    evidence = _run(top_reach)
    if heights is not None:
        assert evidence.top_of_ribs(np.asarray(heights)).tolist() == [False, False, doubted]
    likelihood = region_likelihood(evidence, None if heights is None else np.asarray(heights))
    np.testing.assert_allclose(likelihood[2], TOP_BEARING_LIKELIHOOD if doubted else BEARING_LIKELIHOOD)
    np.testing.assert_allclose(likelihood[:2], [BEARING_LIKELIHOOD] * 2)


def test_a_single_rib_bearing_candidate_is_never_doubted() -> None:
    evidence = RibEvidence(np.array([[70.0, 0.0], [0.0, 0.0]]), np.ones((2, 2), dtype=bool))
    assert not evidence.top_of_ribs(np.array([10.0, 0.0])).any()


def test_the_top_of_the_run_is_found_among_the_candidates_that_remain() -> None:
    """``Candidates.regions`` reads the heights from its own positions, so a subset (the pipeline's) and an added
    point (C1 under the skull base) doubt the highest short rib-bearer among the candidates they hold."""
    from algorithm.pipeline import _subset
    from algorithm.ribs import TOP_BEARING_LIKELIHOOD

    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 17.0], [0.0, 0.0, 34.0], [0.0, 0.0, 51.0]])
    reach = np.array([[110.0, 105.0], [100.0, 98.0], [70.0, 0.0], [72.0, 0.0]])
    ribs = RibEvidence(reach, np.ones((4, 2), dtype=bool))
    candidates = Candidates(positions, np.zeros((4, len(LOCATE_CHANNELS)), dtype=np.float32), np.zeros(4), ribs=ribs)
    uniform = np.full(3, 1.0 / 3.0)  # peak 0: the network says nothing, the regions are the ribs' alone

    def doubted(c: Candidates) -> list[bool]:
        expected = uniform * TOP_BEARING_LIKELIHOOD
        return [bool(np.allclose(row, expected / expected.sum())) for row in c.regions()]

    assert doubted(candidates) == [False, False, False, True]
    kept = _subset(candidates, np.array([True, True, True, False]))
    assert doubted(kept) == [False, False, True]
    assert doubted(kept.with_point(np.array([0.0, 0.0, 200.0]))) == [False, False, False, True]


def test_a_voxel_s_world_footprint_follows_the_grid_s_direction() -> None:
    """What ``rib_evidence`` reads the pixels across a rib from (LPS x and y): an axial CT's pixels, a sagittal one's
    slice thickness along x."""
    from spine.image import Geometry

    axial = sitk.Image(4, 4, 4, sitk.sitkInt16)
    axial.SetSpacing((0.8, 0.8, 2.5))
    np.testing.assert_allclose(Geometry.of(axial).world_spacing_mm, [0.8, 0.8, 2.5])
    sagittal = sitk.Image(4, 4, 4, sitk.sitkInt16)  # VerSe's PIR: i along y, j along z, k along x
    sagittal.SetSpacing((1.0, 1.0, 3.0))
    sagittal.SetDirection((0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    np.testing.assert_allclose(Geometry.of(sagittal).world_spacing_mm, [3.0, 1.0, 1.0])
    assert Geometry.of(axial).pixel_mm == pytest.approx(0.8) and Geometry.of(sagittal).pixel_mm == pytest.approx(3.0)


def test_coarse_pixels_are_not_resolved_and_doubt_the_top_of_every_run() -> None:
    """At 4 mm pixels (the OpenKBP necks: 3.9-5.1 mm) C7's process runs into the first rib: the top of a run of ribs
    speaks only against lumbar whatever its reach (module docstring, step 8); at 2 mm it is the first rib."""
    from algorithm.ribs import RIB_RESOLVED_MM, TOP_BEARING_LIKELIHOOD

    fine = _phantom()
    coarse = sitk.Resample(fine, [int(fine.GetSize()[0] / 2), int(fine.GetSize()[1] / 2), fine.GetSize()[2]],
                           sitk.Transform(), sitk.sitkLinear, fine.GetOrigin(), (4.0, 4.0, SPACING),
                           fine.GetDirection(), -50.0)
    assert RIB_RESOLVED_MM < 4.0
    assert rib_evidence(fine, _positions()).resolved
    read = rib_evidence(coarse, _positions())
    assert not read.resolved and read.bearing.tolist() == list(RIBBED)  # the phantom's thick ribs still read
    heights = _positions()[:, 2]
    long_top = RibEvidence(read.reach_mm, read.seen, resolved=True)
    assert not long_top.top_of_ribs(heights).any()  # its ribs all reach alike: the first rib, resolved
    assert read.top_of_ribs(heights).tolist() == [False, False, False, False, True]
    np.testing.assert_allclose(region_likelihood(read, heights)[4], TOP_BEARING_LIKELIHOOD)


def test_where_ribs_are_borne_they_alone_tell_cervical_from_thoracic() -> None:
    """A rib-bearing candidate that the network calls C6 (a count lost at the cervicothoracic junction) reads
    thoracic by the ribs' likelihood ratio alone; the lumbar share against the larger of cervical and thoracic
    stays the network's; a candidate whose ribs are unknown keeps the network's split."""
    scores = np.zeros((2, len(LOCATE_CHANNELS)), dtype=np.float32)
    scores[:, LOCATE_CHANNELS.index(6)] = 0.9  # C6
    scores[:, LOCATE_CHANNELS.index(8)] = 0.05  # T1
    scores[:, LOCATE_CHANNELS.index(20)] = 0.05  # L1
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 20.0]])
    ribs = RibEvidence(np.array([[100.0, 95.0], [0.0, 0.0]]), np.zeros((2, 2), dtype=bool))
    ribbed = Candidates(positions, scores, np.array([0.9, 0.9]), ribs=ribs).regions()
    network = Candidates(positions, scores, np.array([0.9, 0.9])).regions()
    assert ribbed[0, 1] / ribbed[0, 0] == pytest.approx(BEARING_LIKELIHOOD[1] / BEARING_LIKELIHOOD[0])
    assert ribbed[0, 2] / ribbed[0, 1] == pytest.approx(
        network[0, 2] * BEARING_LIKELIHOOD[2] / (network[0, :2].max() * BEARING_LIKELIHOOD[1]))
    np.testing.assert_allclose(ribbed[1], network[1] / network[1].sum())


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared OpenKBP CTs (../shared/data)")
def test_a_real_chest_ct_s_top_is_named_by_its_ribs() -> None:
    """OpenKBP dev pt_17 from half way between C5 and C6 down (``export.reformat``'s ``from-c6``: a chest CT's top,
    4 mm pixels), bundled models: the network's levels lie a level too high there, and its candidates were named
    C5-T3 (C6 called C5) while their ribs were read at T1 and below. With the ribs alone telling cervical from
    thoracic where they are borne, and the top of the run doubted at these pixels, C6 and C7 read right."""
    from algorithm.detect import detect_spine
    from algorithm.models import ModelSource, find_model_dir, load_models
    from algorithm.pipeline import Options, label_stage, locate_stage
    from export.real_cases import openkbp_cases
    from export.reformat import reformats

    (case,) = [c for c in openkbp_cases("dev") if c.name == "openkbp-pt_17"]
    ((_, top),) = reformats(case.load(), ["from-c6"])
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    candidates = locate_stage(top.ct, detect_spine(top.ct, models.detect), models, Options())
    assert candidates.ribs is not None and not candidates.ribs.resolved
    labels = label_stage(candidates, Options()).labels
    for level, centre in top.centroids_mm.items():
        nearest = int(np.argmin(np.where(labels > 0, np.linalg.norm(candidates.positions_mm - centre, axis=1),
                                         np.inf)))
        assert labels[nearest] == level

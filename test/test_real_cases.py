"""Real-case registry, body-centre estimate and the real-CT benchmark's stage figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_support import bench_module

from export.readers import centres_of_mass_mm
from export.real_cases import body_centres_mm, find_real_cases
from spine.image import Geometry, read_image
from spine.verse import read_centroids_mm

VERSE004 = Path(__file__).parent / "data" / "verse-sub-verse004"


def _bench():
    return bench_module("real")


def test_body_centres_match_verse_annotations_where_centres_of_mass_do_not() -> None:
    mask = sitk.Cast(read_image(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz"), sitk.sitkUInt8)
    annotated = read_centroids_mm(VERSE004 / "sub-verse004_seg-subreg_ctd.json", Geometry.of(mask))
    estimated = body_centres_mm(mask)
    com = centres_of_mass_mm(mask)
    est = np.array([np.linalg.norm(estimated[v] - annotated[v]) for v in annotated])
    off = np.array([np.linalg.norm(com[v] - annotated[v]) for v in annotated])
    assert np.median(est) < 2.0 and est.max() < 10.0
    assert np.median(off) > 9.0  # the mask's centre of mass is the wrong target for a body-centre locator


def test_body_centre_of_a_box_with_a_thin_process_is_the_box_centre() -> None:
    array = np.zeros((40, 40, 40), np.uint8)
    array[10:20, 10:20, 10:20] = 5  # the "body"
    array[14:16, 20:38, 14:16] = 5  # a long thin "spinous process" pulls the centre of mass
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 0.5))
    centre = body_centres_mm(image)[5]
    np.testing.assert_allclose(centre, [7.25, 7.25, 7.25], atol=0.3)
    assert centres_of_mass_mm(image)[5][1] > 7.6  # pulled 0.4 mm towards the process


def test_bundled_example_is_always_a_real_case() -> None:
    names = [case.name for case in find_real_cases()]
    assert "totalsegmentator-example" in names
    with pytest.raises(ValueError, match="unknown"):
        find_real_cases(["no-such-case"])


def test_match_candidates_counts_found_duplicates_and_false() -> None:
    bench = _bench()
    centres = {20: np.array([0.0, 0.0, 0.0]), 21: np.array([0.0, 0.0, -30.0])}
    positions = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, -45.0], [0.0, 0.0, -100.0]])
    figures = bench.match_candidates(positions, centres)
    assert figures["found"] == {20: True, 21: False}
    assert figures["duplicates"] == 1
    assert figures["false"] == 1
    limited = bench.match_candidates(positions, centres, height_range_mm=(-50.0, 20.0))
    assert limited["false"] == 0


def test_region_and_identification_rules() -> None:
    bench = _bench()
    centres = {19: np.array([0.0, 0.0, 30.0]), 20: np.array([0.0, 0.0, 0.0])}
    positions = np.array([[0.0, 0.0, 31.0], [0.0, 0.0, 1.0]])
    shifted = np.array([18, 19])  # T11, T12 where T12, L1 are: one right region, no identification
    assert bench.region_correct(positions, shifted, centres) == {19: True, 20: False}
    hits = bench.identification({18: positions[0], 19: positions[1]}, centres)
    assert hits == {19: False, 20: False}


def test_stage_figures_on_the_bundled_example() -> None:
    bench = _bench()
    from algorithm.models import ModelSource, find_model_dir, load_models

    real = find_real_cases(["totalsegmentator-example"])[0]
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    row = bench.stage_figures(real.load(), real, models)
    assert row["labels"][0] == "T11" and row["labels"][-1] == "L5"
    assert 0.0 <= row["detect"]["box_mean"] <= 1.0
    assert 0.0 <= row["segment"]["dice"] <= 1.0
    assert set(row["segment"]["per_label"]) == set(row["labels"])
    evidence = row["locate"]["evidence"]
    assert set(evidence) == {"region_ok", "level_ok", "within_one", "peak_median"}
    assert 0.0 <= evidence["level_ok"] <= min(evidence["within_one"], evidence["region_ok"])


def test_network_evidence_reads_the_best_channel_at_each_true_centre() -> None:
    bench = _bench()
    from spine.labels import LOCATE_CHANNELS

    scores = np.zeros((4, len(LOCATE_CHANNELS)))
    scores[0, LOCATE_CHANNELS.index(3)] = 0.8  # C3 at C3: level, region, within one
    scores[1, LOCATE_CHANNELS.index(5)] = 0.4  # C5 at C4: region and within one only
    scores[2, LOCATE_CHANNELS.index(22)] = 0.6  # L3 at C5: nothing (the bundled model on real necks)
    scores[3, LOCATE_CHANNELS.index(28)] = 0.2  # T13 at L1: a thoracic call for a lumbar body, but one level off
    figures = bench.network_evidence(scores, [3, 4, 5, 20])
    assert figures == {"region_ok": 0.5, "level_ok": 0.25, "within_one": 0.75, "peak_median": 0.5}
    assert bench.network_evidence(np.zeros((0, len(LOCATE_CHANNELS))), [])["region_ok"] == 0.0
    with pytest.raises(ValueError, match="score rows"):
        bench.network_evidence(scores, [3, 4])


def test_seen_by_reads_the_training_text_up_to_unseen() -> None:
    bench = _bench()
    training = {"locate": "synthetic + real CTs tptbox-lumbar; unseen: verse-sub-verse014", "detect": "synthetic only"}
    assert bench.seen_by(training, "tptbox-lumbar") == ["locate"]
    assert bench.seen_by(training, "verse-sub-verse014") == []
    assert bench.seen_by(training, "tptbox-lumbar~slices-5mm") == ["locate"]  # a reformat was seen as its case


def test_seen_by_matches_whole_names() -> None:
    """A model trained on openkbp-pt_28 did not see openkbp-pt_2 (the substring test said it had)."""
    bench = _bench()
    training = {"skull": "144 CTs: openkbp-pt_28, openkbp-pt_29; real CTs without a skull: tptbox-lumbar."}
    assert bench.seen_by(training, "openkbp-pt_2") == []
    assert bench.seen_by(training, "openkbp-pt_29") == ["skull"]
    assert bench.seen_by(training, "tptbox-lumbar") == ["skull"]


def test_points_figures_score_a_centroid_only_case(tmp_path: Path) -> None:
    """A case annotated with centroids only: hits by DESIGN.md's rule, matched localisation, extra labels."""
    from spine.gc import Point, write_points

    centres = {1: np.array([0.0, 0.0, 100.0]), 2: np.array([0.0, 0.0, 80.0]), 3: np.array([0.0, 0.0, 62.0])}
    points = [Point("C1", (0.0, 3.0, 100.0)), Point("C3", (0.0, 0.0, 80.0)),  # C2 called C3: no hit
              Point("C4", (0.0, 0.0, 62.0))]
    path = write_points(tmp_path / "points.json", points)
    figures = _bench().points_figures(path, centres)
    assert figures["hits"] == 1 and figures["vertebrae"] == 3
    assert figures["id_rate"] == pytest.approx(1 / 3)
    assert figures["localisation_mm"] == pytest.approx((3.0 + 18.0) / 2)  # C1 3 mm off; "C3" 18 mm above C3; no C2
    assert figures["false_positive_labels"] == 1  # C4 is not annotated


def test_label_confidence_pairs_each_judgeable_claim_with_its_outcome(tmp_path: Path) -> None:
    """The confidence each label was given, and whether it was right: an annotated label by the identification
    rule, an unannotated one wrong where it sits on an annotated vertebra and left out where nothing says (the
    annotation stops above it). A name given twice keeps its more confident point, as the evaluator does."""
    from spine.gc import Point, write_points

    centres = {1: np.array([0.0, 0.0, 100.0]), 2: np.array([0.0, 0.0, 80.0]), 3: np.array([0.0, 0.0, 62.0])}
    points = [Point("C1", (0.0, 3.0, 100.0), 0.99), Point("C3", (0.0, 0.0, 80.0), 0.94),  # C2 called C3: wrong
              Point("C3", (0.0, 0.0, 50.0), 0.5), Point("C4", (0.0, 0.0, 45.0), 0.7),  # C4 not annotated, 17 mm off
              Point("C5", (0.0, 0.0, 64.0), 0.8)]  # not annotated, but 2 mm from C3's centre: wrong
    path = write_points(tmp_path / "points.json", points)
    bench = _bench()
    claims = bench.label_confidence(path, centres)
    assert claims == [["C1", 0.99, True], ["C3", 0.94, False], ["C5", 0.8, False]]
    summary = bench.confidence_summary(claims)
    assert summary["labels"] == 3 and summary["wrong"] == 2
    assert summary["wrong_confident"] == 1 and summary["right_doubted"] == 0  # 0.94 is over the 0.9 threshold
    # Bins [0.8, 0.9): 0.8 wrong; [0.9, 1.0]: 0.99 right, 0.94 wrong.
    assert summary["ece"] == pytest.approx(1 / 3 * 0.8 + 2 / 3 * abs(0.5 - (0.99 + 0.94) / 2), abs=1e-4)  # rounded
    table = bench.format_table({"a": {"labels": ["C1", "C3"], "end_to_end": {"id_rate": 0.5, "labels": claims}}}, {})
    assert "3 labels, 2 wrong, ECE 0.577; wrong at >= 0.90: 1 of 2; right under it: 0 of 1" in table


def test_a_centroid_only_real_case_loads_without_a_mask(tmp_path: Path) -> None:
    from export.real_cases import RealCase
    from spine.verse import write_centroid_json

    example = Path(__file__).resolve().parents[1] / "examples" / "totalsegmentator-example"
    ct = read_image(example / "ct.nii.gz")
    centres = {20: Geometry.of(ct).index_to_world([60.0, 50.0, 60.0])}
    ctd = write_centroid_json(tmp_path / "case_ctd.json", centres, Geometry.of(ct))
    real = RealCase("centroids-only", example / "ct.nii.gz", None, ctd)
    assert real.exists()
    case = real.load()
    assert case.mask is None and np.allclose(case.centroids_mm[20], centres[20], atol=0.01)
    assert not RealCase("no-centroids", example / "ct.nii.gz", None, tmp_path / "missing.json").exists()


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, -1, 0, 0, 0, -1)])
def test_a_centroid_only_case_trains_on_its_annotated_part_only(tmp_path: Path, direction) -> None:
    """Below the lowest annotated centre real vertebrae carry no label: the training CT ends 10 mm below it."""
    from export.real_cases import RealCase, write_training_folder
    from spine.image import image_from_array, write_image
    from spine.verse import write_centroid_json

    geometry = Geometry((20, 20, 60), (2.0, 2.0, 2.5), (0.0, 0.0, 0.0 if direction[8] > 0 else 147.5),
                        tuple(float(d) for d in direction))
    ct = write_image(image_from_array(np.zeros(geometry.shape_zyx, dtype=np.int16), geometry), tmp_path / "ct.nii.gz")
    centres = {1: np.array([20.0, 20.0 if direction[4] > 0 else -20.0, 120.0]),
               2: np.array([20.0, 20.0 if direction[4] > 0 else -20.0, 100.0])}
    ctd = write_centroid_json(tmp_path / "ctd.json", centres, geometry)
    written = write_training_folder([RealCase("neck", ct, None, ctd)], tmp_path / "train")
    path = tmp_path / "train" / "rawdata" / written[0] / f"{written[0]}_ct.nii.gz"
    assert path.is_file() and not path.is_symlink()
    cut = Geometry.of(read_image(path))
    corners = np.array(list(np.ndindex(2, 2, 2))) * (np.array(cut.size) - 1)
    z = cut.index_to_world(corners.astype(float))[:, 2]
    assert z.min() == pytest.approx(90.0, abs=2.5) and z.min() >= 90.0 - 1e-6  # 10 mm below C2, within a slice
    assert z.max() == pytest.approx(147.5)  # the top is kept

"""export.pseudo_labels: which of the pipeline's own centroids may train the next model (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from export.cord import CordLine
from export.pseudo_labels import Vertebra, keep_chain, main
from export.real_cases import pseudo_cases, write_training_folder
from spine.image import Geometry, read_image, write_image
from spine.verse import read_centroids_mm

CORD_XY = np.array([40.0, 50.0])
STEPS = {1: 16.0, 2: 24.0}  # C1-C2, C2-C3 as annotated; 17 mm below


def _cord() -> sitk.Image:
    """A straight cord, 4 mm thick, centred at x 40, y 50 mm, along z 0-200 mm (2 mm voxels)."""
    array = np.zeros((100, 50, 40), np.uint8)
    array[:, 24:27, 19:22] = 1  # index centre (20, 25) -> (40, 50) mm at 2 mm spacing
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def _chain(levels: int = 6, ahead: float = 14.0) -> list[Vertebra]:
    z, chain = 190.0, []
    for label in range(1, levels + 1):
        if chain:
            z -= STEPS.get(label - 1, 17.0)
        y = CORD_XY[1] - (5.0 if label == 1 else ahead)
        chain.append(Vertebra(label, np.array([CORD_XY[0], y, z]), 0.99))
    return chain


def test_a_clean_anchored_chain_is_kept_whole() -> None:
    kept = keep_chain(_chain(), CordLine.of(_cord()), anchored=True)
    assert [v.label for v in kept.vertebrae] == [1, 2, 3, 4, 5, 6]
    assert kept.ended_by == ""


def test_without_the_skull_anchor_nothing_is_kept() -> None:
    kept = keep_chain(_chain(), CordLine.of(_cord()), anchored=False)
    assert kept.vertebrae == () and "anchor" in kept.ended_by


@pytest.mark.parametrize(("change", "ends_at"), [
    ("skip", "C4"),        # C4 missed and C5 named C4: a double step
    ("squeeze", "C4"),     # a duplicate 6 mm under C3
    ("behind", "C4"),      # on the cord, not in front of it
    ("aside", "C4"),       # 15 mm to the side
    ("doubt", "C4"),       # confidence 0.6
])
def test_the_chain_ends_at_the_first_vertebra_that_fails_a_check(change: str, ends_at: str) -> None:
    chain = _chain()
    c3 = chain[2]
    if change == "skip":  # C4's place empty; the vertebra below it named C4, then C5...
        chain = chain[:3] + [Vertebra(v.label - 1, v.position_mm, v.confidence) for v in chain[4:]]
    elif change == "squeeze":
        chain[3] = Vertebra(4, c3.position_mm - np.array([0, 0, 6.0]), 0.99)
    elif change == "behind":
        chain[3] = Vertebra(4, chain[3].position_mm + np.array([0, 14.0, 0]), 0.99)
    elif change == "aside":
        chain[3] = Vertebra(4, chain[3].position_mm + np.array([15.0, 0, 0]), 0.99)
    else:
        chain[3] = Vertebra(4, chain[3].position_mm, 0.6)
    kept = keep_chain(chain, CordLine.of(_cord()), anchored=True)
    assert [v.label for v in kept.vertebrae] == [1, 2, 3]
    assert kept.ended_by.startswith(ends_at + ":")
    if change == "doubt":  # a lower bar keeps it
        assert len(keep_chain(chain, CordLine.of(_cord()), anchored=True, min_confidence=0.5).vertebrae) == 6


def test_a_chain_that_skips_a_level_by_name_ends_there() -> None:
    chain = [v for v in _chain() if v.label != 3]
    kept = keep_chain(chain, CordLine.of(_cord()), anchored=True)
    assert [v.label for v in kept.vertebrae] == [1, 2]
    assert "not the level after C2" in kept.ended_by


def test_reports_become_centroid_files_and_a_training_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ct = sitk.Image(40, 50, 100, sitk.sitkInt16) - 1000
    ct.SetSpacing((2.0, 2.0, 2.0))
    write_image(ct, data / "pt_7_ct.nii.gz")
    write_image(_cord(), data / "pt_7_spinal-cord.nii.gz")
    write_image(ct, data / "pt_8_ct.nii.gz")
    write_image(_cord(), data / "pt_8_spinal-cord.nii.gz")
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for stem, anchor in (("pt_7", "skull base: C1=40,45,190"), ("pt_8", "")):
        report = {"input": str(data / f"{stem}_ct.nii.gz"), "label": {"anchor": anchor},
                  "vertebrae": [{"label": v.label, "position_mm": v.position_mm.tolist(), "confidence": v.confidence}
                                for v in _chain(5)]}
        (predictions / f"{stem}_report.json").write_text(json.dumps(report))
    out = tmp_path / "labels"
    assert main(["--predictions", str(predictions), "--out", str(out)]) == 0
    assert not (out / "pt_8_ctd.json").exists()  # unanchored: left out
    centroids = read_centroids_mm(out / "pt_7_ctd.json", Geometry.of(read_image(data / "pt_7_ct.nii.gz")))
    expected = {v.label: v.position_mm for v in _chain(5)}
    assert sorted(centroids) == sorted(expected)
    for label, position in expected.items():
        np.testing.assert_allclose(centroids[label], position, atol=0.01)
    cases = pseudo_cases(out)
    assert [case.name for case in cases] == ["pseudo-pt_7"] and cases[0].reference == "pseudo"
    written = write_training_folder(cases, tmp_path / "train")
    assert written == ["sub-real-pseudo-pt_7-r0"]


def test_a_folder_without_reports_is_one_error(tmp_path: Path) -> None:
    assert main(["--predictions", str(tmp_path), "--out", str(tmp_path / "out")]) == 1


def test_a_broken_report_is_one_error_line_naming_it(tmp_path: Path, caplog) -> None:
    (tmp_path / "pt_9_report.json").write_text('{"vertebrae": []}')  # no "input"
    assert main(["--predictions", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "pt_9_report.json" in errors[0]
    assert not (tmp_path / "out" / "summary.csv").exists()


@pytest.mark.parametrize(("split", "stem"), [("validation", "pt_7"), ("train", "pt_1")])
def test_pseudo_labels_on_the_dev_set_or_the_locked_split_never_train(tmp_path: Path, split: str, stem: str) -> None:
    """pt_1 is in the dev annotation set (it chooses); anything under validation/ is the locked split."""
    data = tmp_path / split
    data.mkdir()
    ct = sitk.Image(40, 50, 100, sitk.sitkInt16) - 1000
    ct.SetSpacing((2.0, 2.0, 2.0))
    write_image(ct, data / f"{stem}_ct.nii.gz")
    write_image(_cord(), data / f"{stem}_spinal-cord.nii.gz")
    predictions = tmp_path / "pred"
    predictions.mkdir()
    report = {"input": str(data / f"{stem}_ct.nii.gz"), "label": {"anchor": "skull base"},
              "vertebrae": [{"label": v.label, "position_mm": v.position_mm.tolist(), "confidence": v.confidence}
                            for v in _chain(5)]}
    (predictions / f"{stem}_report.json").write_text(json.dumps(report))
    assert main(["--predictions", str(predictions), "--out", str(tmp_path / "labels")]) == 0
    with pytest.raises(ValueError, match="may not train"):
        pseudo_cases(tmp_path / "labels")


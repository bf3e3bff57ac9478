"""Levels with no anchor in view: what the CT itself fixes (Candidates.anchors) and the pipeline's cap on a coarse CT's
points where nothing does (pipeline.ANCHORLESS_CAP)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from algorithm.labelling.constraints import Constraints, Fix
from algorithm.locate import Candidates
from algorithm.pipeline import ANCHORLESS_CAP, Options, _unanchored
from algorithm.ribs import RIB_REACH_MM, SIDE_EDGE_MM, RibEvidence
from export.real_cases import openkbp_cases, shared_data_dir

RIB = RIB_REACH_MM + 20.0
FREE = SIDE_EDGE_MM - 10.0  # seen, reaching less than a short rib


def _chain(n: int = 5, *, coarse: bool = True) -> Candidates:
    """``n`` candidates down a straight column, 30 mm apart, head first."""
    positions = np.stack([np.zeros(n), np.zeros(n), 300.0 - 30.0 * np.arange(n)], axis=1)
    return Candidates(positions, np.full((n, 26), 0.1), np.full(n, 0.5), coarse=coarse)


def test_a_chain_with_nothing_but_the_networks_count_has_no_anchor() -> None:
    assert _chain().anchors() == ()
    assert _chain(coarse=False).anchors() == ()


def test_the_skull_base_and_the_sacrum_are_anchors() -> None:
    assert replace(_chain(), anchor=Fix(1, (0.0, 0.0, 310.0))).anchors() == ("skull base",)
    assert replace(_chain(), on_sacrum=True).anchors() == ("sacrum",)


def test_ribs_are_no_anchor_at_the_pixels_where_the_count_is_doubted() -> None:
    """A coarse CT's ribs: neither the top of the run (C7's process or T1's rib) nor its lower end fixes a level."""
    ribs = RibEvidence(np.array([[RIB, RIB], [RIB, RIB], [FREE, FREE], [FREE, FREE], [0.0, 0.0]]),
                       np.array([[False] * 2, [False] * 2, [True] * 2, [True] * 2, [False] * 2]), resolved=False)
    assert replace(_chain(), ribs=ribs).anchors() == ()
    assert "not anchored" in _unanchored(replace(_chain(), ribs=ribs), Options())


def test_only_a_coarse_ct_without_an_anchor_or_a_users_fix_is_unanchored() -> None:
    assert _unanchored(_chain(coarse=False), Options()) == ""
    assert "not anchored" in _unanchored(_chain(), Options())
    assert _unanchored(replace(_chain(), on_sacrum=True), Options()) == ""
    fixed = Options(constraints=Constraints(fixes=(Fix(3, (0.0, 0.0, 300.0)),)))
    assert _unanchored(_chain(), fixed) == ""


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared OpenKBP CTs (../shared/data)")
def test_a_neck_without_its_skull_says_its_levels_are_counted_not_anchored() -> None:
    """fit pt_58 (real OpenKBP CT, 4.3 mm pixels, bundled models) with its top two annotated levels cropped away
    (bench/real.py's ``top-cropped``): the chain came out one level low (C3-C6 called C4-C7) at confidences of
    0.84-1.00. With neither the skull base nor the sacrum in view, no point says more than ANCHORLESS_CAP and the run
    report says why; the whole CT, its skull base in view, keeps its confident points."""
    from algorithm.models import ModelSource, find_model_dir, load_models
    from algorithm.pipeline import predict_case
    from export.reformat import reformats

    (case,) = [c for c in openkbp_cases("fit") if c.name == "openkbp-pt_58"]
    whole = case.load()
    ((_, cropped),) = reformats(whole, ["top-cropped"])
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")

    result = predict_case(cropped.ct, models)
    assert result.vertebrae and max(v.confidence for v in result.vertebrae) <= ANCHORLESS_CAP
    assert "not anchored" in result.details["label"]["unanchored"] and result.details["label"]["uncertain"]

    anchored = predict_case(whole.ct, models)
    assert "unanchored" not in anchored.details["label"]
    assert anchored.details["label"]["anchor"].startswith("skull base")
    assert min(v.confidence for v in anchored.vertebrae if v.label <= 3) > ANCHORLESS_CAP

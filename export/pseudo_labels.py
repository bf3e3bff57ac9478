"""Pseudo-labels for self-training on unlabelled real head-and-neck CTs (issue 19, "noisy student").

The pipeline's own vertebra centroids on an OpenKBP CT become training labels for the next model only
where checks that need no vertebra labels all pass, read from the top of the chain down; the first
vertebra that fails one ends the kept chain (below it nothing is known, and the CT is cut there for
training, :func:`export.real_cases.annotated_ct`):

1. **Anchored**: the chain starts at the skull base (the report's ``label.anchor``), so C1 is C1 and
   every level below is a count, not a guess.
2. **Beside the cord**: the radiotherapy spinal-cord contour is a real annotation of the canal. A body's
   centre lies in front of the cord's centre on the same axial slice by ``CORD_AHEAD_MM`` (C1 and C2 by
   ``AHEAD_MM``) and within ``CORD_SIDEWAYS_MM`` of it sideways; where the contour has no slice within
   ``CORD_SLICE_MM``, the vertebra is not checked and the chain ends.
3. **One level per step**: the distance to the vertebra above lies within ``STEP_MM`` of its pair of
   levels (C1-C2 and C2-C3 are their own: the dens and C2's tall body). A skipped level (a step about
   twice as long) or a doubled one (half) fails.
4. **Confident**: the decoder's confidence is at least ``MIN_CONFIDENCE``.

A case keeps its pseudo-labels when at least ``MIN_KEPT`` vertebrae pass. The bounds are the spread of
the project's human annotations of the OpenKBP ``dev`` and ``fit`` sets (``bench/annotations``: C2-C7
bodies 7-23 mm in front of the cord's centre and within 2 mm of it sideways; steps C1-C2 11-19 mm, C2-C3
21-29 mm, C3-T3 14-20 mm), widened for where the pipeline puts its candidates, measured on ``dev``: C2 6 mm
lower and 4 mm further back than the annotated centroid of body and dens, C2-C4 3 mm further back.
On the 24 ``dev`` CTs (bundled models of commit e5bfe77) the checks keep 100 vertebrae in 16 CTs: of the 61
at levels the annotators labelled, 57 lie within 10 mm of that level's annotated centre and 4 at 10-14 mm; the
other 39 lie below what the annotators could read with certainty.

Usage: ``python -m algorithm predict CT... --output PRED`` on unlabelled CTs, then
``python -m export.pseudo_labels --predictions PRED --out LABELS``: one VerSe centroid JSON per kept case
(``<stem>_ctd.json``, beside ``summary.csv`` saying per case what was kept and why the chain ended);
``python -m export.real_cases --pseudo LABELS`` lays them out for training.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.cord import CordLine
from spine.image import Geometry, read_image, write_text_atomic
from spine.labels import NAMES as LABEL_NAMES
from spine.verse import write_centroid_json

__all__ = ["AHEAD_MM", "CORD_AHEAD_MM", "CORD_SIDEWAYS_MM", "CORD_SLICE_MM", "MIN_CONFIDENCE", "MIN_KEPT",
           "STEP_MM", "Kept", "Vertebra", "keep_chain", "main", "pseudo_label"]

log = logging.getLogger(__name__)

CORD_AHEAD_MM = (5.0, 26.0)
"""How far a vertebral body's centre lies in front of the cord's centre (LPS: its y smaller), mm."""
AHEAD_MM = {1: (-4.0, 17.0), 2: (0.0, 26.0)}
"""The same for C1, whose centroid is the ring's centre just behind the dens, and C2, whose candidates lie 4 mm
further back than the annotated centres at the median (the outline of body and dens, on ``dev``)."""
CORD_SIDEWAYS_MM = 8.0
"""Largest left-right offset of a centroid from the cord's centre, mm."""
CORD_SLICE_MM = 3.0
"""A contour slice must lie this close (head-foot) to the centroid for the cord check to be read."""
STEP_MM = {1: (9.0, 27.0), 2: (16.5, 32.0)}
"""Allowed distance from the vertebra above, by the upper label (VerSe id); others: ``DEFAULT_STEP_MM``."""
DEFAULT_STEP_MM = (11.5, 25.0)
MIN_CONFIDENCE = 0.9
MIN_KEPT = 3


@dataclass(frozen=True)
class Vertebra:
    """One vertebra the pipeline named: VerSe label id, LPS mm centroid, the decoder's confidence."""

    label: int
    position_mm: np.ndarray
    confidence: float


@dataclass(frozen=True)
class Kept:
    """The vertebrae kept from the top of a chain, and why the chain ended there ("" if none failed)."""

    vertebrae: tuple[Vertebra, ...]
    ended_by: str


def _cord_fails(vertebra: Vertebra, cord: CordLine) -> str:
    centre = cord.at(float(vertebra.position_mm[2]), CORD_SLICE_MM)
    if centre is None:
        return "no cord contour on its slice"
    ahead = float(centre[1] - vertebra.position_mm[1])
    low, high = AHEAD_MM.get(vertebra.label, CORD_AHEAD_MM)
    if not low <= ahead <= high:
        return f"{ahead:.1f} mm in front of the cord (allowed {low:g}-{high:g})"
    sideways = abs(float(centre[0] - vertebra.position_mm[0]))
    if sideways > CORD_SIDEWAYS_MM:
        return f"{sideways:.1f} mm beside the cord (allowed {CORD_SIDEWAYS_MM:g})"
    return ""


def keep_chain(vertebrae: Sequence[Vertebra], cord: CordLine, *, anchored: bool,
               min_confidence: float = MIN_CONFIDENCE) -> Kept:
    """The vertebrae that pass every check of the module docstring, from the top down to the first failure."""
    if not anchored:
        return Kept((), "no skull-base anchor")
    chain = sorted(vertebrae, key=lambda v: v.label)
    if not chain or chain[0].label != 1:
        return Kept((), "the chain does not start at C1")
    kept: list[Vertebra] = []
    for vertebra in chain:
        name = LABEL_NAMES.get(vertebra.label, str(vertebra.label))
        if kept:
            above = kept[-1]
            if vertebra.label != above.label + 1:
                return Kept(tuple(kept), f"{name}: not the level after {LABEL_NAMES.get(above.label)}")
            step = float(np.linalg.norm(vertebra.position_mm - above.position_mm))
            low, high = STEP_MM.get(above.label, DEFAULT_STEP_MM)
            if not low <= step <= high:
                return Kept(tuple(kept), f"{name}: {step:.1f} mm from the vertebra above (allowed {low:g}-{high:g})")
        if vertebra.confidence < min_confidence:
            return Kept(tuple(kept), f"{name}: confidence {vertebra.confidence:.2f} < {min_confidence:g}")
        reason = _cord_fails(vertebra, cord)
        if reason:
            return Kept(tuple(kept), f"{name}: {reason}")
        kept.append(vertebra)
    return Kept(tuple(kept), "")


def _report_vertebrae(report: dict) -> list[Vertebra]:
    return [Vertebra(int(v["label"]), np.asarray(v["position_mm"], dtype=np.float64), float(v["confidence"]))
            for v in report.get("vertebrae", [])]


def cord_path_of(ct: Path) -> Path:
    """The OpenKBP spinal-cord contour beside a CT: ``pt_N_ct.nii.gz`` -> ``pt_N_spinal-cord.nii.gz``."""
    return ct.with_name(ct.name.replace("_ct.nii.gz", "_spinal-cord.nii.gz"))


def pseudo_label(report_path: Path, *, min_confidence: float = MIN_CONFIDENCE) -> tuple[Path, Kept]:
    """The CT a ``<case>_report.json`` of ``algorithm predict`` was made from and the chain kept on it."""
    report = json.loads(report_path.read_text())
    ct = Path(report["input"])
    anchored = str(report.get("label", {}).get("anchor", "")).startswith("skull base")
    cord_path = cord_path_of(ct)
    if not cord_path.is_file():
        return ct, Kept((), f"{cord_path}: no cord contour")
    return ct, keep_chain(_report_vertebrae(report), CordLine.of(read_image(cord_path)), anchored=anchored,
                          min_confidence=min_confidence)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.pseudo_labels",
        description="Keep the pipeline's centroids on unlabelled OpenKBP CTs where label-free checks pass "
                    "(skull-base anchor, cord contour, one level per step, confidence) and write them as "
                    "VerSe centroid JSONs for self-training.")
    parser.add_argument("--predictions", required=True, type=Path,
                        help="an 'algorithm predict' output folder (its *_report.json files are read)")
    parser.add_argument("--out", required=True, type=Path, help="folder for <stem>_ctd.json and summary.csv")
    parser.add_argument("--min-confidence", type=float, default=MIN_CONFIDENCE,
                        help=f"lowest decoder confidence a kept vertebra may have (default {MIN_CONFIDENCE:g})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    reports = sorted(args.predictions.glob("*_report.json"))
    if not reports:
        log.error("%s: no *_report.json files", args.predictions)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for report_path in reports:
        try:
            ct, kept = pseudo_label(report_path, min_confidence=args.min_confidence)
        except (KeyError, TypeError, ValueError, OSError) as error:  # JSONDecodeError is a ValueError
            log.error("%s: not a readable 'algorithm predict' report (%s: %s)", report_path,
                      type(error).__name__, error)
            return 1
        stem = ct.name[: -len("_ct.nii.gz")] if ct.name.endswith("_ct.nii.gz") else report_path.name[:-12]
        target = args.out / f"{stem}_ctd.json"
        target.unlink(missing_ok=True)
        used = len(kept.vertebrae) >= MIN_KEPT
        if used:
            geometry = Geometry.of(read_image(ct))
            write_centroid_json(target, {v.label: v.position_mm for v in kept.vertebrae}, geometry)
        rows.append({"case": stem, "ct": str(ct), "kept": len(kept.vertebrae), "used": int(used),
                     "levels": " ".join(LABEL_NAMES[v.label] for v in kept.vertebrae),
                     "ended_by": kept.ended_by})
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.out / "summary.csv", table.getvalue())
    log.info("%d of %d cases keep pseudo-labels (%d vertebrae) in %s", sum(row["used"] for row in rows), len(rows),
             sum(row["kept"] for row in rows if row["used"]), args.out)
    write_text_atomic(args.out / "README.txt",
                      "Pseudo-labels of export.pseudo_labels (module docstring: the checks); summary.csv per case.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real labelled spine CTs this project can measure on, and the vertebral-body centres of a mask.

Real CTs with vertebra labels are rare here (``../shared/data/README.md``): the bundled example
(``examples/totalsegmentator-example``, automatic TotalSegmentator labels), the TPTBox lumbar crop,
VerSe ``sub-verse014`` (manual ground truth, annotated body centres) and the TotalSegmentator aorta
crop (only T12 labelled). :data:`REAL_CASES` lists them with what their labels are worth; any other
case (a CT, its mask, optionally a VerSe centroid JSON) is a :class:`RealCase` too.

Body centres. The locate stage predicts vertebral-body centres (VerSe's annotated centroids),
while a mask's centre of mass lies 10-15 mm further back, pulled by the posterior elements.
Where a case has no annotated centres, :func:`body_centres_mm` estimates them from the mask:
the body is the thickest part of a vertebra, so the centre of the voxels deepest inside the
mask (distance to the mask's surface at least ``depth_fraction`` of the label's maximum) lies in
the body. On VerSe's annotated cases the estimate is within a few mm of the annotation
(``test/test_real_cases.py`` pins it).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spine.body import DEPTH_FRACTION, deepest_centre_zyx
from spine.case import Case
from spine.image import Geometry, read_image, write_image
from spine.labels import EVALUATED
from spine.verse import centroid_json_name, mask_name, read_centroids_mm, write_centroid_json

__all__ = [
    "ANNOTATIONS",
    "LOCKED_SPLIT",
    "OPENKBP_SETS",
    "UNANNOTATED_MARGIN_MM",
    "REAL_CASES",
    "REPO",
    "RealCase",
    "annotated_ct",
    "body_centres_mm",
    "find_real_cases",
    "main",
    "openkbp_cases",
    "pseudo_cases",
    "shared_data_dir",
    "write_training_folder",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "VERSE_GC_DATA"


def shared_data_dir() -> Path | None:
    """``$VERSE_GC_DATA`` or ``<repo>/../shared/data`` when it exists (a developer checkout), else None."""
    env = os.environ.get(DATA_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


@dataclass(frozen=True)
class RealCase:
    """One real labelled CT: where its files are and what its labels are worth.

    - ``centroids``: a VerSe centroid JSON of annotated body centres, or None (then
      :func:`body_centres_mm` estimates them from the mask);
    - ``reference``: ``"manual"`` (ground truth), ``"automatic"`` (another model's output) or ``"pseudo"``
      (this pipeline's own output kept by :mod:`export.pseudo_labels`: trains, never measures);
    - ``complete``: every vertebra in view is labelled (False: false-detection counts are
      limited to the labelled levels' extent);
    - ``mask`` None: a case annotated with centroids only (``centroids`` then required), measured
      on finding and naming, not on outlines.
    """

    name: str
    ct: Path
    mask: Path | None
    centroids: Path | None = None
    reference: str = "manual"
    complete: bool = True
    note: str = ""

    def exists(self) -> bool:
        if self.mask is None:
            return self.ct.is_file() and self.centroids is not None and self.centroids.is_file()
        return self.ct.is_file() and self.mask.is_file()

    def load(self) -> Case:
        """The case with body centres: annotated when a JSON is given, else estimated from the mask."""
        ct = read_image(self.ct)
        if self.mask is None:
            if self.centroids is None:
                raise ValueError(f"{self.name}: a case without a mask needs its centroids")
            return Case(self.name, ct, None, read_centroids_mm(self.centroids, Geometry.of(ct)), self.ct.parent)
        mask = read_image(self.mask)
        if not Geometry.of(mask).same_as(Geometry.of(ct)):
            raise ValueError(f"{self.mask}: mask and CT are on different grids")
        mask = sitk.Cast(mask, sitk.sitkUInt8)
        centres = body_centres_mm(mask)
        if self.centroids is not None:
            centres.update(read_centroids_mm(self.centroids, Geometry.of(ct)))
        return Case(self.name, ct, mask, centres, self.ct.parent)


def _bundled_and_shared(shared: Path | None) -> list[RealCase]:
    example = REPO / "examples" / "totalsegmentator-example"
    cases = [RealCase("totalsegmentator-example", example / "ct.nii.gz", example / "seg-vert_msk.nii.gz",
                      reference="automatic", complete=False,
                      note="abdomen-pelvis, 3 mm, T11 (partial) to sacrum; TotalSegmentator's labels")]
    if shared is None:
        return cases
    tpt, v014, aorta = shared / "tptbox-lumbar", shared / "verse-sub-verse014", shared / "totalsegmentator-aorta"
    cases += [
        RealCase("tptbox-lumbar", tpt / "sub-ct_label-22_ct.nii.gz", tpt / "sub-ct_seg-vert_label-22_msk.nii.gz",
                 reference="manual", note="1.5 mm crop, L2 (partial), L3, L4 (partial)"),
        RealCase("verse-sub-verse014", v014 / "sub-verse014_ct.nii.gz", v014 / "sub-verse014_seg-vert_msk.nii.gz",
                 v014 / "sub-verse014_seg-subreg_ctd.json", reference="manual",
                 note="sagittal lumbar slab 1x1x2 mm, L1-L5, VerSe ground truth"),
        RealCase("totalsegmentator-aorta", aorta / "ct.nii.gz", aorta / "seg-T12_msk.nii.gz",
                 reference="automatic", complete=False,
                 note="contrast chest crop with a stent graft, 1.5 mm; only T12 labelled"),
    ]
    return cases


REAL_CASES: tuple[RealCase, ...] = tuple(_bundled_and_shared(shared_data_dir()))

ANNOTATIONS = REPO / "bench" / "annotations" / "openkbp-headneck"
"""The project's own vertebra annotations of OpenKBP head-and-neck CTs (its README says how they were made), one
folder per set: ``fit`` (train-split CTs, to train on), ``dev`` (train-split CTs, to choose rules and models on),
``validation`` (the challenge's validation split: the LOCKED set, reported once, never trained or tuned on)."""
LOCKED_SPLIT = "validation"
OPENKBP_SETS = {"fit": "train", "dev": "train", LOCKED_SPLIT: "validation"}
"""Annotation set -> the OpenKBP split its CTs come from."""


def openkbp_cases(annotation_set: str, shared: Path | None = None) -> list[RealCase]:
    """The annotated OpenKBP CTs of ``annotation_set`` (:data:`OPENKBP_SETS`) whose CTs are in ``../shared/data``.

    Centroid-only cases (no vertebra masks exist): every fully visible vertebra's body centre, annotated
    from the images before any pipeline output on them was seen.
    """
    if annotation_set not in OPENKBP_SETS:
        raise ValueError(f"unknown OpenKBP annotation set {annotation_set!r}: one of {', '.join(OPENKBP_SETS)}")
    shared = shared if shared is not None else shared_data_dir()
    if shared is None:
        return []
    split = OPENKBP_SETS[annotation_set]
    cases = []
    for ctd in sorted((ANNOTATIONS / annotation_set).glob("pt_*_ctd.json"), key=lambda p: int(p.name.split("_")[1])):
        stem = ctd.name[: -len("_ctd.json")]
        ct = shared / "openkbp-headneck" / split / f"{stem}_ct.nii.gz"
        cases.append(RealCase(f"openkbp-{stem}", ct, None, ctd, reference="manual", complete=False,
                              note=f"OpenKBP {split} head-and-neck CT ({annotation_set} set), centroids annotated by "
                                   "the project"))
    return [case for case in cases if case.exists()]


def pseudo_cases(folder: str | os.PathLike[str]) -> list[RealCase]:
    """The cases an :mod:`export.pseudo_labels` folder kept: each ``<stem>_ctd.json`` with the CT its
    ``summary.csv`` names (centroid-only, ``reference="pseudo"``: the pipeline's own labels, checked without
    labels, never a measure of anything)."""
    root = Path(folder)
    summary = root / "summary.csv"
    if not summary.is_file():
        raise ValueError(f"{summary}: no summary.csv (not an export.pseudo_labels folder)")
    with summary.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("used") == "1"]
    cases = [RealCase(f"pseudo-{row['case']}", Path(row["ct"]), None, root / f"{row['case']}_ctd.json",
                      reference="pseudo", complete=False, note=f"pseudo-labels {row['levels']}") for row in rows]
    missing = [case.name for case in cases if not case.exists()]
    if missing:
        raise ValueError(f"{root}: CT or centroids missing for {', '.join(missing)}")
    # The set that chooses (dev, train-split CTs named by its annotations) and the locked split (a whole folder)
    # must never train, not even through pseudo-labels.
    dev = {f"{ctd.name[: -len('_ctd.json')]}_ct.nii.gz" for ctd in (ANNOTATIONS / "dev").glob("pt_*_ctd.json")}
    refused = [case.name for case in cases if case.ct.parent.name == OPENKBP_SETS[LOCKED_SPLIT]
               or (case.ct.parent.name == OPENKBP_SETS["dev"] and case.ct.name in dev)]
    if refused:
        raise ValueError(f"{root}: pseudo-labels on the OpenKBP dev set or the locked validation split may not "
                         f"train: {', '.join(refused)}")
    return cases


def find_real_cases(names: list[str] | None = None) -> list[RealCase]:
    """The known real cases whose files exist, optionally only those named."""
    cases = [case for case in REAL_CASES if case.exists()]
    if names:
        unknown = sorted(set(names) - {case.name for case in cases})
        if unknown:
            raise ValueError(f"unknown or missing real case(s): {', '.join(unknown)}")
        cases = [case for case in cases if case.name in names]
    return cases


def body_centres_mm(mask: sitk.Image, *, depth_fraction: float = DEPTH_FRACTION) -> dict[int, np.ndarray]:
    """Estimated vertebral-body centre (LPS mm) of every evaluated label in ``mask`` (module docstring).

    Per label: the spacing-aware distance of each voxel to the label's surface (EDT on the
    label's bounding box, padded by one voxel); the centre of mass of the voxels at depth
    >= ``depth_fraction`` x the label's deepest voxel, mapped to world mm.
    """
    geometry = Geometry.of(mask)
    array = sitk.GetArrayViewFromImage(mask)
    spacing_zyx = tuple(reversed(geometry.spacing_mm))
    objects = ndimage.find_objects(np.asarray(array, dtype=np.int32))
    centres: dict[int, np.ndarray] = {}
    for index, box in enumerate(objects):
        label = index + 1
        if box is None or label not in EVALUATED:
            continue
        zyx = deepest_centre_zyx(np.asarray(array[box]) == label, spacing_zyx, depth_fraction=depth_fraction)
        centres[label] = geometry.index_to_world((zyx + np.array([s.start for s in box], dtype=np.float64))[::-1])
    return centres


UNANNOTATED_MARGIN_MM = 10.0
"""How far below its lowest annotated body centre a centroid-only case's CT is kept for training: that body's
lower half (a body is 14-25 mm tall), not the next one's centre (14-22 mm further down)."""


def annotated_ct(case: Case, margin_mm: float = UNANNOTATED_MARGIN_MM) -> sitk.Image:
    """The CT of a centroid-only case cut ``margin_mm`` below its lowest annotated centroid (world z).

    The cut runs across the index axis nearest the head-foot axis (:func:`export.reformat.index_axis`), read
    where that axis crosses the grid's middle; the rest of the grid is unchanged.
    """
    from export.reformat import index_axis

    geometry = case.geometry
    axis, sign = index_axis(geometry, 2)
    lowest = min(float(c[2]) for c in case.centroids_mm.values())
    centre = geometry.index_to_world((np.asarray(geometry.size, dtype=np.float64) - 1) / 2)
    index = geometry.world_to_index(np.array([centre[0], centre[1], lowest - margin_mm]))[axis]
    size = geometry.size[axis]
    lower, upper = [0, 0, 0], [0, 0, 0]
    if sign > 0:  # index grows towards the head: keep [cut, end)
        lower[axis] = int(np.clip(np.ceil(index), 0, size - 1))
    else:
        upper[axis] = size - int(np.clip(np.floor(index) + 1, 1, size))
    return sitk.Crop(case.ct, lower, upper)


def write_training_folder(cases: Sequence[RealCase], out: str | os.PathLike[str], *, copies: int = 1) -> list[str]:
    """Lay real cases out as a VerSe folder for ``export train --data``; returns the case ids written.

    CT and mask are symbolic links to the originals (nothing is copied; a centroid-only case has no mask,
    trains the detect and locate stages only, and its CT is written cut below its annotation:
    :func:`annotated_ct`); the centroid JSON holds the body centres of
    :meth:`RealCase.load`. ``copies`` > 1 writes each case that many times under
    ids ``real-<name>-r<k>``: a few real cases among many synthetic ones are then drawn as often as
    wanted (uniform sampling over cases). Existing files of the same name are replaced.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    root = Path(out)
    written = []
    for real in cases:
        case = real.load()
        # A centroid-only case is annotated from its top down to the last level a reader could count with
        # certainty: below that, real vertebrae carry no label and would teach "no vertebra here". Its CT is
        # written cut below the annotation instead of linked (annotated_ct).
        ct = None if real.mask is not None else annotated_ct(case)
        for k in range(copies):
            case_id = f"real-{real.name}-r{k}"
            raw, derived = root / "rawdata" / f"sub-{case_id}", root / "derivatives" / f"sub-{case_id}"
            raw.mkdir(parents=True, exist_ok=True)
            derived.mkdir(parents=True, exist_ok=True)
            links = [(raw / f"sub-{case_id}_ct.nii.gz", real.ct)]
            if real.mask is not None:  # a centroid-only case trains detect and locate, not segment
                links.append((derived / mask_name(f"sub-{case_id}"), real.mask))
            else:
                links = []
                path = raw / f"sub-{case_id}_ct.nii.gz"
                path.unlink(missing_ok=True)
                write_image(ct, path)
            for link, target in links:
                link.unlink(missing_ok=True)
                link.symlink_to(target.resolve())
            write_centroid_json(derived / centroid_json_name(f"sub-{case_id}"), case.centroids_mm, case.geometry)
            written.append(f"sub-{case_id}")
        log.info("%s: %d cop%s in %s", real.name, copies, "y" if copies == 1 else "ies", root)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.real_cases",
        description="Write the known real labelled CTs as a VerSe-layout training folder (links + body centres).")
    parser.add_argument("--out", required=True, help="output folder (VerSe layout)")
    parser.add_argument("--cases", nargs="+", metavar="NAME",
                        help=f"which cases (default: all found: {', '.join(c.name for c in find_real_cases())})")
    parser.add_argument("--openkbp", choices=["fit"], action="append",
                        help="also (or, with --only-openkbp, only) the project's annotated OpenKBP head-and-neck CTs "
                             "of this set (centroids only: detect and locate train on them, segment does not); the "
                             "dev set chooses and the locked validation set is scored once: neither trains")
    parser.add_argument("--pseudo", type=Path, action="append", metavar="DIR",
                        help="also the cases an 'export.pseudo_labels' folder kept (self-training)")
    parser.add_argument("--only-openkbp", action="store_true",
                        help="leave out the masked real cases (OpenKBP and --pseudo cases only)")
    parser.add_argument("--copies", type=int, default=1, help="copies of each case, to oversample them (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cases = [] if args.only_openkbp else find_real_cases(args.cases)
        cases += [case for name in args.openkbp or [] for case in openkbp_cases(name)]
        cases += [case for folder in args.pseudo or [] for case in pseudo_cases(folder)]
        written = write_training_folder(cases, args.out, copies=args.copies)
    except (ValueError, OSError) as error:
        log.error("%s", error)
        return 1
    log.info("%d cases written to %s", len(written), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

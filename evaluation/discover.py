"""Find the cases to score: ground truth on one side, GC jobs or a prediction folder on the other.

Ground truth (DESIGN.md, "Grand Challenge evaluation contract"): files
``<case>_seg-vert_msk.(nii.gz|mha)`` and optional ``<case>*_ctd.json`` anywhere below the
root. Case id of a GC job = its input image name without extensions and a trailing
``_ct`` (:func:`spine.verse.case_id_of`). A folder holding one case without prefixes
(``ct.nii.gz``, ``seg-vert_msk.nii.gz``, ``seg-vert_ctd.json``, as the bundled example)
is the case ``predict`` names after its CT (``ct``), else after the folder.

Problems that make the whole evaluation meaningless (no ground truth, a malformed
``predictions.json``) raise :class:`InputError` with one line naming the file and the
problem; everything that concerns one case is left to the scorer, which records it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.score import MISSING_PREDICTION, CaseFiles
from spine.gc import ContractError, Job, read_predictions_json
from spine.image import IMAGE_SUFFIXES
from spine.layout import CENTROIDS_OUTPUT, SEGMENTATION_OUTPUT, EvaluationLayout
from spine.verse import case_id_of

__all__ = [
    "GroundTruthCase",
    "InputError",
    "Pairing",
    "find_ground_truth",
    "pair_folders",
    "pair_gc_jobs",
]

log = logging.getLogger(__name__)

MASK_TAIL = "_seg-vert_msk"
BARE_MASK = "seg-vert_msk"
MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".mha", ".nii", ".mhd", ".nrrd")
POINTS_TAIL = "_points.json"
CENTROIDS_TAIL = "_ctd.json"


class InputError(ValueError):
    """The evaluation cannot run at all; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class GroundTruthCase:
    """One ground-truth case: its mask and, when there is one, its VerSe centroid JSON."""

    case_id: str
    mask: Path
    centroids: Path | None = None


@dataclass(frozen=True)
class Pairing:
    """Cases to score (one per ground-truth case) and predictions that match no ground truth."""

    cases: tuple[CaseFiles, ...]
    unmatched: tuple[dict[str, str], ...]


def _mask_case_id(path: Path) -> str | None:
    """``<case>_seg-vert_msk.<suffix>`` -> case id; a bare ``seg-vert_msk.<suffix>`` -> the
    case of its folder (:func:`_bare_case_id`); None for any other name."""
    name = path.name
    for suffix in MASK_SUFFIXES:
        if name.lower() == BARE_MASK + suffix:
            return _bare_case_id(path.parent)
        if name.lower().endswith(MASK_TAIL + suffix):
            return name[: -len(MASK_TAIL + suffix)]
    return None


def _bare_case_id(folder: Path) -> str:
    """Case of a folder holding one case without VerSe prefixes (``ct.nii.gz``, ``seg-vert_msk.nii.gz``,
    ``seg-vert_ctd.json``, as in ``examples/``): the id ``predict`` gives its one CT (``ct.nii.gz`` ->
    ``ct``), else the folder's name."""
    images = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
              and not p.name.lower().startswith("seg-")]
    return case_id_of(images[0].name) if len(images) == 1 else folder.name


def _files_below(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _masks(files: Iterable[Path]) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for path in files:
        case = _mask_case_id(path)
        if case is None:
            continue
        if case in masks:
            log.warning("%s: second mask for case %s ignored (keeping %s)", path, case, masks[case].name)
            continue
        masks[case] = path
    return masks


def assign_by_prefix(case_ids: Iterable[str], paths: Iterable[Path], tail: str) -> dict[str, Path]:
    """Give each ``<case>*<tail>`` file to the longest case id its name starts with (``<case>_``).

    The longest match wins so that ``sub-gl003_dir-ax_..._ctd.json`` goes to ``sub-gl003_dir-ax``
    rather than ``sub-gl003``; for two files of one case the first in sorted order wins
    (``seg-subreg`` before ``seg-vb``).
    """
    ids = sorted(case_ids, key=len, reverse=True)
    out: dict[str, Path] = {}
    for path in sorted(paths):
        name = path.name
        if not name.lower().endswith(tail):
            continue
        stem = name[: -len(tail)]
        case = next((c for c in ids if stem == c or name.startswith(c + "_")), None)
        if case is not None and case not in out:
            out[case] = path
    return out


def find_ground_truth(root: Path) -> dict[str, GroundTruthCase]:
    """Ground-truth cases below ``root``. Raises :class:`InputError` when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: ground-truth folder does not exist")
    files = _files_below(root)
    masks = _masks(files)
    if not masks:
        raise InputError(f"{root}: no ground-truth masks (<case>_seg-vert_msk.nii.gz or .mha) found")
    centroids = assign_by_prefix(masks, files, CENTROIDS_TAIL)
    for case, mask in masks.items():  # a bare mask's centroids: the bare seg-*_ctd.json beside it
        if case not in centroids and mask.name.lower().startswith(BARE_MASK):
            beside = sorted(p for p in mask.parent.glob("seg-*" + CENTROIDS_TAIL) if p.is_file())
            if beside:
                centroids[case] = beside[0]
    return {case: GroundTruthCase(case, masks[case], centroids.get(case)) for case in sorted(masks)}


def _gt_fields(gt: GroundTruthCase) -> dict[str, Any]:
    return {"case_id": gt.case_id, "reference_mask": gt.mask, "reference_centroids": gt.centroids}


# --------------------------------------------------------------------------- GC mode


def _job_image(folder: Path) -> tuple[Path | None, list[str]]:
    """The one image of an image socket's folder (or the file itself)."""
    if folder.is_file():
        return folder, []
    if not folder.is_dir():
        return None, []
    images = [p for p in sorted(folder.iterdir())
              if p.is_file() and any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES)]
    if not images:
        return None, []
    notes = [f"{len(images)} images in the segmentation output, scored {images[0].name}"] if len(images) > 1 else []
    return images[0], notes


def _job_case(job: Job, layout: EvaluationLayout, gt: GroundTruthCase) -> CaseFiles:
    seg = job.output(SEGMENTATION_OUTPUT.slug)
    seg_dir = layout.job_output(job.pk, seg.relative_path if seg and seg.relative_path
                                else SEGMENTATION_OUTPUT.relative_path)
    image, notes = _job_image(seg_dir)
    points_value = job.output(CENTROIDS_OUTPUT.slug)
    points = layout.job_output(job.pk, points_value.relative_path if points_value and points_value.relative_path
                               else CENTROIDS_OUTPUT.relative_path)
    if job.status and job.status.lower() not in ("succeeded", "success"):
        notes.append(f"job {job.pk} status {job.status}")
    return CaseFiles(
        **_gt_fields(gt),
        prediction_mask=image,
        prediction_points=points if points.is_file() else None,
        missing_reason=f"{MISSING_PREDICTION}: no image in job {job.pk}'s {SEGMENTATION_OUTPUT.slug} output",
        notes=tuple(notes),
    )


def pair_gc_jobs(layout: EvaluationLayout, ground_truth: Mapping[str, GroundTruthCase]) -> Pairing:
    """Match the jobs of ``predictions.json`` to ground-truth cases by their input image name.

    Raises :class:`InputError` for a missing or malformed ``predictions.json``.
    """
    try:
        jobs = read_predictions_json(layout.predictions_json)
    except ContractError as error:
        raise InputError(str(error)) from None
    matched: dict[str, CaseFiles] = {}
    unmatched: list[dict[str, str]] = []
    for job in jobs:
        name = job.input_image_name()
        if name is None:
            unmatched.append({"pk": job.pk, "image_name": "", "reason": "job has no input image name"})
            continue
        case = case_id_of(name)
        if case not in ground_truth:
            unmatched.append({"pk": job.pk, "image_name": name, "reason": "no ground truth"})
        elif case in matched:
            unmatched.append({"pk": job.pk, "image_name": name, "reason": f"second job for case {case}, not scored"})
        else:
            matched[case] = _job_case(job, layout, ground_truth[case])
    for item in unmatched:
        log.warning("prediction not scored: job %s (%s): %s", item["pk"], item["image_name"] or "-", item["reason"])
    cases = tuple(matched.get(case) or CaseFiles(**_gt_fields(gt), missing_reason=f"{MISSING_PREDICTION}: no job")
                  for case, gt in sorted(ground_truth.items()))
    return Pairing(cases, tuple(unmatched))


# --------------------------------------------------------------------------- folder mode


def pair_folders(predictions_dir: Path, ground_truth: Mapping[str, GroundTruthCase]) -> Pairing:
    """Match ``<case>_seg-vert_msk.*`` predictions (+ ``<case>_points.json`` GC points or
    ``<case>*_ctd.json`` VerSe centroids) to ground-truth cases by VerSe name.

    Raises :class:`InputError` when the predictions folder does not exist.
    """
    root = Path(predictions_dir)
    if not root.is_dir():
        raise InputError(f"{root}: predictions folder does not exist")
    files = _files_below(root)
    masks = _masks(files)
    points = assign_by_prefix(masks, files, POINTS_TAIL)
    centroids = assign_by_prefix(masks, files, CENTROIDS_TAIL)
    unmatched = [{"file": str(path.relative_to(root)), "case": case, "reason": "no ground truth"}
                 for case, path in sorted(masks.items()) if case not in ground_truth]
    for item in unmatched:
        log.warning("prediction not scored: %s: %s", item["file"], item["reason"])
    cases = []
    for case, gt in sorted(ground_truth.items()):
        cases.append(CaseFiles(
            **_gt_fields(gt),
            prediction_mask=masks.get(case),
            prediction_points=points.get(case) or centroids.get(case),
            missing_reason=f"{MISSING_PREDICTION}: no {case}{MASK_TAIL} image in the predictions folder",
        ))
    return Pairing(tuple(cases), tuple(unmatched))

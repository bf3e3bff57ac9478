"""One case, end to end: detect -> locate -> label -> segment -> outputs in the input's exact geometry.

Entry points:

- :func:`predict_case`: a read CT (any orientation/spacing) -> :class:`CaseResult` (UInt8 label map
  on the input grid, labelled centroids in LPS mm with confidences, per-stage costs);
- :func:`read_gc_input` / :func:`run_gc_case`: the Grand Challenge contract (``/input`` ->
  ``/output``, all outputs or none);
- :func:`segment_from_centroids`: a CT and labelled centroids a user gives -> :class:`CaseResult`
  (detect, locate and label skipped: the annotation loop's "segment again from corrected centroids");
- :func:`write_case_outputs`: the ``predict`` command's VerSe-named files, Slicer markups, vertebral body
  measurements (:mod:`algorithm.measure`), QC picture and report.

No spine found is not an error: the label map is all zeros and the points list empty, and
the result's ``note`` says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from algorithm.detect import Detection, detect_spine
from algorithm.discs import heights_between_discs
from algorithm.fragments import edge_fragments, write_fragments
from algorithm.inputs import InputError
from algorithm.labelling import (
    COARSE_OFFSET_PROBABILITY,
    LABELLERS,
    Constraints,
    Labelling,
    coarse_decoder,
    label_candidates,
    learned_decoder,
)
from algorithm.labelling.constraints import FIX_REACH_MM, Fix, changes
from algorithm.labelling.skipped import skipped_levels
from algorithm.labelling_prior import LabellingPrior, load_default
from algorithm.locate import (
    COARSE_PIXEL_MM,
    PEAK_SEPARATION_MM,
    Candidates,
    is_coarse,
    locate_heatmaps,
    peak_candidates,
)
from algorithm.measure import BodyMeasure, csv_text, measure_case, screening
from algorithm.models import Models
from algorithm.outputs import Writer, bytes_writer, commit_outputs, image_writer, json_writer, text_writer
from algorithm.plausibility import IMPLAUSIBLE_CAP, Plausibility, assess, judge_geometry
from algorithm.recentre import behind_the_bodies, column_outlines, fill_chain, recentre, settle
from algorithm.report import StageTimer, versions
from algorithm.ribs import rib_evidence
from algorithm.sacrum import rests_on_sacrum, sacral
from algorithm.segment import BONE_FLOOR, SEGMENT_FLOOR, segment_vertebrae
from algorithm.sizes import BY_SIZE_CAP, fit_some_level
from algorithm.sizes import describe as describe_sizes
from algorithm.skull import anchor, find_skull_base, missed_the_neck, missing_c2, neck_detection
from spine.body import c2_centroid
from spine.gc import Point, points_document
from spine.image import Geometry, image_from_array, resample_onto
from spine.labels import EVALUATED, MAX_LABEL, anatomical_rank, label_of, name_of
from spine.layout import AlgorithmLayout
from spine.markups import markups_document, markups_name
from spine.verse import centroid_json_name, mask_name, write_centroid_json

__all__ = [
    "ANCHORLESS_CAP",
    "CaseResult",
    "Options",
    "UNCERTAIN_BELOW",
    "Vertebra",
    "case_outputs",
    "case_summary",
    "empty_label_map",
    "gc_outputs",
    "label_stage",
    "locate_stage",
    "measure_result",
    "predict_case",
    "read_gc_input",
    "run_gc_case",
    "segment_from_centroids",
    "write_case_outputs",
]

log = logging.getLogger(__name__)

UNCERTAIN_BELOW = 0.8
"""A vertebra whose point probability is under this is one to check: the QC picture marks it, the case's log line
names it (a labelling the decoder is sure of scores >= 0.95; a fragment's is capped at 0.5, a doubtful case's at
0.3)."""

FRAGMENT_CAP = 0.5
"""Probability ceiling of a fragment's point (:mod:`algorithm.fragments`): its label is its neighbour's plus one
level, and what it is rests on a few slices of bone."""

ANCHORLESS_CAP = 0.6
"""Probability ceiling of a point on a coarse CT (:func:`algorithm.locate.is_coarse`) with neither end of the spine in
view (:meth:`algorithm.locate.Candidates.anchors`: no skull base over C1, no sacrum under the last lumbar vertebra)
and no label the user fixed. There the network loses count (:data:`algorithm.locate.COARSE_PIXEL_MM`) and the ribs do
not tell C7 from T1 (:data:`algorithm.ribs.RIB_RESOLVED_MM`), so a level rests on the count alone, while the decoder
said 0.8-1.0 for most labels. On the OpenKBP ``dev`` and ``fit`` necks with the skull cut away (``bench/real.py``:
``top-cropped``, ``from-c6``) 72 of 123 such labels (0.59) were right, at a mean confidence of 0.70, 8 of the wrong
ones at 0.9 or more."""

AXIS_TO_BODY_MM = 15.0
"""How far in front of the detected spine's axis the vertebral bodies' centres lie (VerSe spines: the
canal's centre is 25-35 mm behind the body's, the arch adds as much behind it)."""


@dataclass(frozen=True)
class Options:
    """Inference knobs that are not a model's to decide (the models' own parameters come from metadata)."""

    overlap: float = 0.5
    peak_threshold: float | None = None
    """Candidate threshold of the locate heatmaps; None: the locate model's own (its metadata)."""
    peak_separation_mm: float = PEAK_SEPARATION_MM
    segment_floor: float = SEGMENT_FLOOR
    bone_floor: float | None = BONE_FLOOR
    """Segmentation floor where the CT shows bone (:mod:`algorithm.segment`); None: ``segment_floor`` everywhere."""
    region_evidence: bool = True
    """Give the decoder the locate network's region (C/T/L) posterior as well as its per-level scores."""
    recentre: bool = True
    """Move the candidates onto the bodies the outline model (``Models.outliner``) outlines and fill the chain's gaps
    (:mod:`algorithm.recentre`); seeds are the heatmap peaks above ``seed_threshold``. Off: the heatmap
    peaks above the locate model's threshold are the candidates."""
    seed_threshold: float = 0.05
    axis_seeds: bool = True
    """With ``recentre``: seed also along the detected spine's axis (every slice of the detect grid), so
    that vertebrae the locate network misses entirely are outlined too."""
    score_radius_mm: float = 8.0
    """A recentred candidate's label scores: the heatmaps' maxima within this distance of it."""
    sacrum_check: bool = True
    """Ask the models' sacrum check (``sacrum.onnx``, when the folder has one) which of the chain's lowest
    candidates is the sacrum's S1, and drop it and those below (:mod:`algorithm.sacrum`)."""
    skull_anchor: bool = True
    """Ask the models' skull-base model (``skull.onnx``, when the folder has one) where the foramen magnum is: the
    candidates above it leave the chain and the one where C1 lies is fixed as C1 (:mod:`algorithm.skull`)."""
    censor_cut: bool = True
    """Vertebrae the field of view cuts (their outlines reach its end): their steps' lengths are lower bounds for
    the decoder (:mod:`algorithm.labelling`, item 9)."""
    rib_evidence: bool = True
    """Region evidence from the ribs each candidate bears (:mod:`algorithm.ribs`), for the decoder."""
    edge_fragments: bool = True
    """Label the sliver of the vertebra beyond a chain end that the field of view cuts (:mod:`algorithm.fragments`)."""
    fill_skipped: bool = True
    """Place the levels the labelled chain passes over (a vertebra the decoder judges there without a candidate of
    its own) between their neighbours, spaced as the prior's steps are (:mod:`algorithm.labelling.skipped`), so they
    are segmented and reported instead of missed."""
    size_evidence: bool = True
    """Where the anatomy check finds the segmented vertebrae the wrong size for their levels, label again with their
    sizes as region evidence and keep that labelling where the check then passes (:mod:`algorithm.sizes`)."""
    disc_centres: bool = True
    """On coarse CTs, move the points of C3 to T1 along the chain to the middle of their bodies' discs where the CT
    shows them (:mod:`algorithm.discs`), before the masks are seeded there."""
    constraints: Constraints = field(default_factory=Constraints)  # what the user knows (algorithm.labelling, 8)
    labeller: str = "decoder"
    """``decoder``: region evidence read per candidate; ``learned``: read in the context of the whole chain by the
    chain-context model ``label.onnx`` (:mod:`algorithm.labelling.context`), inside the same decoder."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.segment_floor <= 1.0:
            raise ValueError(f"segment_floor must be in (0, 1], got {self.segment_floor}")
        if self.bone_floor is not None and not 0.0 < self.bone_floor <= self.segment_floor:
            raise ValueError(f"bone_floor must be in (0, segment_floor], got {self.bone_floor}")


@dataclass(frozen=True)
class Vertebra:
    """One labelled vertebra: VerSe id, centroid (LPS mm), decoder confidence, voxels in the label map."""

    label: int
    position_mm: tuple[float, float, float]
    confidence: float
    voxels: int = 0

    @property
    def name(self) -> str:
        return name_of(self.label)


@dataclass
class CaseResult:
    """What :func:`predict_case` found: the label map on the input grid and the labelled centroids."""

    geometry: Geometry
    labels: sitk.Image
    vertebrae: tuple[Vertebra, ...]
    note: str = ""
    candidates: int = 0
    timer: StageTimer = field(default_factory=StageTimer)
    details: dict[str, Any] = field(default_factory=dict)
    volumes_ml: dict[int, float] = field(default_factory=dict)
    """The segmented volume (VerSe id: ml) of each labelled vertebra the anatomy check measured (a fragment is not
    among them)."""
    check: Plausibility | None = None
    """The anatomy check's outcome on the segmented vertebrae; None before the segment stage."""
    candidate_labels: np.ndarray | None = None
    """``(N,)`` the VerSe id the labelling gave each locate candidate (0: none); None before the label stage. The
    points may have moved off their candidates since (:func:`_between_discs`), so this record, not their positions,
    says which candidate each vertebra came from."""

    @property
    def spine_found(self) -> bool:
        return bool(self.vertebrae)

    def points(self) -> list[Point]:
        """GC "Multiple points": one per vertebra, named C1..L6/T13, probability = decoder confidence."""
        return [Point(v.name, v.position_mm, float(np.clip(v.confidence, 0.0, 1.0))) for v in self.vertebrae]

    def centroids_mm(self) -> dict[int, np.ndarray]:
        return {v.label: np.asarray(v.position_mm) for v in self.vertebrae}

    def report(self, models: Models | None = None, *, source: str = "",
               outputs: list[Path] | None = None) -> dict[str, Any]:
        """The JSON run report (versions, providers, stages, findings, outputs)."""
        document: dict[str, Any] = {
            "input": source,
            "geometry": {"size": list(self.geometry.size), "spacing_mm": list(self.geometry.spacing_mm),
                         "orientation": "".join(self.geometry.orientation_codes())},
            "versions": versions(),
            "stages": self.timer.to_list(),
            "total_s": self.timer.total_s,
            "peak_rss_mib": self.timer.peak_rss_mib,
            "spine_found": self.spine_found,
            "note": self.note,
            "candidates": self.candidates,
            "vertebrae": [{"label": v.label, "name": v.name, "position_mm": [round(c, 2) for c in v.position_mm],
                           "confidence": round(v.confidence, 4), "voxels": v.voxels} for v in self.vertebrae],
            **self.details,
        }
        if models is not None:
            document["providers"] = models.providers
            document["models"] = models.describe()
        if outputs is not None:
            document["outputs"] = [str(p) for p in outputs]
        return document


def empty_label_map(geometry: Geometry) -> sitk.Image:
    """All-zero UInt8 label map on ``geometry``."""
    return geometry.apply_to(sitk.Image(list(geometry.size), sitk.sitkUInt8))


def _accepted(positions_mm: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> list[Vertebra]:
    """Candidates the decoder kept, one per label (the most confident if a label repeats), head to foot by level (a
    chain that runs level at the scan's edge, T3-T5 within 1 mm in height, keeps its order)."""
    best: dict[int, Vertebra] = {}
    for position, label, conf in zip(positions_mm, labels, confidence, strict=True):
        label = int(label)
        if label <= 0:
            continue
        if not 0 < label <= MAX_LABEL:
            raise ValueError(f"decoder returned label {label} outside 1..{MAX_LABEL}")
        vertebra = Vertebra(label, tuple(float(c) for c in position), float(conf))  # type: ignore[arg-type]
        if label not in best or vertebra.confidence > best[label].confidence:
            best[label] = vertebra
    return sorted(best.values(), key=lambda v: anatomical_rank(v.label))


@lru_cache(maxsize=1)
def _prior() -> LabellingPrior:
    """The decoder's shipped prior (:func:`algorithm.labelling_prior.load_default`), read once per process."""
    return load_default()


def _skipped(vertebrae: Sequence[Vertebra]) -> list[tuple[Vertebra, str]]:
    """The levels the chain of ``vertebrae`` passes over (:func:`algorithm.labelling.skipped.skipped_levels`), each
    as confident as the less confident of its two neighbours (its name is theirs to give), with the run report's
    note of where it went."""
    chain = sorted(vertebrae, key=lambda v: anatomical_rank(v.label))
    by_label = {v.label: v for v in chain}
    placed = skipped_levels([v.label for v in chain], np.array([v.position_mm for v in chain]).reshape(-1, 3),
                            _prior())
    return [(Vertebra(s.label, tuple(float(c) for c in s.position_mm),  # type: ignore[arg-type]
                      min(by_label[s.between[0]].confidence, by_label[s.between[1]].confidence)),
             f"passed over by the chain: placed between {name_of(s.between[0])} and {name_of(s.between[1])}")
            for s in placed]


def _constraint_report(candidates: Candidates, labels: np.ndarray, options: Options) -> dict[str, Any]:
    """The constraints used and what they changed against the labelling without them (run report)."""
    constraints, positions_mm = options.constraints, candidates.positions_mm
    free = label_stage(candidates, replace(options, constraints=Constraints())).labels
    changed = changes(positions_mm, free, labels)
    log.info("label: constraints %s changed %d label(s)%s", constraints.describe(), len(changed),
             "".join(f"; {c['from']} -> {c['to']}" for c in changed))
    return {"stated": constraints.describe(positions_mm), "changed": changed}


def _judged_geometry(geometry: Geometry) -> dict[str, Any]:
    """The report's ``plausibility`` before any vertebra: the CT grid's unusual properties, each logged (the
    impossible ones :func:`algorithm.inputs.check_ct` refused)."""
    unusual = judge_geometry(geometry).unusual
    for finding in unusual:
        log.warning("input: %s", finding)
    return Plausibility(None, None, (), unusual).to_dict()


def _refuse_far_fixes(candidates: Candidates, options: Options) -> None:
    """:class:`InputError` (one line) for a ``--fix`` farther than :data:`FIX_REACH_MM` from every candidate: the
    nearest candidate (by the label it gets without the fixes), its distance and the likely cause."""
    far = options.constraints.far_fixes(candidates.positions_mm)
    if not far:
        return
    free = label_stage(candidates, replace(options, constraints=Constraints())).labels
    first = far[0]
    label = int(free[first.candidate])
    name = f"{name_of(label)} " if label > 0 else "an unlabelled candidate "
    where = ",".join(f"{c:.1f}" for c in first.candidate_mm)
    raise InputError(f"--fix {first.fix}: {first.distance_mm:.1f} mm from the nearest vertebra candidate ({name}at "
                     f"{where} LPS mm; a fix must lie within {FIX_REACH_MM:g} mm of one): {first.likely_cause()}")


def predict_case(image: sitk.Image, models: Models, *, options: Options | None = None) -> CaseResult:
    """Detect, locate, label and segment the vertebrae of one CT (module docstring)."""
    options = options or Options()
    geometry = Geometry.of(image)
    timer = StageTimer()
    details: dict[str, Any] = {"plausibility": _judged_geometry(geometry)}

    def empty(note: str, candidates: int = 0) -> CaseResult:
        return _nothing_labelled(_unlabelled(geometry, candidates, timer, details), note)

    with timer.stage("detect"):
        detection = detect_spine(image, models.detect, overlap=options.overlap)
    details["detect"] = {"max_probability": round(detection.max_probability, 4),
                         "spine_volume_ml": round(detection.spine_volume_ml, 2),
                         "box": detection.box.to_dict() if detection.box else None}
    if detection.box is None:
        return empty(f"no spine found ({detection.reason})")

    with timer.stage("locate"):
        candidates = locate_stage(image, detection, models, options)
    if len(candidates) == 0:
        return empty(f"no vertebra candidate (no heatmap peak reaches {_peak_threshold(models, options)}"
                     + (" and no vertebra outlined)" if options.recentre else ")"))

    before_label = dict(details)
    result = _labelled(image, candidates, models, options,
                       _unlabelled(geometry, len(candidates), timer, details))
    if options.size_evidence:
        result = _relabelled_by_size(image, candidates, models, options, result, before_label)
    result.vertebrae = _c2_with_its_dens(result.vertebrae, candidates)
    return result


def _between_discs(image: sitk.Image, vertebrae: list[Vertebra], details: dict[str, Any]) -> list[Vertebra]:
    """``vertebrae`` with the points of C3 to T1 moved to the middle of their bodies' discs where the CT shows them
    (:func:`algorithm.discs.heights_between_discs`), and the run report's ``label.between_discs`` (in ``details``)
    saying how far. It runs before segmentation, so that each mask is seeded at its moved point: seeded at the
    drifted one, ``fit`` pt_34's C4-C6 masks lay on the C5-C7 bodies their moved points named."""
    if not vertebrae:
        return vertebrae
    before = np.array([v.position_mm for v in vertebrae], dtype=np.float64)
    after = heights_between_discs(image, [v.label for v in vertebrae], before)
    moved = {v.name: round(float(d), 1) for v, d in
             zip(vertebrae, np.linalg.norm(after - before, axis=1), strict=True) if d > 0.0}
    if not moved:
        return vertebrae
    log.info("label: points moved between their bodies' discs: %s", " ".join(f"{n} {d} mm" for n, d in moved.items()))
    details.setdefault("label", {})["between_discs"] = moved
    return [replace(v, position_mm=tuple(float(c) for c in point)) for v, point in zip(vertebrae, after, strict=True)]


def _c2_with_its_dens(vertebrae: tuple[Vertebra, ...], candidates: Candidates) -> tuple[Vertebra, ...]:
    """``vertebrae`` with C2's point, where it is an outline's body centre, moved to VerSe's C2 centroid, that of its
    body and dens (:func:`spine.body.c2_centroid`, along the chain from C3 towards C1). The others stay: a heatmap
    peak is the network's own centroid; the skull rule's C2 under C1 stands where annotated C2 centroids do (its
    offset was measured on them); a C2 placed between its neighbours (:mod:`algorithm.labelling.skipped`) has no
    outline; the centre of an outline the field of view cuts above is a part's, low already."""
    found = np.flatnonzero(_candidate_labels(candidates.positions_mm, vertebrae) == 2)
    if not len(found) or candidates.outlined is None or not candidates.outlined[found[0]]:
        return vertebrae
    if candidates.cut is not None and candidates.cut[found[0], 0]:
        return vertebrae
    at = {v.label: np.asarray(v.position_mm) for v in vertebrae}
    above, below = at.get(1, at[2]), at.get(3, at[2])
    if np.allclose(above, below):
        return vertebrae  # C2 alone: no axis to go along
    centroid = c2_centroid(at[2], above - below)
    return tuple(replace(v, position_mm=tuple(float(c) for c in centroid)) if v.label == 2 else v
                 for v in vertebrae)


def _unlabelled(geometry: Geometry, candidates: int, timer: StageTimer, details: dict[str, Any]) -> CaseResult:
    """A result with no vertebra yet (an empty label map on ``geometry``), for the label stage to fill."""
    return CaseResult(geometry, empty_label_map(geometry), (), "", candidates, timer, details)


def _nothing_labelled(result: CaseResult, note: str) -> CaseResult:
    """``result`` (still without vertebrae) with ``note`` saying why nothing was labelled, logged."""
    log.warning("no vertebra labelled: %s; writing an empty label map and no points", note)
    result.note = note
    return result


def _labelled(image: sitk.Image, candidates: Candidates, models: Models, options: Options,
              result: CaseResult, *, stage: str = "") -> CaseResult:
    """``result`` with the decoder's labelling of ``candidates``, the levels it passes over placed, the vertebrae
    segmented and the run report's ``label`` block; empty (and its note saying why) when nothing is labelled.
    ``stage`` follows the stages' names in the timer."""
    details = result.details
    with result.timer.stage(f"label{stage}"):
        _refuse_far_fixes(candidates, options)
        labelling = label_stage(candidates, options)
        vertebrae = _accepted(candidates.positions_mm, np.asarray(labelling.labels), np.asarray(labelling.confidence))
        skipped = _skipped(vertebrae) if options.fill_skipped else []
        found = len(vertebrae)
        vertebrae = sorted([*vertebrae, *(v for v, _ in skipped)], key=lambda v: anatomical_rank(v.label))
        unanchored = _unanchored(candidates, options)
        if unanchored:
            vertebrae = [replace(v, confidence=min(v.confidence, ANCHORLESS_CAP)) for v in vertebrae]
    log.info("label: %d of %d candidates labelled, %d level(s) placed: %s", found, len(candidates), len(skipped),
             " ".join(f"{v.name}({v.confidence:.2f})" for v in vertebrae))
    if unanchored and vertebrae:
        log.warning("label: %s; point probabilities capped at %.1f", unanchored, ANCHORLESS_CAP)
    searched = candidates.searched
    if searched is not None and searched.box is not None:  # the detect box above missed the neck: say where the
        details["locate"] = {"box": searched.box.to_dict(),  # vertebrae came from, and why
                             "why": f"{searched.reason}: looked for again under the skull base"}
    # Capped under UNCERTAIN_BELOW, an unanchored labelling is one to check, whatever the decoder's margin.
    details["label"] = {"uncertain": labelling.uncertain or bool(unanchored and vertebrae)}
    if unanchored:
        details["label"]["unanchored"] = f"{unanchored}: point probabilities capped at {ANCHORLESS_CAP:g}"
    if skipped:
        details["label"]["placed"] = {v.name: note for v, note in skipped}
        log.info("label: %s passed over by the chain (no candidate of their own): placed between their neighbours",
                 " ".join(v.name for v, _ in skipped))
    if candidates.ribs is not None:
        details["label"]["ribs"] = {name_of(int(label)): status for label, status in
                                    zip(labelling.labels, candidates.ribs.statuses(), strict=True) if label > 0}
    if options.constraints:
        details["label"]["constraints"] = _constraint_report(candidates, labelling.labels, options)
    if candidates.anchor is not None:
        details["label"]["anchor"] = f"skull base: {candidates.anchor}"
    if candidates.on_sacrum:
        details["label"]["foot"] = "rests on the sacrum: the lowest vertebra is the last lumbar"
    if _doubts_count(candidates, options):
        details["label"]["count"] = (f"coarse CT (pixels over {COARSE_PIXEL_MM:g} mm): the network's count doubted, "
                                     f"lost by one each way at {COARSE_OFFSET_PROBABILITY:g}")
    if labelling.uncertain:
        log.warning("label: labelling uncertain (best and runner-up labellings close); check the levels")
    result.candidate_labels = np.asarray(labelling.labels)
    if not vertebrae:
        return _nothing_labelled(result, f"the decoder rejected all {len(candidates)} candidates")
    if options.disc_centres and candidates.coarse:
        vertebrae = _between_discs(image, vertebrae, details)

    result = _segmented(image, vertebrae, models, options, result, stage=stage)
    return _without_empty_placed(result, {v.label for v, _ in skipped})


def _unanchored(candidates: Candidates, options: Options) -> str:
    """Why no level of ``candidates`` is anchored (:data:`ANCHORLESS_CAP`), or "" where one is: the CT is fine
    enough for the network's count, the CT shows an anchor, or the user fixed a label."""
    if not candidates.coarse or candidates.anchors() or options.constraints.fixes:
        return ""
    return (f"coarse CT (pixels over {COARSE_PIXEL_MM:g} mm) with neither the skull base nor the sacrum in view: "
            "the levels are counted, not anchored")


def _candidate_labels(positions_mm: np.ndarray, vertebrae: Sequence[Vertebra]) -> np.ndarray:
    """``(N,)`` the VerSe id each candidate carries in ``vertebrae`` (0: none). A labelled vertebra takes its
    candidate's position as it is (:func:`_accepted`), so equality finds it; placed levels and fragments have none."""
    labels = np.zeros(len(positions_mm), dtype=np.int64)
    for vertebra in vertebrae:
        at = np.flatnonzero(np.all(positions_mm == np.asarray(vertebra.position_mm), axis=1))
        labels[at] = vertebra.label
    return labels


def _candidate_sizes(labels: np.ndarray, volumes_ml: dict[int, float], cut: np.ndarray | None) -> np.ndarray:
    """``(N,)`` each candidate's segmented volume from its label (:attr:`CaseResult.candidate_labels`), NaN where it
    has none or its vertebra is cut by the field of view (the volume of a part)."""
    sizes = np.array([volumes_ml.get(int(label), np.nan) if label > 0 else np.nan for label in labels])
    if cut is not None:
        sizes[np.asarray(cut, dtype=bool).any(axis=1)] = np.nan
    return sizes


def _relabelled_by_size(image: sitk.Image, candidates: Candidates, models: Models, options: Options,
                        result: CaseResult, before_label: dict[str, Any]) -> CaseResult:
    """``result``, or where the anatomy check finds its vertebrae the wrong size for their levels (a neck named
    lumbar), the labelling decoded again without the network's calls and with each labelled candidate's segmented
    volume as region evidence (:mod:`algorithm.sizes`), kept only where the candidates' labels change and both
    checks then pass, its points at most :data:`algorithm.sizes.BY_SIZE_CAP` likely; the run report says which
    (``label.by_size``). Region evidence must be on and read by the decoder (the learned labeller was trained on
    the network's posteriors). ``before_label``: the report's blocks from before the label stage."""
    if (not options.region_evidence or options.labeller != "decoder" or result.check is None
            or not result.check.size_doubtful or result.candidate_labels is None):
        return result
    first = result.candidate_labels
    sizes = _candidate_sizes(first, result.volumes_ml, candidates.cut)
    if not fit_some_level(sizes):
        return result
    named = " ".join(v.name for v in result.vertebrae)
    log.warning("label: the segmented vertebrae (%s) are %.2fx the volume of real vertebrae of those levels: "
                "labelling again with their sizes (%s) as region evidence", named, result.check.size_ratio,
                describe_sizes(sizes))
    # The check discredits the network's calls (its region and its levels alike): the second decoding reads the
    # chain's spacing, the ribs and the sizes, no heatmap score, as a candidate placed by other means does.
    unscored = replace(candidates, scores=np.zeros_like(candidates.scores), peak=np.zeros_like(candidates.peak),
                       sizes_ml=sizes)
    again = _labelled(image, unscored, models, options,
                      _unlabelled(result.geometry, result.candidates, result.timer, dict(before_label)),
                      stage=" (by size)")
    renamed = " ".join(v.name for v in again.vertebrae)
    why = ("the same labels" if np.array_equal(again.candidate_labels, first)
           else "no vertebra labelled" if not again.spine_found
           else f"{renamed}, which the anatomy check doubts too" if again.check is None or again.check.reasons
           else "")
    if why:
        log.warning("label: labelled again by size: %s; the first labelling stands", why)
        result.details["label"]["by_size"] = (f"labelled again with the vertebrae's sizes as region evidence: {why}; "
                                             "the first labelling kept")
        return result
    again.details["label"]["by_size"] = (f"first labelled {named}, whose segmented vertebrae were "
                                         f"{result.check.size_ratio:.2f}x the volume of real vertebrae of those "
                                         "levels: labelled again with their sizes as region evidence")
    log.warning("label: relabelled by size: %s -> %s; point probabilities capped at %.1f", named, renamed,
                BY_SIZE_CAP)
    again.vertebrae = tuple(replace(v, confidence=min(v.confidence, BY_SIZE_CAP)) for v in again.vertebrae)
    return again


def _without_empty_placed(result: CaseResult, placed: set[int]) -> CaseResult:
    """``result`` without the placed levels (:func:`_skipped`) at which the segment stage found nothing: the chain
    said a vertebra lies there, the CT shows none (a body removed, or names the network pulled apart), so the point
    would name nothing. The run report says so."""
    empty = [v for v in result.vertebrae if v.label in placed and v.voxels == 0]
    if not empty:
        return result
    dropped = {v.label for v in empty}
    result.vertebrae = tuple(v for v in result.vertebrae if v.label not in dropped)
    result.volumes_ml = {label: ml for label, ml in result.volumes_ml.items() if label not in dropped}
    notes = result.details["label"]["placed"]
    for vertebra in empty:
        notes[vertebra.name] += "; nothing segmented there: left out"
    log.warning("label: %s placed where the chain passes over it, but nothing segmented there: left out",
                " ".join(v.name for v in empty))
    return result


def _segmented(image: sitk.Image, vertebrae: list[Vertebra], models: Models, options: Options,
               result: CaseResult, *, cap_doubtful: bool = True, stage: str = "") -> CaseResult:
    """``result`` with the label map segmented from the labelled ``vertebrae``, their voxel counts and the
    anatomy check (:mod:`algorithm.plausibility`), which caps the points of a doubtful case when asked. ``stage``
    follows the stages' names in the timer (`` (by size)``)."""
    with result.timer.stage(f"segment{stage}"):
        placed = [(v.label, np.asarray(v.position_mm)) for v in vertebrae]
        segmentation = segment_vertebrae(image, placed, models.segment, floor=options.segment_floor,
                                         bone_floor=options.bone_floor)
        fragments = []
        if options.edge_fragments and cap_doubtful:  # a person's centroids say which vertebrae there are
            fragments = edge_fragments(image, segmentation.labels, segmentation.grid, placed,
                                       segmentation.held_by_bone)
        write_fragments(segmentation, fragments)
    with result.timer.stage(f"resample{stage}"):
        merged = image_from_array(segmentation.labels, segmentation.grid)
        result.labels = resample_onto(merged, result.geometry, nearest=True, default=0)
        del merged
    voxel_ml = float(np.prod(segmentation.grid.spacing_mm)) / 1000.0
    result.volumes_ml = {v.label: segmentation.voxels.get(v.label, 0) * voxel_ml for v in vertebrae}
    check = assess([v.label for v in vertebrae], np.array([v.position_mm for v in vertebrae]), result.volumes_ml,
                   judge_geometry(result.geometry).unusual)
    result.details["plausibility"] = check.to_dict()
    result.check = check
    # A doubtful labelling of ours is capped; labels a person placed keep their confidence (the log still says).
    cap = IMPLAUSIBLE_CAP if check.reasons and cap_doubtful else 1.0
    for reason in check.reasons:
        log.warning("label: %s%s", reason, f"; point probabilities capped at {cap:.1f}" if cap < 1 else "")
    # A fragment's label is its cut neighbour's, one level on; its own evidence is thin (module fragments). It goes
    # beside that neighbour, head to foot along the chain (on a leaning spine it may lie lower than it).
    ends = {"top": vertebrae[0], "bottom": vertebrae[-1]}
    sliver = {f.end: Vertebra(f.label, f.position_mm, min(ends[f.end].confidence, FRAGMENT_CAP), 0)
              for f in fragments}
    if fragments:
        result.details["fragments"] = [f.to_dict() for f in fragments]
    ordered = [*([sliver["top"]] if "top" in sliver else []), *vertebrae,
               *([sliver["bottom"]] if "bottom" in sliver else [])]
    result.vertebrae = tuple(Vertebra(v.label, v.position_mm, min(v.confidence, cap),
                                      segmentation.voxels.get(v.label, 0)) for v in ordered)
    return result


def segment_from_centroids(image: sitk.Image, centroids_mm: dict[int, np.ndarray], models: Models, *,
                           options: Options | None = None, source: str = "") -> CaseResult:
    """Segment one CT from labelled centroids a user gives (detect, locate and label skipped).

    ``centroids_mm``: {VerSe id: LPS mm}, e.g. corrected in 3D Slicer and read by
    :func:`spine.centroids.read_labelled_centroids`. Sacrum and coccyx points are not segmented
    (the segment model knows C1..L6 and T13). The vertebrae keep confidence 1: a person placed them.
    """
    options = options or Options()
    geometry = Geometry.of(image)
    kept = {label: np.asarray(point, dtype=np.float64) for label, point in centroids_mm.items()
            if label in EVALUATED}
    skipped = sorted(set(centroids_mm) - set(kept))
    if skipped:
        log.warning("%s: %s skipped: sacrum and coccyx are VerSe labels the model does not segment (it segments "
                    "C1..L6 and T13)", source or "centroids", ", ".join(name_of(v) for v in skipped))
    details: dict[str, Any] = {"centroids": {"source": source, "given": [name_of(v) for v in sorted(centroids_mm)]},
                               "plausibility": _judged_geometry(geometry)}
    result = CaseResult(geometry, empty_label_map(geometry), (), "", 0, StageTimer(), details)
    if not kept:
        result.note = "no vertebra among the given centroids"
        return result
    vertebrae = sorted((Vertebra(label, tuple(float(c) for c in point), 1.0)  # type: ignore[arg-type]
                        for label, point in kept.items()), key=lambda v: anatomical_rank(v.label))
    return _segmented(image, vertebrae, models, options, result, cap_doubtful=False)


def _peak_threshold(models: Models, options: Options) -> float:
    return models.locate.meta.peak_threshold if options.peak_threshold is None else options.peak_threshold


def locate_stage(image: sitk.Image, detection: Detection, models: Models,
                 options: Options | None = None) -> Candidates:
    """The locate stage's candidates inside the spine ``box``: the heatmap peaks, or with ``options.recentre``
    the bodies the outline model outlines from them (:mod:`algorithm.recentre`), scored by the heatmaps; with
    ``options.rib_evidence`` (and ``options.region_evidence``, which is what reads them), the ribs each bears
    (:mod:`algorithm.ribs`); with ``options.sacrum_check`` and a
    sacrum model, without the sacrum's S1 and what lies below it, and knowing whether the chain rests on it
    (:mod:`algorithm.sacrum`); with
    ``options.skull_anchor`` and a skull-base model, without what lies above the skull base, with C1 fixed
    under it and C2 placed under C1 where no candidate holds it, and looked for again under it where every
    candidate lies above it (:mod:`algorithm.skull`)."""
    options = options or Options()
    if detection.box is None:
        return Candidates.empty()
    candidates = _candidates(image, detection, models, options)
    if options.sacrum_check and models.sacrum is not None and len(candidates) >= 2:
        found = sacral(image, candidates.positions_mm, models.outliner, models.sacrum)
        candidates = replace(_subset(candidates, ~found),
                             on_sacrum=rests_on_sacrum(candidates.positions_mm, found))
    if options.skull_anchor and models.skull is not None and len(candidates):
        base = find_skull_base(image, models.skull, detection.box)
        why = missed_the_neck(candidates.positions_mm, base, detection.box)
        if why is not None:
            neck = neck_detection(base, why)
            candidates = replace(_candidates(image, neck, models, options), searched=neck)
        keep, c1 = anchor(candidates.positions_mm, base)
        if c1 is not None:
            candidates = _subset(candidates, keep)
            c2 = missing_c2(c1, candidates.positions_mm)
            if c2 is not None:
                candidates = candidates.with_point(c2)
            candidates = candidates.with_fixed(1, c1)
    if options.rib_evidence and options.region_evidence and len(candidates):
        candidates = replace(candidates, ribs=rib_evidence(image, candidates.positions_mm))
    return replace(candidates, coarse=is_coarse(image))


def _subset(candidates: Candidates, keep: np.ndarray) -> Candidates:
    """The candidates where ``keep`` holds (their per-candidate fields with them)."""
    ribs = candidates.ribs
    return replace(candidates, positions_mm=candidates.positions_mm[keep], scores=candidates.scores[keep],
                   peak=candidates.peak[keep], cut=None if candidates.cut is None else candidates.cut[keep],
                   sizes_ml=None if candidates.sizes_ml is None else candidates.sizes_ml[keep],
                   outlined=None if candidates.outlined is None else candidates.outlined[keep],
                   ribs=None if ribs is None else replace(ribs, reach_mm=ribs.reach_mm[keep], seen=ribs.seen[keep]))


def _candidates(image: sitk.Image, detection: Detection, models: Models, options: Options) -> Candidates:
    maps = locate_heatmaps(image, detection.box, models.locate, overlap=options.overlap)  # type: ignore[arg-type]
    spacing = models.locate.meta.spacing_zyx_mm
    if not options.recentre:
        return peak_candidates(maps, spacing, threshold=_peak_threshold(models, options),
                               min_separation_mm=options.peak_separation_mm)
    seeds = peak_candidates(maps, spacing, threshold=options.seed_threshold,
                            min_separation_mm=options.peak_separation_mm)
    # The axis runs through the column's middle (canal and arch); bodies lie in front of it (LPS: -y).
    axis = detection.axis_mm + np.array([0.0, -AXIS_TO_BODY_MM, 0.0]) if options.axis_seeds else np.zeros((0, 3))
    points = [*seeds.positions_mm, *axis]
    outlines = column_outlines(recentre(image, models.outliner, points),
                               settling=lambda some, others: settle(image, models.outliner, some, others))
    outlines = behind_the_bodies(fill_chain(image, models.outliner, outlines))
    if not outlines:
        # Nothing vertebra-like outlined (an odd image, or an outline model that draws no such outline):
        # the network's own peaks are all there is; the anatomy check caps what they claim.
        log.warning("locate: the outline model (%s) outlined no vertebra at %d seeds; using the heatmap peaks",
                    models.outliner.path.name, len(points))
        return peak_candidates(maps, spacing, threshold=_peak_threshold(models, options),
                               min_separation_mm=options.peak_separation_mm)
    candidates = maps.candidates_at(np.array([outline.centre_mm for outline in outlines]).reshape(-1, 3),
                                    radius_mm=options.score_radius_mm)
    order = np.argsort(-candidates.peak, kind="stable")
    cut = np.array([outline.cut for outline in outlines], dtype=bool).reshape(-1, 2)
    log.info("locate: %d heatmap peaks above %.2f -> %d outlined vertebrae (%d cut by the field of view)",
             len(seeds), options.seed_threshold, len(candidates), int(cut.any(axis=1).sum()))
    return Candidates(candidates.positions_mm[order], candidates.scores[order], candidates.peak[order],
                      cut=cut[order], outlined=np.ones(len(order), dtype=bool))


def label_stage(candidates: Candidates, options: Options | None = None) -> Labelling:
    """The decoder on the locate stage's candidates: per-level scores, and region evidence when asked."""
    options = options or Options()
    if options.labeller not in LABELLERS:
        raise ValueError(f"labeller must be one of {', '.join(LABELLERS)}, got {options.labeller!r}")
    learned = options.labeller == "learned"
    regions = candidates.regions() if options.region_evidence or learned else None
    decoder = learned_decoder() if learned else coarse_decoder() if _doubts_count(candidates, options) else None
    return label_candidates(candidates.positions_mm, candidates.scores, regions=regions, decoder=decoder,
                            constraints=_with_anchor(options.constraints, candidates.anchor),
                            cut=candidates.cut if options.censor_cut else None,
                            on_sacrum=candidates.on_sacrum)


def _doubts_count(candidates: Candidates, options: Options) -> bool:
    """Whether :func:`label_stage` doubts the network's count (:func:`algorithm.labelling.coarse_decoder`): the
    decoder reads a coarse CT's candidates (the learned labeller keeps its own calibration)."""
    return candidates.coarse and options.labeller == "decoder"


def _with_anchor(constraints: Constraints, fix: Fix | None) -> Constraints:
    """The user's constraints with the image's own anchor (C1 under the skull base) as one more fix, unless the
    user fixed a label: what the user says wins over what the image says, and two fixes could disagree."""
    if fix is None:
        return constraints
    if constraints.fixes:
        log.info("label: the user's fixes stand; the skull base's %s is not added", fix)
        return constraints
    return replace(constraints, fixes=(fix,))


def read_gc_input(layout: AlgorithmLayout) -> tuple[Path, sitk.Image]:
    """Find and read the case's CT from the GC layout; :class:`algorithm.inputs.InputError` when unusable."""
    from algorithm.inputs import find_input_ct, load_ct

    path = find_input_ct(layout)
    return path, load_ct(path)


def gc_outputs(result: CaseResult, layout: AlgorithmLayout) -> list[tuple[Path, Writer]]:
    """The GC sockets: the UInt8 label map (``output.mha``) and the centroid points JSON."""
    return [
        (layout.segmentation_path, image_writer(result.labels)),
        (layout.centroids_path, json_writer(points_document(result.points()))),
    ]


def run_gc_case(path: Path, image: sitk.Image, layout: AlgorithmLayout, models: Models,
                *, options: Options | None = None) -> CaseResult:
    """Predict one GC case and write its outputs (all or nothing); log the run report (no file in /output)."""
    result = predict_case(image, models, options=options)
    written = commit_outputs(gc_outputs(result, layout))
    log.info("%s", case_summary(result, path))
    log.debug("run report: %s", json.dumps(result.report(models, source=str(path), outputs=written)))
    return result


def case_summary(result: CaseResult, source: Path | str) -> str:
    """One log line per case (exec, serve): what was found, the doubts, time and memory; ``-v`` logs the whole
    run report as JSON besides."""
    if result.vertebrae:
        found = f"{len(result.vertebrae)} vertebrae {result.vertebrae[0].name}..{result.vertebrae[-1].name}"
        doubtful = [v.name for v in result.vertebrae if v.confidence < UNCERTAIN_BELOW]
        if doubtful:
            found += f" (check {', '.join(doubtful)}: confidence under {UNCERTAIN_BELOW:g})"
    else:
        found = f"no vertebra ({result.note})"
    plausibility = result.details.get("plausibility", {})
    doubts = [*plausibility.get("reasons", []), *plausibility.get("geometry", [])]
    verdict = "plausible" if not doubts else f"doubtful: {'; '.join(doubts)}"
    peak = result.timer.peak_rss_mib
    return (f"case {source}: {found}; {verdict}; {result.timer.total_s:.1f} s"
            + (f", peak RSS {peak:.0f} MiB" if peak is not None else ""))


def case_outputs(result: CaseResult, folder: Path, case_id: str) -> list[tuple[Path, Writer]]:
    """The ``predict`` command's data files of one case: VerSe mask and centroid JSON, GC points JSON and the
    same points as a 3D Slicer markups file (``<case>_ctd.mrk.json``, to correct and feed back with
    ``--centroids``)."""
    return [
        (folder / mask_name(case_id), image_writer(result.labels)),
        (folder / centroid_json_name(case_id),
         _writer_of(lambda p: write_centroid_json(p, result.centroids_mm(), result.geometry))),
        (folder / f"{case_id}_points.json", json_writer(points_document(result.points()))),
        (folder / markups_name(case_id), json_writer(markups_document(result.points()))),
    ]


def _writer_of(function: Callable[[Path], object]) -> Writer:
    def write(path: Path) -> None:
        function(path)

    return write


def measure_result(result: CaseResult, image: sitk.Image) -> list[BodyMeasure]:
    """The vertebral body measurements of ``result`` on its CT (:mod:`algorithm.measure`); records them under
    ``measurements`` in the result's report and logs L1's screening line (or why it is withheld)."""
    try:
        measures = measure_case(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(result.labels),
                                result.geometry, centroids_mm=result.centroids_mm(),
                                confidences={v.label: v.confidence for v in result.vertebrae})
    except (ValueError, IndexError, ArithmeticError, np.linalg.LinAlgError) as error:
        # an add-on's failure must not cost the case its segmentation: no measurements, and the report says why
        log.warning("measure: no body measurements (%s: %s)", type(error).__name__, error)
        result.details["measurements"] = {"note": "research output, not a diagnosis (docs/measurements.md)",
                                          "error": f"{type(error).__name__}: {error}", "vertebrae": []}
        return []
    line = screening(measures, uncertain=bool(result.details.get("label", {}).get("uncertain", False)))
    log.info("measure: %s", line)
    graded = [f"{m.name} grade {m.grade} {m.kind}" for m in measures if m.grade]
    if graded:
        log.info("measure: height loss graded (Genant; research output, check the images): %s", ", ".join(graded))
    result.details["measurements"] = {
        "note": "research output, not a diagnosis (docs/measurements.md)",
        "screening": line,
        "vertebrae": [m.to_dict() for m in measures],
    }
    return measures


def _qc_notes(measures: list[BodyMeasure], placed: Sequence[int] = ()) -> dict[int, str]:
    """Beside each label in the QC picture: "placed" where no candidate found it (a level the chain passes over,
    :mod:`algorithm.labelling.skipped`: look there first), its Genant grade (and type) and trabecular HU where
    measured."""
    notes = {label: "placed" for label in placed}
    for m in measures:
        parts = [] if m.grade is None else [f"G{m.grade}{' ' + m.kind if m.kind else ''}"]
        if m.attenuation is not None:
            parts.append(f"{m.attenuation.median_hu:.0f} HU")
        if parts:
            notes[m.label] = " ".join([*([notes[m.label]] if m.label in notes else []), *parts])
    return notes


def write_case_outputs(result: CaseResult, image: sitk.Image, folder: Path, case_id: str, *, source: str,
                       models: Models | None, qc: bool = True) -> list[Path]:
    """Write the ``predict`` files of one case, measurements (``<case>_vertebrae.csv``), QC picture and report
    included (all or nothing)."""
    outputs = case_outputs(result, folder, case_id)
    with result.timer.stage("measure"):
        measures = measure_result(result, image)
    outputs.append((folder / f"{case_id}_vertebrae.csv", text_writer(csv_text(measures))))
    if qc:
        from algorithm.qc import render_qc

        with result.timer.stage("qc"):
            placed = [label_of(name) for name in result.details.get("label", {}).get("placed", {})]
            png = render_qc(image, result, title=case_id, notes=_qc_notes(measures, placed))
        outputs.append((folder / f"{case_id}_snp.png", bytes_writer(png)))
    report_path = folder / f"{case_id}_report.json"
    targets = [target for target, _ in outputs] + [report_path]
    outputs.append((report_path, json_writer(result.report(models, source=source, outputs=targets))))
    return commit_outputs(outputs)

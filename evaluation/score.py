"""Score one case: a ground-truth label map (+ centroids) against a prediction (+ points).

Definitions are DESIGN.md's ("Metrics"), with G the evaluated vertebra labels (C1..L6,
T13; not sacrum or coccyx) present in the ground-truth mask and P those in the prediction:

- ``dice``: mean over v in G of Dice_v (0 for v not in P).
- ``hd95``, ``hd`` (mm, ranked): mean over ALL of G of HD95_v, HD_v, where a v not in P
  scores the penalty D, the ground-truth image's diagonal in mm (:func:`penalty_mm`);
  ``hd95_matched``, ``hd_matched``: mean over G and P only (VerSe-comparable, not ranked);
  ``hd_missing`` = |G minus P|.
- ``id_rate``: hits / |G| (see :func:`evaluation.metrics.identify`, 20 mm, in mm).
- ``localisation_mm`` (ranked): mean over ALL of G of |p_v - g_v|, D for a v without a
  predicted centroid; ``localisation_matched_mm``: the mean over v with one (VerSe's).
- ``false_positive_labels``: |P minus G|.
- Counts that say what each mean is over: ``vertebrae`` = |G|, ``hits``, ``localised``
  (vertebrae of G with a predicted centroid); the matched vertebrae are
  ``vertebrae - hd_missing``. ``penalty_mm`` is the case's D.

Centroids, one definition for every case (DESIGN.md, "Metrics"): the ground truth's from
the VerSe centroid JSON (voxel -> world mm through the ground-truth geometry; labels it
lacks, or no JSON, fall back to the mask's centre of mass); the prediction's from its
points JSON (GC "Multiple points" in world mm, or a VerSe centroid JSON in the prediction
image's voxels) when present and valid, else from its mask's centres of mass, label by
label (a vertebra the points leave out takes its mask's centre of mass). The ranked
``id_rate``, ``localisation_mm`` and ``localisation_matched_mm`` always compare with the
ground truth's annotated centroids, so leaving out points or sending a broken points file
never scores better than sending good ones. ``localisation_mask_mm`` (unranked) compares
both sides' mask centres of mass: mean over ALL of G, D for a v not in P.

Undefined values (never NaN, inf or null in the output):

- ``*_matched`` over nothing (no vertebra of G predicted, or none with a predicted
  centroid) is D, and the case is left out of that ``*_matched`` aggregate; the counts
  above tell which. The ranked values are always defined when G is not empty.
- A case whose ground truth holds no evaluated vertebra (or could not be read) has
  ``vertebrae`` 0, ``dice`` and ``id_rate`` 0.0, the distance fields at
  :data:`UNDEFINED_DISTANCE_MM` (or its D when the ground truth was read), and takes part
  in no aggregate: that depends on the ground truth alone, so it is the same for every
  submission.
- Per vertebra, every field is present: ``hd95``/``hd`` are D when v is not in P
  (``predicted`` false) and ``distance_mm`` is D when v has no predicted centroid
  (``localised`` false).

Bad input never raises out of :func:`score_case`: a missing or unreadable prediction
scores as empty (Dice 0, id 0, every vertebra missing) and ``status`` says why; a
prediction on another grid is resampled (nearest neighbour) onto the ground-truth grid;
float or signed pixel types are accepted when every value is integral; values outside
0..28 are dropped; a missing, unreadable or invalid points JSON is scored as absent (mask
centres of mass). The ``status`` field is ``"ok"`` or ``"; "``-joined notes, led by
``missing prediction``, ``unreadable prediction``, ``error`` or ``empty ground truth`` when
one applies; file names appear without their folders. The notes an organiser must see (see
:data:`PROBLEMS`) are also returned apart by :func:`score_case_problems`, for one stderr line
per case.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from evaluation import metrics
from spine.gc import ContractError, points_to_centroids, read_points
from spine.image import Geometry, ImageError, read_image, resample_onto
from spine.labels import EVALUATED, MAX_LABEL, name_of
from spine.verse import CentroidFileError, read_centroids_mm

__all__ = [
    "UNDEFINED_DISTANCE_MM",
    "CaseFiles",
    "CaseScore",
    "LabelMapError",
    "VertebraScore",
    "empty_record",
    "grid_text",
    "label_array",
    "penalty_mm",
    "score_case",
    "score_case_problems",
    "score_label_maps",
]

log = logging.getLogger(__name__)

UNDEFINED_DISTANCE_MM = 1000.0
"""Distance fields of a case without ground truth to take D from (see module docstring)."""

MISSING_PREDICTION = "missing prediction"
UNREADABLE_PREDICTION = "unreadable prediction"
EMPTY_GROUND_TRUTH = "empty ground truth"
ERROR = "error"
NO_POINTS = "no points file"
UNREADABLE_POINTS = "unreadable points"
INVALID_POINTS = "invalid points"
RESAMPLED = "prediction resampled"
UNUSABLE_GT_CENTROIDS = "ground-truth centroids unusable"
PROBLEMS: tuple[str, ...] = (MISSING_PREDICTION, UNREADABLE_PREDICTION, ERROR, NO_POINTS, UNREADABLE_POINTS,
                             INVALID_POINTS, RESAMPLED, UNUSABLE_GT_CENTROIDS)
"""Prefixes of the notes that get a stderr line (the others, e.g. an accepted pixel type, stay in ``status``)."""
LEADING: tuple[str, ...] = (MISSING_PREDICTION, UNREADABLE_PREDICTION, ERROR, EMPTY_GROUND_TRUTH)
"""Notes that lead the status (the aggregates count cases by them)."""
MASS_CENTRES = "the mask's centres of mass used"


class LabelMapError(ValueError):
    """A label map that cannot be scored (e.g. non-integral values); the message says why."""


# --------------------------------------------------------------------------- results


def penalty_mm(geometry: Geometry) -> float:
    """The penalty D of a missed vertebra: the ground-truth image's diagonal in mm.

    D = sqrt(sum_i (n_i s_i)^2) with n_i voxels of s_i mm on axis i. Every distance between
    two voxel centres of the image is below D (centres span (n_i - 1) s_i), so a miss always
    scores worse than any match (DESIGN.md, "Metrics").
    """
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(geometry.size, geometry.spacing_mm, strict=True))))


@dataclass(frozen=True)
class VertebraScore:
    """Scores of one ground-truth vertebra v (distances in mm; None = not computed, the penalty applies)."""

    label: int
    dice: float
    hd95_mm: float | None  # None when v is not in P
    hd_mm: float | None
    identified: bool
    distance_mm: float | None  # None when v has no predicted centroid
    mask_distance_mm: float | None = None  # both sides' mask centres of mass; None when v is not in P

    def to_dict(self, penalty: float) -> dict[str, Any]:
        """Ranked values: ``hd95``, ``hd``, ``distance_mm`` are ``penalty`` when not computed;
        ``predicted`` (v in P) and ``localised`` (v has a predicted centroid) say which.
        ``distance_mask_mm`` (unranked): mask centre of mass to mask centre of mass, ``penalty``
        when v is not in P."""
        return {
            "dice": self.dice,
            "hd95": penalty if self.hd95_mm is None else self.hd95_mm,
            "hd": penalty if self.hd_mm is None else self.hd_mm,
            "identified": self.identified,
            "distance_mm": penalty if self.distance_mm is None else self.distance_mm,
            "distance_mask_mm": penalty if self.mask_distance_mm is None else self.mask_distance_mm,
            "predicted": self.hd95_mm is not None,
            "localised": self.distance_mm is not None,
        }


@dataclass(frozen=True)
class CaseScore:
    """All scores of one case; :meth:`to_dict` gives the ``metrics.json`` record.

    ``penalty_mm`` is D (:func:`penalty_mm`) of the case's ground truth; a case without
    ground-truth vertebrae has none (:data:`UNDEFINED_DISTANCE_MM` stands in).
    """

    vertebrae: tuple[VertebraScore, ...] = ()
    false_positive_labels: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    penalty_mm: float = UNDEFINED_DISTANCE_MM

    @property
    def dice(self) -> float:
        return _mean([v.dice for v in self.vertebrae], 0.0)

    def _ranked(self, values: list[float | None]) -> float:
        """Mean over all of G, the penalty D for a value not computed."""
        return _mean([self.penalty_mm if x is None else x for x in values], UNDEFINED_DISTANCE_MM)

    def _matched(self, values: list[float | None]) -> float:
        """Mean over the values computed only; D when there are none (the case then counts in no
        ``*_matched`` aggregate: the counts say so)."""
        return _mean([x for x in values if x is not None], self.penalty_mm)

    @property
    def hd95_mm(self) -> float:
        return self._ranked([v.hd95_mm for v in self.vertebrae])

    @property
    def hd_mm(self) -> float:
        return self._ranked([v.hd_mm for v in self.vertebrae])

    @property
    def localisation_mm(self) -> float:
        return self._ranked([v.distance_mm for v in self.vertebrae])

    @property
    def localisation_mask_mm(self) -> float:
        """Unranked: both sides' mask centres of mass, mean over all of G (D for v not in P)."""
        return self._ranked([v.mask_distance_mm for v in self.vertebrae])

    @property
    def hd95_matched_mm(self) -> float:
        return self._matched([v.hd95_mm for v in self.vertebrae])

    @property
    def hd_matched_mm(self) -> float:
        return self._matched([v.hd_mm for v in self.vertebrae])

    @property
    def localisation_matched_mm(self) -> float:
        return self._matched([v.distance_mm for v in self.vertebrae])

    @property
    def hits(self) -> int:
        return sum(v.identified for v in self.vertebrae)

    @property
    def id_rate(self) -> float:
        return self.hits / len(self.vertebrae) if self.vertebrae else 0.0

    @property
    def hd_missing(self) -> int:
        return sum(v.hd95_mm is None for v in self.vertebrae)

    @property
    def localised(self) -> int:
        return sum(v.distance_mm is not None for v in self.vertebrae)

    def _ordered_notes(self) -> list[str]:
        """The notes, each once, led by the one that says why nothing was scored."""
        return sorted(dict.fromkeys(self.notes), key=lambda n: not n.startswith(LEADING))

    @property
    def status(self) -> str:
        return "; ".join(self._ordered_notes()) or "ok"

    @property
    def problems(self) -> tuple[str, ...]:
        """The notes an organiser must see on stderr (:data:`PROBLEMS`), each once, the leading one first."""
        return tuple(n for n in self._ordered_notes() if n.startswith(PROBLEMS))

    def with_notes(self, *notes: str) -> CaseScore:
        return CaseScore(self.vertebrae, self.false_positive_labels, (*self.notes, *notes), self.penalty_mm)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dice": self.dice,
            "hd95": self.hd95_mm,
            "hd": self.hd_mm,
            "id_rate": self.id_rate,
            "localisation_mm": self.localisation_mm,
            "hd95_matched": self.hd95_matched_mm,
            "hd_matched": self.hd_matched_mm,
            "localisation_matched_mm": self.localisation_matched_mm,
            "localisation_mask_mm": self.localisation_mask_mm,
            "false_positive_labels": self.false_positive_labels,
            "hd_missing": self.hd_missing,
            "vertebrae": len(self.vertebrae),
            "hits": self.hits,
            "localised": self.localised,
            "penalty_mm": self.penalty_mm,
            "status": self.status,
            "per_vertebra": {name_of(v.label): v.to_dict(self.penalty_mm) for v in self.vertebrae},
        }


def _mean(values: list[float], undefined: float) -> float:
    return float(np.mean(values)) if values else undefined


def empty_record(status: str) -> dict[str, Any]:
    """Record of a case that could not be scored at all (no ground-truth vertebrae known)."""
    return CaseScore(notes=(status,)).to_dict()


# --------------------------------------------------------------------------- pure core


def score_label_maps(
    reference: np.ndarray,
    prediction: np.ndarray | None,
    geometry: Geometry,
    *,
    reference_centroids_mm: Mapping[int, np.ndarray] | None = None,
    predicted_centroids_mm: Mapping[int, np.ndarray] | None = None,
    threads: int = 1,
) -> CaseScore:
    """Scores of a prediction against the ground truth, both label maps on ``geometry``.

    Args:
      reference, prediction: integer label maps in SimpleITK's ``(k, j, i)`` order with values
        in 0..28 (see :func:`label_array`); ``prediction`` None scores an empty prediction.
      geometry: the ground-truth grid (spacing for distances, index -> world for centroids).
      reference_centroids_mm: annotated centroids (LPS mm); labels of G it lacks (all when None)
        use the mask's centre of mass.
      predicted_centroids_mm: predicted centroids (LPS mm) from a points file; labels it lacks
        (all when None: no usable points file) use the predicted mask's centre of mass.
      threads: threads of the distance transforms for far-off surfaces (more when the process
        has idle cores).

    Ranked centroid values compare the prediction's centroids with the ground truth's
    annotated ones, g_v; ``localisation_mask_mm`` compares the two masks' centres of mass,
    |com(P_v) - com(G_v)| (DESIGN.md, "Metrics"). Each label's work runs in its bounding box;
    the boxes of all labels come from one pass over each volume.
    """
    if reference.shape != geometry.shape_zyx:
        raise ValueError(f"reference shape {reference.shape} does not match geometry {geometry.shape_zyx}")
    if prediction is not None and prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference {reference.shape}")
    spacing_zyx = tuple(reversed(geometry.spacing_mm))

    ref_extents = {v: e for v, e in metrics.label_extents(reference, MAX_LABEL).items() if v in EVALUATED}
    pred_extents = ({v: e for v, e in metrics.label_extents(prediction, MAX_LABEL).items() if v in EVALUATED}
                    if prediction is not None else {})
    g_labels = sorted(ref_extents)

    g_masses = {v: _world(ref_extents[v].centre_index, geometry) for v in g_labels}
    p_masses = {v: _world(e.centre_index, geometry) for v, e in pred_extents.items()}
    annotated = reference_centroids_mm or {}
    g_centroids = {v: np.asarray(annotated[v], dtype=np.float64) if v in annotated else g_masses[v]
                   for v in g_labels}
    points = {v: np.asarray(p, dtype=np.float64) for v, p in (predicted_centroids_mm or {}).items()}
    p_centroids = {**p_masses, **points}  # a label the points leave out keeps its mask's centre of mass
    outcomes = metrics.identify(p_centroids, g_centroids)
    mask_outcomes = metrics.identify(p_masses, g_masses)

    scores = []
    for v in g_labels:
        dice, hd95, hd = 0.0, None, None
        if prediction is not None and v in pred_extents:
            box = metrics.union_box(ref_extents[v].box, pred_extents[v].box)
            g = reference[box] == v
            p = prediction[box] == v
            dice = metrics.dice(p, g)
            whole = tuple(slice(0, n) for n in g.shape)
            distances = metrics.surface_distances_mm(p, g, spacing_zyx, box=whole,  # type: ignore[arg-type]
                                                   threads=threads)
            hd95, hd = metrics.hd95_mm(distances), metrics.hausdorff_mm(distances)
        outcome = outcomes.get(v)
        mask_outcome = mask_outcomes.get(v)
        scores.append(VertebraScore(
            label=v, dice=dice, hd95_mm=hd95, hd_mm=hd,
            identified=bool(outcome and outcome.identified),
            distance_mm=outcome.distance_mm if outcome else None,
            mask_distance_mm=mask_outcome.distance_mm if mask_outcome else None,
        ))
    false_positives = len(set(pred_extents) - set(g_labels))
    notes: list[str] = [] if g_labels else [f"{EMPTY_GROUND_TRUTH}: no evaluated vertebra in the ground-truth mask"]
    if g_labels:
        notes.extend(_centroid_notes(g_labels, reference_centroids_mm, predicted_centroids_mm, set(pred_extents)))
    return CaseScore(tuple(scores), false_positives, tuple(notes), penalty_mm(geometry))


def _centroid_notes(g_labels: list[int], annotated: Mapping[int, np.ndarray] | None,
                    points: Mapping[int, np.ndarray] | None, predicted: set[int]) -> list[str]:
    """What the case's status says about centroids that are not annotated or not from points:
    ground-truth labels without an annotated centroid, and (when a points file was used)
    predicted vertebrae of G it leaves out. A missing or unusable points file is noted by the
    caller, who knows why."""
    notes = []
    if annotated is None:
        notes.append(f"ground truth has no centroid file: {MASS_CENTRES}")
    else:
        lacking = [name_of(v) for v in g_labels if v not in annotated]
        if lacking:
            notes.append(f"ground-truth centroids lack {', '.join(lacking)}: {MASS_CENTRES}")
    if points is not None:
        unpointed = [name_of(v) for v in g_labels if v in predicted and v not in points]
        if unpointed:
            notes.append(f"points lack {', '.join(unpointed)}: {MASS_CENTRES}")
    return notes


def _world(centre_index_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A centre in array (k, j, i) index -> LPS world mm."""
    return geometry.index_to_world(np.asarray(centre_index_zyx)[::-1])


# --------------------------------------------------------------------------- label maps from images


def label_array(image: sitk.Image, role: str, notes: list[str], *, note_pixel_type: bool = True) -> np.ndarray:
    """Label map of an image as uint8 in 0..28, ``(k, j, i)`` order; what was changed goes to ``notes``.

    When the image already is such a map the result is a read-only VIEW of its buffer (no
    copy of a whole volume): keep ``image`` referenced while the array is in use.

    Unsigned integer pixels are used as they are. Signed or floating-point pixels are accepted
    when every value is integral (noted unless ``note_pixel_type`` is False: VerSe's own
    ground truth is stored as float); otherwise :class:`LabelMapError`. Values outside
    0..28 are set to background (noted, with how many voxels).
    """
    array = sitk.GetArrayViewFromImage(image)
    kind = image.GetPixelIDTypeAsString()
    if np.issubdtype(array.dtype, np.floating):
        non_finite = _non_finite_count(array)
        if non_finite:
            raise LabelMapError(f"{role} has {non_finite} NaN or infinite voxels (pixel type {kind})")
        if not _integral(array):
            raise LabelMapError(f"{role} has non-integral values (pixel type {kind})")
        if note_pixel_type:
            notes.append(f"{role} pixel type {kind} accepted (integral values)")
    elif np.issubdtype(array.dtype, np.signedinteger):
        if note_pixel_type:
            notes.append(f"{role} pixel type {kind} accepted")
    elif not np.issubdtype(array.dtype, np.unsignedinteger):
        raise LabelMapError(f"{role} has pixel type {kind}, not a label map")
    if array.dtype == np.uint8 and (array.size == 0 or int(array.max()) <= MAX_LABEL):
        return array  # the common case: a read-only view, no copy (the caller keeps ``image`` alive)
    low, high = array.min(initial=0), array.max(initial=0)
    out = np.zeros(array.shape, dtype=np.uint8)
    if low < 0 or high > MAX_LABEL:
        inside = (array >= 0) & (array <= MAX_LABEL)
        dropped = array[~inside]
        values = np.unique(dropped)
        shown = ", ".join(f"{float(x):g}" for x in values[:5]) + (", ..." if values.size > 5 else "")
        notes.append(f"{role}: dropped {dropped.size} voxels with values outside 0..{MAX_LABEL} ({shown})")
        np.copyto(out, array, where=inside, casting="unsafe")
    else:
        np.copyto(out, array, casting="unsafe")
    return out


def _non_finite_count(array: np.ndarray, slab: int = 32) -> int:
    """NaN and infinite values of a float array, counted in slabs (small temporaries)."""
    return sum(int(np.count_nonzero(~np.isfinite(array[k:k + slab]))) for k in range(0, array.shape[0], slab))


def _integral(array: np.ndarray, slab: int = 32) -> bool:
    """Every value finite and integral; checked in slabs so temporaries stay small on big float volumes."""
    for start in range(0, array.shape[0], slab):
        part = array[start:start + slab]
        if not (np.isfinite(part).all() and np.array_equal(part, np.round(part))):
            return False
    return True


# --------------------------------------------------------------------------- one case from files


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's files are. ``prediction_mask`` None means no prediction was found;
    ``missing_reason`` then says why (kept in ``status``)."""

    case_id: str
    reference_mask: Path
    reference_centroids: Path | None = None
    prediction_mask: Path | None = None
    prediction_points: Path | None = None
    missing_reason: str = MISSING_PREDICTION
    notes: tuple[str, ...] = ()


def score_case(case: CaseFiles, threads: int = 1) -> dict[str, Any]:
    """The ``metrics.json`` record of one case. Never raises: failures are scored and explained.

    ``threads``: of the far-off surfaces' distance transforms; more than one only when no other
    case runs beside it.
    """
    return score_case_problems(case, threads)[0]


def score_case_problems(case: CaseFiles, threads: int = 1) -> tuple[dict[str, Any], tuple[str, ...]]:
    """:func:`score_case`'s record and the notes of it an organiser must see (:data:`PROBLEMS`),
    each once, for the caller's stderr line."""
    try:
        score = _score_case(case, use_prediction=True, threads=threads)
    except Exception as error:  # one bad case never stops the others
        reason = _short(f"{ERROR}: {type(error).__name__}: {_without_folders(str(error), case)}")
        log.debug("%s: %s", case.case_id, reason, exc_info=True)  # the caller warns, once, from the problems
        try:  # score it as an empty prediction when the ground truth itself is fine
            score = _score_case(case, use_prediction=False, first_note=reason)
        except Exception:
            log.debug("%s: ground truth unusable too", case.case_id, exc_info=True)
            return empty_record(reason), (reason,)
    result = score.to_dict()
    log.debug("%s: dice %.4f id_rate %.3f status %s", case.case_id, result["dice"], result["id_rate"],
              result["status"])
    return result, score.problems


def _short(note: str, limit: int = 300) -> str:
    return note if len(note) <= limit else note[: limit - 3] + "..."


def _without_folders(message: str, case: CaseFiles) -> str:
    """``message`` with the case's file paths shortened to their names: a status is published,
    the organiser's folders are not."""
    for path in (case.prediction_mask, case.prediction_points, case.reference_mask, case.reference_centroids):
        if path is not None:
            message = message.replace(str(path), path.name)
    return message


def _score_case(case: CaseFiles, *, use_prediction: bool, first_note: str | None = None,
                threads: int = 1) -> CaseScore:
    notes: list[str] = [first_note] if first_note else []
    notes.extend(case.notes)
    with ThreadPoolExecutor(1) as reader:  # SimpleITK releases the GIL: both volumes are read at once
        pending = reader.submit(read_image, case.prediction_mask) \
            if use_prediction and case.prediction_mask is not None else None
        reference_image = read_image(case.reference_mask)
        geometry = Geometry.of(reference_image)
        # a view into the image's buffer (no copy): the images stay referenced until scoring ends
        reference = label_array(reference_image, "ground truth", notes, note_pixel_type=False)
        reference_centroids = _reference_centroids(case, geometry, notes)
        if use_prediction:
            prediction_image, prediction, predicted_centroids = _read_prediction(case, pending, geometry, notes)
        else:
            prediction_image, prediction, predicted_centroids = None, None, None
    score = score_label_maps(reference, prediction, geometry, reference_centroids_mm=reference_centroids,
                             predicted_centroids_mm=predicted_centroids, threads=threads)
    del reference_image, prediction_image  # only now: the label maps may be views of them
    return score.with_notes(*(_short(_without_folders(n, case)) for n in notes))


def _reference_centroids(case: CaseFiles, geometry: Geometry, notes: list[str]) -> dict[int, np.ndarray] | None:
    if case.reference_centroids is None:
        return None
    try:
        return read_centroids_mm(case.reference_centroids, geometry)
    except CentroidFileError as error:
        notes.append(f"{UNUSABLE_GT_CENTROIDS}, {MASS_CENTRES} ({error})")
        return None


def grid_text(geometry: Geometry) -> str:
    """``122x101x112 voxels of 0.8x0.8x1 mm`` (i, j, k order, as ITK and the headers give it)."""
    size = "x".join(str(n) for n in geometry.size)
    spacing = "x".join(f"{s:.4g}" for s in geometry.spacing_mm)
    return f"{size} voxels of {spacing} mm"


def _resampled_note(own: Geometry, target: Geometry) -> str:
    """Which grid the prediction came on and which it was resampled onto; when size and spacing
    agree, the origin or direction is what differed."""
    source, onto = grid_text(own), grid_text(target)
    if source == onto:
        what = "origin" if not np.allclose(own.origin_mm, target.origin_mm, atol=1e-3, rtol=0) else "direction"
        source = f"{source} with another {what}"
    return f"{RESAMPLED} (nearest neighbour) from {source} onto the ground truth's {onto}"


def _read_prediction(
    case: CaseFiles, pending: Future[sitk.Image] | None, geometry: Geometry, notes: list[str]
) -> tuple[sitk.Image | None, np.ndarray | None, dict[int, np.ndarray] | None]:
    """The prediction image (keep it while its label map is used), its label map on the
    ground-truth grid (None = empty) and its centroids (None = from the mask).

    ``pending`` is the read started beside the ground truth's (None when there is no file).
    """
    if case.prediction_mask is None or pending is None:
        notes.insert(0, case.missing_reason)
        return None, None, None
    try:
        image = pending.result()
        own_geometry = Geometry.of(image)
        if not own_geometry.same_as(geometry):
            image = resample_onto(image, geometry, nearest=True, default=0)
            notes.append(_resampled_note(own_geometry, geometry))
        prediction = label_array(image, "prediction", notes)
    except (ImageError, LabelMapError) as error:
        notes.insert(0, f"{UNREADABLE_PREDICTION}: {error}")
        return None, None, None
    return image, prediction, _predicted_centroids(case.prediction_points, own_geometry, notes)


def _predicted_centroids(path: Path | None, geometry: Geometry, notes: list[str]) -> dict[int, np.ndarray] | None:
    """Centroids from a GC Multiple points or VerSe centroid JSON; None (score as absent: the
    mask's centres of mass) when there is no file or it is unreadable or invalid, noted."""
    if path is None:
        notes.append(f"{NO_POINTS}: {MASS_CENTRES}")
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        notes.append(f"{UNREADABLE_POINTS}, scored as absent, {MASS_CENTRES} ({path.name}: {error})")
        return None
    try:
        if isinstance(data, list):  # VerSe centroid JSON, voxels of the prediction image
            centroids = read_centroids_mm(path, geometry)
        else:
            centroids, unknown = points_to_centroids(read_points(path))
            if unknown:
                shown = ", ".join(repr(n) for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
                notes.append(f"ignored {len(unknown)} points with unknown names ({shown})")
    except (ContractError, CentroidFileError) as error:
        notes.append(f"{INVALID_POINTS}, scored as absent, {MASS_CENTRES} ({error})")
        return None
    finite = {v: p for v, p in centroids.items() if np.all(np.isfinite(p))}
    if len(finite) < len(centroids):
        dropped = sorted(name_of(v) for v in set(centroids) - set(finite))
        notes.append(f"ignored non-finite points ({', '.join(dropped)})")
    return {v: p for v, p in finite.items() if v in EVALUATED}


def is_finite_record(record: Mapping[str, Any]) -> bool:
    """True when every number in a case record is finite (a guard for the writer)."""
    def finite(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, Mapping):
            return all(finite(v) for v in value.values())
        if isinstance(value, list | tuple):
            return all(finite(v) for v in value)
        return value is not None
    return finite(record)

"""Keypoint JSON of the VID vertebra identification dataset, read into arrays.

VID (Buergin, Prevost, Stollenga, MICCAI 2023; CC BY-SA 4.0;
ImFusionGmbH/VID-vertebra-identification-dataset) gives, per CT, a list of keypoints::

    [{"coordinates": {"world_space": [x, y, z]},
      "type": {"keypoint_type": "body", "spine_level": "L2"}}, ...]               # GroundTruth/<id>.json
    [{"coordinates": {"world_space": [x, y, z]},
      "type": {"keypoint_type": "body", "spine_segment": "L",
               "spine_segment_probabilities": [pC, pT, pL]}}, ...]               # Predictions/<id>.json

World coordinates are DICOM patient mm (LPS, +z towards the head). ``keypoint_type`` is
``body``, ``left`` or ``right`` (the pedicles). The segment probabilities are a real
detector's independent per-segment outputs (they need not sum to 1). Pedicles carry no level:
:func:`pedicle_widths` attaches them to bodies by distance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spine.labels import label_of

__all__ = ["VidScan", "patient_of", "pedicle_widths", "read_keypoints", "read_mapping", "read_scan", "scan_ids",
           "scan_patients", "scan_sources", "source_of"]

SEGMENTS = ("C", "T", "L")
"""Column order of the segment probabilities."""
LEFT, RIGHT = 1, -1
"""Pedicle sides (``keypoint_type`` left, right) in the ``*_sides`` arrays."""
PEDICLE_REACH_MM = 40.0
"""Farthest a vertebra's pedicle is looked for from its body keypoint: the annotated VID pedicles lie a
median 19 (T4) to 34 mm (L5) from their body (99th percentile 42 mm at L5); a neighbour's lies about
39 mm away, so where a vertebra's own pedicle was not detected, the nearest within reach may be a
neighbour's."""


@dataclass(frozen=True)
class VidScan:
    """One VID scan: ground-truth bodies with their VerSe labels, detected bodies with their C/T/L
    probabilities, the detected pedicles and the annotated ones (all world mm, LPS), each pedicle's
    side ``LEFT`` or ``RIGHT``."""

    scan: str
    truth_mm: np.ndarray
    truth_labels: np.ndarray
    bodies_mm: np.ndarray
    region_probabilities: np.ndarray
    pedicles_mm: np.ndarray
    pedicle_sides: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    truth_pedicles_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    truth_pedicle_sides: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def read_keypoints(path: str | Path) -> list[dict]:
    """The keypoint list of one VID JSON file; ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of keypoints, got {type(data).__name__}")
    for k, point in enumerate(data):
        try:
            xyz = point["coordinates"]["world_space"]
            kind = point["type"]["keypoint_type"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: keypoint {k} lacks coordinates.world_space or type.keypoint_type") from None
        if len(xyz) != 3 or not all(np.isfinite(float(v)) for v in xyz) or kind not in ("body", "left", "right"):
            raise ValueError(f"{path}: keypoint {k} has a bad position or keypoint_type {kind!r}")
    return data


def _positions(points: list[dict]) -> np.ndarray:
    return np.array([p["coordinates"]["world_space"] for p in points], dtype=float).reshape(-1, 3)


def _sides(points: list[dict]) -> np.ndarray:
    return np.array([LEFT if p["type"]["keypoint_type"] == "left" else RIGHT for p in points], dtype=np.int64)


def read_scan(folder: str | Path, scan: str) -> VidScan:
    """``GroundTruth/<scan>.json`` and ``Predictions/<scan>.json`` under ``folder``."""
    folder = Path(folder)
    truth_file = folder / "GroundTruth" / f"{scan}.json"
    prediction_file = folder / "Predictions" / f"{scan}.json"
    annotated = read_keypoints(truth_file)
    truth = [p for p in annotated if p["type"]["keypoint_type"] == "body"]
    truth_pedicles = [p for p in annotated if p["type"]["keypoint_type"] != "body"]
    predicted = read_keypoints(prediction_file)
    bodies = [p for p in predicted if p["type"]["keypoint_type"] == "body"]
    pedicles = [p for p in predicted if p["type"]["keypoint_type"] != "body"]
    try:
        labels = np.array([label_of(p["type"]["spine_level"]) for p in truth], dtype=np.int64)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{truth_file}: a body keypoint without a valid spine_level ({error})") from None
    try:
        probabilities = np.array([p["type"]["spine_segment_probabilities"] for p in bodies], dtype=float)
    except KeyError:
        raise ValueError(f"{prediction_file}: a body keypoint without spine_segment_probabilities") from None
    probabilities = probabilities.reshape(-1, len(SEGMENTS))
    if not np.all(np.isfinite(probabilities)) or probabilities.min(initial=0) < 0 or probabilities.max(initial=0) > 1:
        raise ValueError(f"{prediction_file}: spine_segment_probabilities outside [0, 1]")
    return VidScan(scan, _positions(truth), labels, _positions(bodies), probabilities, _positions(pedicles),
                   _sides(pedicles), _positions(truth_pedicles), _sides(truth_pedicles))


def pedicle_widths(bodies_mm: np.ndarray, pedicles_mm: np.ndarray, sides: np.ndarray,
                   reach_mm: float = PEDICLE_REACH_MM) -> np.ndarray:
    """(N,) distance in mm between each body's left and right pedicle: the nearest pedicle of each side
    within ``reach_mm`` of the body keypoint; nan where a side has none.

    The interpedicular width narrows from C7 to T4, widens slowly to T10, steps up at T11 and T12,
    stays flat T12-L2 and widens again to L5 (medians of the annotated VID keypoints: 30, 21, 24, 27,
    29, 30, 30, 33, 36, 48 mm at C7, T4, T10, T11, T12, L1, L2, L3, L4, L5), so its profile along a
    chain says which levels it holds.
    """
    bodies = np.asarray(bodies_mm, dtype=float).reshape(-1, 3)
    pedicles = np.asarray(pedicles_mm, dtype=float).reshape(-1, 3)
    nearest = []
    for side in (LEFT, RIGHT):
        own = pedicles[np.asarray(sides) == side]
        found = np.full((len(bodies), 3), np.nan)
        if len(own) and len(bodies):
            distance = np.linalg.norm(bodies[:, None, :] - own[None, :, :], axis=2)
            k = np.argmin(distance, axis=1)
            near = distance[np.arange(len(bodies)), k] <= reach_mm
            found[near] = own[k[near]]
        nearest.append(found)
    return np.linalg.norm(nearest[0] - nearest[1], axis=1)


def scan_ids(folder: str | Path) -> list[str]:
    """Scan ids that have both a ground-truth and a prediction file, sorted."""
    folder = Path(folder)
    truth = {p.stem for p in (folder / "GroundTruth").glob("*.json")}
    return sorted(truth & {p.stem for p in (folder / "Predictions").glob("*.json")})


def patient_of(path: str) -> str:
    """Patient key of a VID source path: the TCIA patient folder (CT Colonography's prone and supine scans share
    it), the Pancreas-CT file, or the VerSe subject (VerSe 2019 and 2020 duplicates share it)."""
    parts = path.split("/")
    if parts[0] == "COLONOG":
        return parts[2]
    if parts[0].startswith("verse"):
        return next((p for p in parts if p.startswith("sub-")), path)
    return path


def source_of(path: str) -> str:
    """The dataset a VID source path comes from: ``COLONOG``, ``Pancreas-CT`` or ``VerSe`` (2019 and 2020)."""
    head = path.split("/", 1)[0]
    return "VerSe" if head.startswith("verse") else head


def read_mapping(folder: str | Path) -> dict[str, str]:
    """scan id -> source path from ``mapping-export-Training.txt`` (empty when absent)."""
    mapping = Path(folder) / "mapping-export-Training.txt"
    if not mapping.is_file():
        return {}
    out = {}
    for line in mapping.read_text(encoding="utf-8").splitlines():
        if "," in line:
            scan, path = line.split(",", 1)
            out[scan.strip()] = path.strip()
    return out


def scan_patients(folder: str | Path) -> dict[str, str]:
    """scan id -> patient key (:func:`patient_of`) from the folder's mapping."""
    return {scan: patient_of(path) for scan, path in read_mapping(folder).items()}


def scan_sources(folder: str | Path) -> dict[str, str]:
    """scan id -> source (:func:`source_of`) from the folder's mapping."""
    return {scan: source_of(path) for scan, path in read_mapping(folder).items()}

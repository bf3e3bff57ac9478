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
detector's independent per-segment outputs (they need not sum to 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine.labels import label_of

__all__ = ["VidScan", "read_keypoints", "read_scan", "scan_ids"]

SEGMENTS = ("C", "T", "L")
"""Column order of the segment probabilities."""


@dataclass(frozen=True)
class VidScan:
    """One VID scan: ground-truth bodies with their VerSe labels, detected bodies with their C/T/L
    probabilities, and the detected pedicles (all world mm, LPS)."""

    scan: str
    truth_mm: np.ndarray
    truth_labels: np.ndarray
    bodies_mm: np.ndarray
    region_probabilities: np.ndarray
    pedicles_mm: np.ndarray


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


def read_scan(folder: str | Path, scan: str) -> VidScan:
    """``GroundTruth/<scan>.json`` and ``Predictions/<scan>.json`` under ``folder``."""
    folder = Path(folder)
    truth_file = folder / "GroundTruth" / f"{scan}.json"
    prediction_file = folder / "Predictions" / f"{scan}.json"
    truth = [p for p in read_keypoints(truth_file) if p["type"]["keypoint_type"] == "body"]
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
    return VidScan(scan, _positions(truth), labels, _positions(bodies), probabilities, _positions(pedicles))


def scan_ids(folder: str | Path) -> list[str]:
    """Scan ids that have both a ground-truth and a prediction file, sorted."""
    folder = Path(folder)
    truth = {p.stem for p in (folder / "GroundTruth").glob("*.json")}
    return sorted(truth & {p.stem for p in (folder / "Predictions").glob("*.json")})

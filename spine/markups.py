"""3D Slicer markups JSON (``.mrk.json``): labelled vertebra centroids as a Fiducial point list.

The file (Slicer's markups schema v1.0.3, ``Modules/Loadable/Markups/Resources/Schema`` in the
Slicer repository)::

    {"@schema": ".../markups-schema-v1.0.3.json#",
     "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                  "controlPoints": [{"id": "1", "label": "L1", "description": "confidence 0.9731",
                                     "position": [x, y, z], "positionStatus": "defined", ...}, ...]}]}

Positions are written as Python's shortest exact float text, so a file read back gives the
same numbers bit for bit. Reading accepts what Slicer writes: several markups (every Fiducial
list is read; lines, curves and the like are skipped), ``coordinateSystem`` LPS or RAS (RAS is
turned into LPS: x and y negated), ``coordinateUnits`` mm or um, and control points whose
``positionStatus`` is not ``defined`` (placed, then unset) are skipped. The decoder's confidence
travels in each point's ``description`` (``confidence 0.9731``); a point without one (placed by
hand) reads as probability 1.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spine.gc import ContractError, Point, load_json
from spine.image import write_text_atomic

__all__ = ["MARKUPS_SCHEMA", "MARKUPS_SUFFIX", "is_markups_document", "markups_document", "markups_name",
           "parse_markups", "read_markups", "write_markups"]

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                  "Schema/markups-schema-v1.0.3.json#")
"""The schema id Slicer 5 writes (it need not resolve; it names the version)."""
MARKUPS_SUFFIX = ".mrk.json"
_CONFIDENCE = re.compile(r"confidence\s+([0-9.eE+-]+)")
_IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
_UNIT_MM = {"mm": 1.0, "um": 1e-3}


def markups_name(case_id: str) -> str:
    """The markups file of a case's centroids, written beside its VerSe centroid JSON."""
    return f"{case_id}_ctd{MARKUPS_SUFFIX}"


def _control_point(k: int, point: Point) -> dict[str, Any]:
    if len(point.point_mm) != 3 or not all(math.isfinite(c) for c in point.point_mm):
        raise ValueError(f"point {point.name!r} has non-finite coordinates {point.point_mm}")
    probability = float(point.probability)
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ValueError(f"point {point.name!r} has probability {point.probability} outside [0, 1]")
    return {"id": str(k + 1), "label": point.name, "description": f"confidence {probability:.4f}",
            "associatedNodeID": "", "position": [float(c) for c in point.point_mm], "orientation": list(_IDENTITY),
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}


def markups_document(points: Iterable[Point], *, name: str = "Vertebra centroids") -> dict[str, Any]:
    """One Fiducial list in LPS mm, a control point per vertebra (label = its name)."""
    return {"@schema": MARKUPS_SCHEMA, "markups": [{
        "type": "Fiducial", "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
        "controlPoints": [_control_point(k, p) for k, p in enumerate(points)],
        # Labels shown beside the points: the vertebra names are the point of the file.
        "display": {"visibility": True, "pointLabelsVisibility": True, "textScale": 3.0, "glyphType": "Sphere3D",
                    "glyphScale": 3.0},
    }]}


def write_markups(path: str | os.PathLike[str], points: Iterable[Point]) -> Path:
    """Write a markups JSON atomically."""
    return write_text_atomic(path, json.dumps(markups_document(points), indent=2, allow_nan=False) + "\n")


def is_markups_document(data: Any) -> bool:
    """Whether parsed JSON looks like a Slicer markups file (an object with a ``markups`` list)."""
    return isinstance(data, dict) and isinstance(data.get("markups"), list)


def _probability(description: Any) -> float:
    match = _CONFIDENCE.search(description) if isinstance(description, str) else None
    if match is None:
        return 1.0
    try:
        value = float(match.group(1))
    except ValueError:
        return 1.0
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 1.0


def _position_mm(raw: Any, flip: float, scale: float) -> tuple[float, float, float]:
    xyz = tuple(float(c) for c in raw)
    if len(xyz) != 3 or not all(math.isfinite(c) for c in xyz):
        raise ValueError
    return (flip * xyz[0] * scale, flip * xyz[1] * scale, xyz[2] * scale)


def parse_markups(data: Any, where: str) -> list[Point]:
    """The defined control points of every Fiducial list of a parsed markups JSON, in LPS mm.

    Raises :class:`spine.gc.ContractError` naming ``where`` for a document that is not one.
    """
    if not is_markups_document(data):
        raise ContractError(f"{where}: not a 3D Slicer markups file (no 'markups' list)")
    points: list[Point] = []
    fiducials = 0
    for m, markup in enumerate(data["markups"]):
        if not isinstance(markup, dict) or markup.get("type") != "Fiducial":
            continue
        fiducials += 1
        system = markup.get("coordinateSystem", "LPS")
        units = markup.get("coordinateUnits", "mm")
        units = units[0] if isinstance(units, list) and units else units
        if system not in ("LPS", "RAS") or units not in _UNIT_MM:
            raise ContractError(f"{where}: markup {m} has coordinateSystem {system!r} and coordinateUnits "
                                f"{units!r}; expected LPS or RAS, mm or um")
        flip = -1.0 if system == "RAS" else 1.0
        controls = markup.get("controlPoints", [])
        if not isinstance(controls, list):
            raise ContractError(f"{where}: markup {m} has controlPoints that are not a list")
        for k, raw in enumerate(controls):
            if not isinstance(raw, dict):
                raise ContractError(f"{where}: markup {m} control point {k} is not an object")
            if raw.get("positionStatus", "defined") != "defined":
                continue
            try:
                position = _position_mm(raw["position"], flip, _UNIT_MM[units])
            except (KeyError, TypeError, ValueError):
                raise ContractError(f"{where}: markup {m} control point {k} has no valid position: "
                                    f"{raw.get('position')!r}"[:300]) from None
            points.append(Point(str(raw.get("label", "")), position, _probability(raw.get("description"))))
    if not fiducials:
        raise ContractError(f"{where}: no Fiducial point list in the markups file")
    return points


def read_markups(path: str | os.PathLike[str]) -> list[Point]:
    """Read a Slicer markups JSON (module docstring); :class:`spine.gc.ContractError` when it is not one."""
    return parse_markups(load_json(path), str(path))

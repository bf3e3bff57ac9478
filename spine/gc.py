"""Grand Challenge contracts as small typed models: socket values, jobs, Multiple points.

``inputs.json`` (algorithm) is a list of socket values; ``predictions.json``
(evaluation) is a list of jobs, each with input and output socket values. Newer
platform versions name the socket under ``socket``, older ones under ``interface``:
read ``socket`` first and fall back to ``interface``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine.image import write_text_atomic
from spine.labels import label_of, name_of

__all__ = [
    "ContractError",
    "Job",
    "Point",
    "SocketValue",
    "load_json",
    "parse_inputs",
    "parse_jobs",
    "points_document",
    "points_by_label",
    "points_to_centroids",
    "read_inputs_json",
    "read_points",
    "read_predictions_json",
    "write_points",
]

POINTS_NAME = "Vertebra centroids"
POINTS_VERSION = {"major": 1, "minor": 0}


class ContractError(ValueError):
    """A Grand Challenge file that breaks its contract; the message names file and problem."""


@dataclass(frozen=True)
class SocketValue:
    """One socket value of ``inputs.json`` or of a job's inputs/outputs."""

    slug: str
    kind: str
    relative_path: str
    super_kind: str
    image_name: str | None = None  # original file name of an image value
    value: Any = None  # inline value (numbers, JSON) when the socket holds one
    file: str | None = None


def _socket_value(raw: Any, where: str) -> SocketValue:
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: socket value is not an object")
    socket = raw.get("socket") or raw.get("interface")
    if not isinstance(socket, dict) or not isinstance(socket.get("slug"), str):
        raise ContractError(f"{where}: socket value has neither 'socket' nor 'interface' with a 'slug'")
    image = raw.get("image")
    image_name = image.get("name") if isinstance(image, dict) else None
    return SocketValue(
        slug=socket["slug"],
        kind=str(socket.get("kind", "")),
        relative_path=str(socket.get("relative_path", "")),
        super_kind=str(socket.get("super_kind", "")),
        image_name=image_name if isinstance(image_name, str) else None,
        value=raw.get("value"),
        file=raw.get("file") if isinstance(raw.get("file"), str) else None,
    )


def parse_inputs(data: Any, where: str = "inputs.json") -> list[SocketValue]:
    """Socket values from a parsed ``inputs.json``."""
    if not isinstance(data, list):
        raise ContractError(f"{where}: expected a JSON list of socket values")
    return [_socket_value(raw, f"{where}[{i}]") for i, raw in enumerate(data)]


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parsed JSON of a file; :class:`ContractError` naming it when missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContractError(f"{path}: not valid JSON ({error})") from None


def read_inputs_json(path: str | os.PathLike[str]) -> list[SocketValue]:
    """Read ``/input/inputs.json``."""
    return parse_inputs(load_json(path), str(path))


@dataclass(frozen=True)
class Job:
    """One algorithm job of ``predictions.json``."""

    pk: str
    inputs: tuple[SocketValue, ...]
    outputs: tuple[SocketValue, ...]
    status: str = ""

    def input_image_name(self) -> str | None:
        """Original file name of the job's (first) image input: the case the job ran on."""
        for value in self.inputs:
            if value.image_name:
                return value.image_name
        return None

    def output(self, slug: str) -> SocketValue | None:
        """The output socket value with ``slug``, if the job has one."""
        return next((value for value in self.outputs if value.slug == slug), None)


def parse_jobs(data: Any, where: str = "predictions.json") -> list[Job]:
    """Jobs from a parsed ``predictions.json``."""
    if not isinstance(data, list):
        raise ContractError(f"{where}: expected a JSON list of jobs")
    jobs = []
    for i, raw in enumerate(data):
        here = f"{where}[{i}]"
        if not isinstance(raw, dict) or "pk" not in raw:
            raise ContractError(f"{here}: job is not an object with a 'pk'")
        inputs, outputs = raw.get("inputs", []), raw.get("outputs", [])
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise ContractError(f"{here}: 'inputs' and 'outputs' must be lists")
        jobs.append(Job(
            pk=str(raw["pk"]),
            inputs=tuple(_socket_value(v, f"{here}.inputs[{j}]") for j, v in enumerate(inputs)),
            outputs=tuple(_socket_value(v, f"{here}.outputs[{j}]") for j, v in enumerate(outputs)),
            status=str(raw.get("status", "")),
        ))
    return jobs


def read_predictions_json(path: str | os.PathLike[str]) -> list[Job]:
    """Read ``/input/predictions.json``."""
    return parse_jobs(load_json(path), str(path))


@dataclass(frozen=True)
class Point:
    """One point of a GC "Multiple points" value: name, LPS world mm, probability."""

    name: str
    point_mm: tuple[float, float, float]
    probability: float = 1.0


def points_document(points: Iterable[Point], *, name: str = POINTS_NAME) -> dict[str, Any]:
    """The GC "Multiple points" document, exactly the contract's keys."""
    body = []
    for p in points:
        if len(p.point_mm) != 3 or not all(math.isfinite(c) for c in p.point_mm):
            raise ValueError(f"point {p.name!r} has non-finite coordinates {p.point_mm}")
        probability = float(p.probability)
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            raise ValueError(f"point {p.name!r} has probability {p.probability} outside [0, 1]")
        body.append({"name": p.name, "point": [float(c) for c in p.point_mm],
                     "probability": round(probability, 4)})
    return {"name": name, "type": "Multiple points", "points": body, "version": dict(POINTS_VERSION)}


def write_points(path: str | os.PathLike[str], points: Iterable[Point]) -> Path:
    """Write a "Multiple points" JSON atomically."""
    return write_text_atomic(path, json.dumps(points_document(points), indent=2, allow_nan=False))


def read_points(path: str | os.PathLike[str]) -> list[Point]:
    """Read a "Multiple points" JSON. Raises :class:`ContractError` when malformed."""
    data = load_json(path)
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list):
        raise ContractError(f"{path}: not a Multiple points document (no 'points' list)")
    out = []
    for i, raw in enumerate(points):
        try:
            xyz = tuple(float(c) for c in raw["point"])
            if len(xyz) != 3 or not all(math.isfinite(c) for c in xyz):
                raise ValueError
            out.append(Point(name=str(raw.get("name", "")), point_mm=xyz,  # type: ignore[arg-type]
                             probability=float(raw.get("probability", 1.0))))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ContractError(f"{path}: point {i} is malformed: {raw!r}"[:300]) from None
    return out


def points_by_label(points: Sequence[Point]) -> tuple[dict[int, Point], list[str]]:
    """The point kept for each vertebra a name gives ({VerSe id: point}), and the names not understood.

    A name that repeats keeps the point with the higher probability (the first of equals).
    """
    kept: dict[int, Point] = {}
    unknown: list[str] = []
    for p in points:
        try:
            label = label_of(p.name)
            name_of(label)
        except ValueError:
            unknown.append(p.name)
            continue
        if label not in kept or p.probability > kept[label].probability:
            kept[label] = p
    return kept, unknown


def points_to_centroids(points: Sequence[Point]) -> tuple[dict[int, np.ndarray], list[str]]:
    """Map points named by vertebra to {VerSe id: LPS mm}; also return the names not understood.

    A name that repeats keeps the point with the higher probability (:func:`points_by_label`).
    """
    kept, unknown = points_by_label(points)
    return {label: np.asarray(p.point_mm, dtype=np.float64) for label, p in kept.items()}, unknown


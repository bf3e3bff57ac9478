"""Labelled vertebra centroids from any of the three files a user may hold, as {VerSe id: LPS mm}.

Formats, told apart by their content (not their names):

- ``verse``: a VerSe centroid JSON (a list; voxel indices with a ``direction`` entry), which needs
  the CT's geometry to become millimetres (:mod:`spine.verse`);
- ``points``: a Grand Challenge "Multiple points" JSON (:mod:`spine.gc`), what the algorithm writes;
- ``markups``: a 3D Slicer markups JSON (:mod:`spine.markups`), what a user corrects in Slicer.

Every point must be named by a vertebra (C1..C7, T1..T13, L1..L6, S1, Cx; :mod:`spine.labels`)
and lie inside the CT (its centre within the image's voxels, half a voxel of margin); a name
used twice is refused. Any problem raises :class:`CentroidFileError` with one message naming the
file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spine.gc import ContractError, Point, load_json, read_points
from spine.image import Geometry
from spine.labels import NAMES, label_of, name_of
from spine.markups import is_markups_document, read_markups
from spine.verse import CentroidFileError, read_centroids_mm

__all__ = ["CENTROID_FORMATS", "CentroidFileError", "centroid_format", "check_inside", "read_labelled_centroids"]

CENTROID_FORMATS = ("verse", "points", "markups")


def centroid_format(path: str | os.PathLike[str]) -> str:
    """Which of :data:`CENTROID_FORMATS` a file holds; :class:`CentroidFileError` when none."""
    path = Path(path)
    try:
        data = load_json(path)
    except ContractError as error:
        raise CentroidFileError(str(error)) from None
    if isinstance(data, list):
        return "verse"
    if is_markups_document(data):
        return "markups"
    if isinstance(data, dict) and isinstance(data.get("points"), list):
        return "points"
    raise CentroidFileError(f"{path}: not a centroid file (expected a VerSe centroid JSON, a Grand Challenge "
                            "Multiple points JSON or a 3D Slicer markups JSON)")


def _labelled(points: list[Point], path: Path) -> dict[int, np.ndarray]:
    """{VerSe id: LPS mm} of named points; unknown or repeated names refused."""
    unknown, centroids = [], {}
    for point in points:
        try:
            label = label_of(point.name)
        except ValueError:
            unknown.append(point.name)
            continue
        if label in centroids:
            raise CentroidFileError(f"{path}: vertebra {name_of(label)} is given twice")
        centroids[label] = np.asarray(point.point_mm, dtype=np.float64)
    if unknown:
        raise CentroidFileError(f"{path}: point names {', '.join(repr(n) for n in unknown)} are not vertebrae "
                                f"(use C1..C7, T1..T13, L1..L6, S1, Cx)")
    return centroids


def check_inside(centroids_mm: dict[int, np.ndarray], geometry: Geometry, path: str | os.PathLike[str]) -> None:
    """CentroidFileError naming ``path`` when a centroid lies outside the CT's voxels (half a voxel margin)."""
    size = np.asarray(geometry.size, dtype=float)
    for label, point in sorted(centroids_mm.items()):
        index = geometry.world_to_index(point)
        if not (np.all(index >= -0.5) and np.all(index <= size - 0.5)):
            raise CentroidFileError(
                f"{path}: {name_of(label)} at ({', '.join(f'{c:.1f}' for c in point)}) mm lies outside the CT "
                f"(voxel index ({', '.join(f'{c:.1f}' for c in index)}), image size {tuple(geometry.size)})")


def read_labelled_centroids(path: str | os.PathLike[str], geometry: Geometry) -> dict[int, np.ndarray]:
    """{VerSe id: LPS mm} from a file in any of :data:`CENTROID_FORMATS`, checked against the CT's ``geometry``."""
    path = Path(path)
    kind = centroid_format(path)
    try:
        if kind == "verse":
            centroids = read_centroids_mm(path, geometry)
        else:
            centroids = _labelled(read_markups(path) if kind == "markups" else read_points(path), path)
    except ContractError as error:
        raise CentroidFileError(str(error)) from None
    if not centroids:
        raise CentroidFileError(f"{path}: no labelled centroid in the file")
    if any(label not in NAMES for label in centroids):  # a VerSe JSON's ids are checked by its reader
        raise CentroidFileError(f"{path}: unknown vertebra ids {sorted(set(centroids) - set(NAMES))}")
    check_inside(centroids, geometry, path)
    return centroids

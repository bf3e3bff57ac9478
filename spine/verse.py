"""VerSe file formats: BIDS-like names and the centroid JSON, read and written.

Centroid JSON (VerSe 2020 release)::

    [{"direction": ["P", "I", "R"]}, {"label": 16, "X": 79.1, "Y": 40.9, "Z": 32.3}, ...]

X, Y, Z are voxel indices along the image's index axes 0, 1, 2 (nibabel's array axes,
ITK's index order); ``direction`` gives those axes' orientation codes. When the codes
differ from the image's own (the JSON was written for a reoriented copy), the indices
are permuted and flipped onto the image's axes; a flip maps ``c -> size - 1 - c`` (the
reference helpers' ``size - c`` is off by one voxel).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine.image import Geometry, strip_image_suffix, write_text_atomic
from spine.labels import NAMES

__all__ = [
    "CentroidFileError",
    "VerseName",
    "axis_map",
    "case_id_of",
    "centroid_json_name",
    "centroids_from_voxels",
    "mask_name",
    "parse_verse_name",
    "read_centroid_json",
    "read_centroids_mm",
    "voxels_from_centroids",
    "write_centroid_json",
]

_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


class CentroidFileError(ValueError):
    """A centroid JSON that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class VerseName:
    """A parsed VerSe file name: ``sub-verse004_dir-ax_seg-vert_msk.nii.gz``."""

    subject: str  # "sub-verse004"
    entities: tuple[tuple[str, str], ...]  # (("dir", "ax"),) and the like, order kept
    suffix: str  # "ct", "msk", "ctd", ...

    @property
    def case_id(self) -> str:
        """The subject plus every entity but ``seg``: one id per CT scan."""
        parts = [self.subject, *(f"{k}-{v}" for k, v in self.entities if k != "seg")]
        return "_".join(parts)

    @property
    def seg(self) -> str | None:
        return dict(self.entities).get("seg")


_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9.]+)$")


def parse_verse_name(filename: str) -> VerseName | None:
    """Parse a BIDS-like VerSe name; None when the name does not follow the scheme."""
    stem = strip_image_suffix(Path(filename).name)
    if stem.lower().endswith(".json"):
        stem = stem[: -len(".json")]
    parts = stem.split("_")
    if len(parts) < 2 or not parts[0].startswith("sub-"):
        return None
    entities = []
    for part in parts[1:-1]:
        match = _ENTITY.match(part)
        if not match:
            return None
        entities.append((match.group(1), match.group(2)))
    return VerseName(subject=parts[0], entities=tuple(entities), suffix=parts[-1])


def case_id_of(filename: str) -> str:
    """Case id of an image name: extensions, a trailing ``_ct`` and VerSe derivative parts removed.

    ``"sub-verse004_ct.nii.gz" -> "sub-verse004"``, ``"verse014.mha" -> "verse014"``,
    ``"sub-gl003_dir-ax_seg-vert_msk.nii.gz" -> "sub-gl003_dir-ax"``.
    """
    name = Path(filename).name
    stem = strip_image_suffix(name)
    if stem.lower().endswith(".json"):
        stem = stem[: -len(".json")]
    for tail in ("_seg-vert_msk", "_seg-subreg_ctd", "_seg-vb_ctd", "_ctd", "_msk", "_ct"):
        if stem.endswith(tail):
            return stem[: -len(tail)]
    return stem


def mask_name(case_id: str) -> str:
    """VerSe mask file name of a case."""
    return f"{case_id}_seg-vert_msk.nii.gz"


def centroid_json_name(case_id: str) -> str:
    """VerSe centroid JSON file name of a case."""
    return f"{case_id}_seg-subreg_ctd.json"


def read_centroid_json(path: str | os.PathLike[str]) -> tuple[tuple[str, str, str] | None, dict[int, np.ndarray]]:
    """Read a VerSe centroid JSON: (axis codes or None, {label: voxel index (3,)}).

    Entries whose coordinates are NaN are skipped. Raises :class:`CentroidFileError` for a
    file that is not such a JSON.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CentroidFileError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, list):
        raise CentroidFileError(f"{path}: expected a JSON list of centroid entries")
    codes: tuple[str, str, str] | None = None
    voxels: dict[int, np.ndarray] = {}
    for entry in data:
        if not isinstance(entry, dict):
            raise CentroidFileError(f"{path}: entry {entry!r} is not an object")
        if "direction" in entry:
            direction = entry["direction"]
            if (not isinstance(direction, list) or len(direction) != 3
                    or not all(isinstance(c, str) and c.upper() in _OPPOSITE for c in direction)):
                raise CentroidFileError(f"{path}: bad direction {direction!r}")
            codes = (direction[0].upper(), direction[1].upper(), direction[2].upper())
            continue
        try:
            label = int(entry["label"])
            xyz = np.array([float(entry["X"]), float(entry["Y"]), float(entry["Z"])])
        except (KeyError, TypeError, ValueError):
            raise CentroidFileError(f"{path}: malformed centroid entry {entry!r}") from None
        if not np.all(np.isfinite(xyz)):
            continue
        if label not in NAMES:
            raise CentroidFileError(f"{path}: unknown vertebra label {label}")
        voxels[label] = xyz
    return codes, voxels


def axis_map(codes: tuple[str, str, str], geometry: Geometry) -> list[tuple[int, bool]]:
    """For each JSON axis: (image axis it lies along, whether it runs opposite)."""
    own = geometry.orientation_codes()
    mapping = []
    for code in codes:
        for axis, image_code in enumerate(own):
            if code == image_code:
                mapping.append((axis, False))
                break
            if code == _OPPOSITE[image_code]:
                mapping.append((axis, True))
                break
        else:
            raise CentroidFileError(f"axis code {code} matches none of the image's axes {own}")
    if sorted(axis for axis, _ in mapping) != [0, 1, 2]:
        raise CentroidFileError(f"axis codes {codes} are not a permutation of the image's {own}")
    return mapping


def centroids_from_voxels(
    voxels: dict[int, np.ndarray],
    geometry: Geometry,
    codes: tuple[str, str, str] | None = None,
) -> dict[int, np.ndarray]:
    """VerSe voxel centroids -> LPS world mm through ``geometry``.

    ``codes`` are the JSON's axis codes; None means the image's own axes.
    """
    if not voxels:
        return {}
    mapping = axis_map(codes, geometry) if codes is not None else [(a, False) for a in range(3)]
    world = {}
    for label, xyz in voxels.items():
        index = np.zeros(3)
        for json_axis, (axis, flipped) in enumerate(mapping):
            value = float(xyz[json_axis])
            index[axis] = geometry.size[axis] - 1 - value if flipped else value
        world[label] = geometry.index_to_world(index)
    return world


def voxels_from_centroids(centroids_mm: dict[int, np.ndarray], geometry: Geometry) -> dict[int, np.ndarray]:
    """LPS world mm centroids -> continuous voxel indices on ``geometry``'s own axes."""
    return {label: geometry.world_to_index(point) for label, point in centroids_mm.items()}


def read_centroids_mm(path: str | os.PathLike[str], geometry: Geometry) -> dict[int, np.ndarray]:
    """Read a VerSe centroid JSON and convert it to LPS world mm on the image's ``geometry``."""
    codes, voxels = read_centroid_json(path)
    try:
        return centroids_from_voxels(voxels, geometry, codes)
    except CentroidFileError as error:
        raise CentroidFileError(f"{path}: {error}") from None


def write_centroid_json(
    path: str | os.PathLike[str],
    centroids_mm: dict[int, np.ndarray],
    geometry: Geometry,
    *,
    decimals: int = 2,
) -> Path:
    """Write centroids (LPS world mm) as a VerSe centroid JSON in ``geometry``'s voxel indices."""
    entries: list[dict[str, object]] = [{"direction": list(geometry.orientation_codes())}]
    for label in sorted(centroids_mm):
        index = geometry.world_to_index(centroids_mm[label])
        if not np.all(np.isfinite(index)):
            continue
        entries.append({"label": int(label), **{
            axis: round(float(v), decimals) for axis, v in zip("XYZ", index, strict=True)}})
    return write_text_atomic(path, json.dumps(entries, allow_nan=False))

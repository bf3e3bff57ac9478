"""Readers of annotated spine CT data sets into :class:`spine.case.Case`.

Layouts recognised (:func:`list_cases` finds the files, :func:`read_cases` reads them):

``verse``
    VerSe BIDS-like releases (2019 and 2020): ``rawdata/sub-X/sub-X[_..]_ct.nii.gz``,
    ``derivatives/sub-X/sub-X[_..]_seg-vert_msk.nii.gz`` and ``..._seg-subreg_ctd.json``
    (older ``_seg-vb_ctd.json``), matched by case id (subject plus entities other than
    ``seg``). Files anywhere below the root, so a flat folder works too. Subregion masks
    (``seg-subreg``) are ignored. Centroid JSONs hold voxel indices with a ``direction``.
    Corrected cases need no conversion: without a VerSe centroid JSON, a 3D Slicer markups file
    ``sub-X[_..]_ctd.mrk.json`` or a GC points JSON ``sub-X[_..]_points.json`` (what ``predict``
    writes) gives the centroids (:mod:`spine.centroids`; LPS mm, names C1..L6).
``ctspine1k``
    NIfTI pairs ``<name>.nii.gz`` (CT) and ``<name>_seg.nii.gz`` (mask), side by side or in
    separate trees (``volumes/<source>/`` and ``labels/<source>/``, or ``data/`` and
    ``label(s)/``). CTSpine1K annotates every visible vertebra with VerSe ids: 1-7 C1-C7,
    8-19 T1-T12, 20-24 L1-L5 and 25 for L6 in its lumbarisation cases; labels outside
    :data:`CTSPINE1K_LABELS` are dropped with a warning. There is no centroid file:
    centroids are the mask's centres of mass per label (whole-vertebra centres, about
    10-13 mm posterior of VerSe's annotated body centres).
``verse-miccai``
    The older MICCAI releases: ``verse014.nii.gz``, ``verse014_seg.nii.gz`` and
    ``verse014_ctd.json`` whose entries are millimetres on a 1 mm frame with fixed axes
    and no ``direction`` entry (2019: X towards I, Y towards P, Z towards L; pass
    ``miccai_axes=("A", "S", "L")`` for the 2020 MICCAI files). A JSON with a
    ``direction`` entry is read as a VerSe BIDS JSON (voxel indices) whatever the names.

Errors a user can cause (missing CT, mismatched grids, unreadable files) raise ValueError
naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spine.case import Case
from spine.centroids import centroid_format, read_labelled_centroids
from spine.image import IMAGE_SUFFIXES, Geometry, array_of, read_image, strip_image_suffix
from spine.labels import NAMES
from spine.markups import MARKUPS_SUFFIX
from spine.verse import CentroidFileError, axis_map, centroids_from_voxels, parse_verse_name, read_centroids_mm

__all__ = [
    "CTSPINE1K_LABELS",
    "LAYOUTS",
    "CaseFiles",
    "centres_of_mass_mm",
    "detect_layout",
    "list_cases",
    "read_case",
    "read_cases",
    "read_miccai_centroids_mm",
]

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("verse", "ctspine1k", "verse-miccai")

CTSPINE1K_LABELS: Mapping[int, int] = {label: label for label in range(1, 26)}
"""CTSpine1K mask value -> VerSe id (the same scheme; 25 is L6)."""

_MICCAI_2019_AXES: tuple[str, str, str] = ("I", "P", "L")
_MAX_GRID_DRIFT_MM = 1e-2  # mask/CT origin or spacing differences below this are rounding, not mismatch


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case; ``ct`` None when only ground truth was found (VerSe samples without CT)."""

    case_id: str
    layout: str
    ct: Path | None
    mask: Path | None = None
    centroids: Path | None = None


def _is_image(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES)


def _files_below(root: Path) -> list[Path]:
    if not root.exists():
        raise ValueError(f"{root}: no such folder")
    if root.is_file():
        raise ValueError(f"{root}: expected a folder of cases, got a file")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _json_has_direction(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    return isinstance(data, list) and any(isinstance(e, dict) and "direction" in e for e in data)


def _put(table: dict[str, Path], key: str, path: Path, what: str) -> None:
    if key in table and table[key] != path:
        raise ValueError(f"two {what} files for case {key!r}: {table[key]} and {path}")
    table[key] = path


def _centroid_priority(path: Path) -> int:
    """Prefer the subregion centroid JSON of VerSe 2020 over the older vertebral-body one, any VerSe JSON over
    a 3D Slicer markups file, and that over a GC points file (``predict`` writes all three)."""
    name = path.name
    if name.endswith(MARKUPS_SUFFIX):
        return 3
    if name.endswith("_points.json"):
        return 4
    return 0 if "seg-subreg" in name else (1 if "seg-vb" in name else 2)


def _is_centroid_file(path: Path, suffix: str) -> bool:
    """A VerSe centroid JSON (``_ctd.json``), a Slicer markups file (``_ctd.mrk.json``) or a GC points JSON
    (``_points.json``) by name."""
    return suffix in ("ctd", "points") or (suffix == "ctd.mrk" and path.name.endswith(MARKUPS_SUFFIX))


def list_cases(root: str | os.PathLike[str]) -> list[CaseFiles]:
    """All cases below ``root``, cheaply (names only, no image is opened), sorted by case id.

    Raises ValueError for a missing root, or when one case id has two CTs or two masks.
    """
    root = Path(root)
    files = _files_below(root)
    cts: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    centroids: dict[str, Path] = {}
    layout_of: dict[str, str] = {}
    plain_images: list[Path] = []
    plain_jsons: list[Path] = []
    for path in files:
        name = path.name
        parsed = parse_verse_name(name)
        if parsed is not None and (_is_image(path) or name.lower().endswith(".json")):
            key = parsed.case_id
            if name.lower().endswith(".json"):
                if _is_centroid_file(path, parsed.suffix):
                    if key not in centroids or _centroid_priority(path) < _centroid_priority(centroids[key]):
                        centroids[key] = path
                    layout_of.setdefault(key, "verse")
            elif parsed.suffix == "ct":
                _put(cts, key, path, "CT")
                layout_of[key] = "verse"
            elif parsed.suffix == "msk" and parsed.seg == "vert":
                _put(masks, key, path, "vertebra mask")
                layout_of[key] = "verse"
            continue
        if _is_image(path):
            plain_images.append(path)
        elif name.lower().endswith("_ctd.json") or name.lower().endswith("-ctd.json"):
            plain_jsons.append(path)
    for path in plain_images:
        stem = strip_image_suffix(path.name)
        if stem.endswith("_seg"):
            _put(masks, stem[: -len("_seg")], path, "mask")
        elif stem.endswith("_msk"):
            _put(masks, stem[: -len("_msk")], path, "mask")
        else:
            _put(cts, stem, path, "CT")
    for path in plain_jsons:
        stem = path.name[: -len(".json")]
        key = stem[: -len("_ctd")] if stem.endswith("_ctd") else stem[: -len("-ctd")]
        centroids.setdefault(key, path)
    cases = []
    for key in sorted(set(cts) | set(masks)):
        layout = layout_of.get(key)
        if layout is None:
            layout = "verse-miccai" if key in centroids else "ctspine1k"
        cases.append(CaseFiles(case_id=key, layout=layout, ct=cts.get(key), mask=masks.get(key),
                               centroids=centroids.get(key)))
    return cases


def detect_layout(root: str | os.PathLike[str]) -> str | None:
    """The layout most cases below ``root`` follow (one of :data:`LAYOUTS`), None when there are no cases."""
    cases = list_cases(root)
    if not cases:
        return None
    counts = {layout: sum(case.layout == layout for case in cases) for layout in LAYOUTS}
    return max(counts, key=lambda layout: counts[layout])


def centres_of_mass_mm(mask: sitk.Image, labels: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Centre of mass of each label of a mask, LPS world mm (labels 0 and unknown ids skipped)."""
    array = array_of(mask)
    geometry = Geometry.of(mask)
    wanted = set(int(v) for v in np.unique(array)) - {0} if labels is None else set(labels)
    centres = {}
    for label in sorted(wanted):
        if label not in NAMES:
            continue
        where = np.argwhere(array == label)
        if len(where) == 0:
            continue
        k, j, i = where.mean(axis=0)
        centres[label] = geometry.index_to_world([i, j, k])
    return centres


def read_miccai_centroids_mm(
    path: str | os.PathLike[str],
    geometry: Geometry,
    axes: tuple[str, str, str] = _MICCAI_2019_AXES,
) -> dict[int, np.ndarray]:
    """Centroids of an older MICCAI VerSe JSON (mm on a 1 mm frame, fixed axes) -> LPS world mm.

    Each JSON axis lies along one image axis; millimetres along it count from the first
    voxel on the side the axis starts from, so an opposite-running axis maps
    ``mm -> (size - 1) - mm / spacing``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of centroid entries")
    try:
        mapping = axis_map(axes, geometry)
    except CentroidFileError as error:
        raise ValueError(f"{path}: {error}") from None
    voxels = {}
    for entry in data:
        if not isinstance(entry, dict) or "label" not in entry:
            continue
        try:
            label = int(entry["label"])
            xyz = [float(entry["X"]), float(entry["Y"]), float(entry["Z"])]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: malformed centroid entry {entry!r}") from None
        if not np.all(np.isfinite(xyz)) or label not in NAMES:
            continue
        # mm along each JSON axis -> voxels along the image axis it lies on; the flips are spine.verse's
        steps = [value / geometry.spacing_mm[axis] for value, (axis, _) in zip(xyz, mapping, strict=True)]
        voxels[label] = np.array(steps)
    return centroids_from_voxels(voxels, geometry, axes)


def _check_grids(ct: sitk.Image, mask: sitk.Image, ct_path: Path, mask_path: Path) -> sitk.Image:
    """The mask on the CT's exact geometry; ValueError naming both files when the grids differ."""
    g_ct, g_mask = Geometry.of(ct), Geometry.of(mask)
    if g_ct.same_as(g_mask):
        return mask
    if g_ct.same_as(g_mask, tol_mm=_MAX_GRID_DRIFT_MM, tol_direction=1e-3):
        return g_ct.apply_to(mask)  # rounding in the header: take the CT's numbers
    raise ValueError(
        f"{mask_path}: grid does not match the CT {ct_path} (mask size {g_mask.size}, spacing "
        f"{tuple(round(s, 4) for s in g_mask.spacing_mm)}, origin {tuple(round(o, 3) for o in g_mask.origin_mm)}; "
        f"CT size {g_ct.size}, spacing {tuple(round(s, 4) for s in g_ct.spacing_mm)}, "
        f"origin {tuple(round(o, 3) for o in g_ct.origin_mm)})"
    )


def _relabel(mask: sitk.Image, mapping: Mapping[int, int], path: Path) -> sitk.Image:
    """Map mask values to VerSe ids (unmapped values -> 0, with a warning); returns UInt8."""
    array = array_of(mask)
    values = set(int(v) for v in np.unique(array)) - {0}
    unknown = sorted(values - set(mapping))
    if unknown:
        log.warning("%s: labels %s are not vertebrae of this layout; dropped", path, unknown)
    lookup = np.zeros(max(values | {0}) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        if source < len(lookup):
            lookup[source] = target
    out = sitk.GetImageFromArray(lookup[array.astype(np.int64)])
    out.CopyInformation(mask)
    return out


def _as_uint8_labels(mask: sitk.Image, path: Path) -> sitk.Image:
    array = array_of(mask)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path}: mask values {array.min()}..{array.max()} are not VerSe ids")
    values = set(int(v) for v in np.unique(array)) - {0}
    unknown = sorted(v for v in values if v not in NAMES)
    if unknown:
        raise ValueError(f"{path}: mask holds values {unknown} that are not VerSe ids")
    return sitk.Cast(mask, sitk.sitkUInt8)


def read_case(files: CaseFiles, *, miccai_axes: tuple[str, str, str] = _MICCAI_2019_AXES) -> Case:
    """Read one case. Raises ValueError naming the file when the CT is missing or files disagree.

    Without a mask the case is unlabelled (``mask`` None, no centroids); without a centroid
    JSON the centroids are the mask's centres of mass.
    """
    if files.ct is None:
        known = files.mask or files.centroids
        raise ValueError(f"{known}: no CT found for case {files.case_id!r} (ground truth only)")
    ct = read_image(files.ct)
    mask = None
    centroids: dict[int, np.ndarray] = {}
    if files.mask is not None:
        mask = _check_grids(ct, read_image(files.mask), files.ct, files.mask)
        if files.layout == "ctspine1k":
            mask = _relabel(mask, CTSPINE1K_LABELS, files.mask)
        else:
            mask = _as_uint8_labels(mask, files.mask)
    else:
        log.warning("%s: no vertebra mask found; case %s is unlabelled", files.ct, files.case_id)
    geometry = Geometry.of(ct)
    if files.centroids is not None:
        if centroid_format(files.centroids) != "verse":  # corrected in Slicer, or the algorithm's points
            centroids = read_labelled_centroids(files.centroids, geometry)
        elif _json_has_direction(files.centroids):
            centroids = read_centroids_mm(files.centroids, geometry)
        else:
            centroids = read_miccai_centroids_mm(files.centroids, geometry, miccai_axes)
    elif mask is not None:
        centroids = centres_of_mass_mm(mask)
    return Case(case_id=files.case_id, ct=ct, mask=mask, centroids_mm=centroids, source=files.ct)


def read_cases(
    root: str | os.PathLike[str],
    *,
    strict: bool = False,
    miccai_axes: tuple[str, str, str] = _MICCAI_2019_AXES,
) -> Iterator[Case]:
    """Read every case below ``root`` (layout detected per case), in case-id order.

    Ground truth without a CT (public VerSe samples) is skipped with a warning, or raises
    ValueError with ``strict``. Any other problem raises ValueError naming the file.
    """
    for files in list_cases(root):
        if files.ct is None and not strict:
            log.warning("%s: skipping case %s: no CT", files.mask or files.centroids, files.case_id)
            continue
        yield read_case(files, miccai_axes=miccai_axes)

"""Finding the one CT of a case and refusing unusable ones with a message that names the file.

GC layout (:class:`spine.layout.AlgorithmLayout`): ``/input/inputs.json`` lists socket values;
the CT socket (slug ``ct-image``) names a folder, ``images/ct``, holding one image with a random
name. Without ``inputs.json`` the single image under ``/input/images/*/`` is the CT.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from algorithm.native import native_stderr
from algorithm.plausibility import SPACING_IMPOSSIBLE_MM, judge_geometry
from spine.gc import ContractError, read_inputs_json
from spine.image import IMAGE_SUFFIXES, Geometry, ImageError, read_image
from spine.layout import CT_SOCKET, AlgorithmLayout

__all__ = [
    "MAX_SPACING_MM",
    "MIN_SPACING_MM",
    "InputError",
    "check_ct",
    "find_input_ct",
    "image_files",
    "load_ct",
]

log = logging.getLogger(__name__)

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = SPACING_IMPOSSIBLE_MM
"""Voxel spacings outside [0.05, 10] mm are not a CT (a header in metres, a thumbnail; no scanner reconstructs
voxels over 10 mm: :data:`algorithm.plausibility.SPACING_IMPOSSIBLE_MM`)."""

_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}


class InputError(ValueError):
    """The case's input is missing, ambiguous or unusable; the message reads ``<file>: <problem>``."""


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (known suffixes, hidden files skipped), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(IMAGE_SUFFIXES))


def _single_image(folder: Path, where: str) -> Path:
    files = image_files(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        detail = f" (found {', '.join(others[:5])})" if others else ""
        raise InputError(f"{folder}: no CT image{detail} ({where})")
    if len(files) > 1:
        raise InputError(f"{folder}: {len(files)} images where one CT is expected: "
                         f"{', '.join(p.name for p in files[:5])}")
    return files[0]


def find_input_ct(layout: AlgorithmLayout) -> Path:
    """The case's CT file: from ``inputs.json`` (socket ``ct-image``), else the single ``images/*/`` image."""
    if not layout.input_dir.is_dir():
        raise InputError(f"{layout.input_dir}: input folder does not exist")
    if layout.inputs_json.exists():
        try:
            values = read_inputs_json(layout.inputs_json)
        except ContractError as error:
            raise InputError(str(error)) from None
        cts = [value for value in values if value.slug == CT_SOCKET.slug]
        if not cts:
            slugs = ", ".join(sorted({value.slug for value in values})) or "none"
            raise InputError(f"{layout.inputs_json}: no '{CT_SOCKET.slug}' socket (sockets: {slugs})")
        if len(cts) > 1:
            raise InputError(f"{layout.inputs_json}: {len(cts)} '{CT_SOCKET.slug}' socket values where one is "
                             "expected")
        location = layout.input_socket_dir(cts[0].relative_path or CT_SOCKET.relative_path)
        if location.is_file():
            return location
        return _single_image(location, f"socket '{CT_SOCKET.slug}' of {layout.inputs_json.name}")
    folders = sorted(p for p in (layout.input_dir / "images").glob("*") if p.is_dir())
    files = [f for folder in folders for f in image_files(folder)]
    if not files:
        raise InputError(f"{layout.input_dir}: no inputs.json and no image under images/*/")
    if len(files) > 1:
        raise InputError(f"{layout.input_dir / 'images'}: {len(files)} images where one CT is expected: "
                         f"{', '.join(str(f.relative_to(layout.input_dir)) for f in files[:5])}")
    return files[0]


def _non_finite_voxels(image: sitk.Image, slab: int = 16) -> int:
    """Number of NaN or infinite voxels of a float image, counted slab by slab (no whole-volume mask)."""
    if image.GetPixelID() not in _FLOAT_TYPES:
        return 0
    view = sitk.GetArrayViewFromImage(image)
    return int(sum(np.count_nonzero(~np.isfinite(view[k:k + slab])) for k in range(0, view.shape[0], slab)))


def check_ct(image: sitk.Image, path: Path | str) -> None:
    """Refuse a CT the pipeline cannot use; :class:`InputError` names ``path`` and the problem."""
    size = image.GetSize()
    if len(size) != 3:
        raise InputError(f"{path}: expected a 3-D image, got {len(size)}-D")
    if 0 in size:
        raise InputError(f"{path}: empty image (size {'x'.join(map(str, size))})")
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputError(f"{path}: voxel spacing {'x'.join(f'{s:g}' for s in spacing)} mm is outside "
                         f"[{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm (what CT scanners reconstruct)")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(f"{path}: direction matrix is not a rotation ({tuple(direction.ravel())})")
    if not np.all(np.isfinite(image.GetOrigin())):
        raise InputError(f"{path}: origin {image.GetOrigin()} is not finite")
    impossible = judge_geometry(Geometry.of(image)).impossible
    if impossible:  # before reading a voxel: such a grid would run for minutes and label nonsense
        raise InputError(f"{path}: {impossible[0]}")
    bad = _non_finite_voxels(image)
    if bad:
        raise InputError(f"{path}: {bad} voxels are NaN or infinite")
    extremes = sitk.MinimumMaximumImageFilter()
    extremes.Execute(image)
    low, high = extremes.GetMinimum(), extremes.GetMaximum()
    if low == high:
        raise InputError(f"{path}: constant image (every voxel is {low:g})")


def load_ct(path: Path | str) -> sitk.Image:
    """Read and check the CT (any orientation and spacing; .mha, .nii.gz, .nrrd, ...)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        with native_stderr() as native:
            image = read_image(path)
    except ImageError as error:
        if native:
            raise InputError(f"{path}: cannot read image ({' '.join(native)[:200]})") from None
        raise InputError(str(error)) from None
    for line in native:
        log.debug("%s: %s", path, line)
    check_ct(image, path)
    log.info("input %s: %s voxels, spacing %s mm, orientation %s, %s", path,
             "x".join(map(str, image.GetSize())), "x".join(f"{s:.3g}" for s in image.GetSpacing()),
             "".join(Geometry.of(image).orientation_codes()), image.GetPixelIDTypeAsString())
    return image

"""Image I/O and geometry with SimpleITK, keeping the input geometry exactly.

Conventions used across the project:

- World points are ITK physical points in mm, LPS (+x left, +y posterior, +z superior).
- Index tuples ``(i, j, k)`` are ITK index order, the same as nibabel's array axes 0, 1, 2
  and the VerSe centroid JSON's X, Y, Z.
- NumPy arrays from :func:`array_of` are in ``(k, j, i)`` order, as SimpleITK returns them.
- Orientation codes are nibabel's (RAS letters): the anatomical direction each index axis
  points towards, e.g. ``("P", "I", "R")``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import SimpleITK as sitk

__all__ = [
    "IMAGE_SUFFIXES",
    "Geometry",
    "ImageError",
    "array_of",
    "atomic_path",
    "axis_aligned_geometry",
    "image_from_array",
    "read_image",
    "resample_onto",
    "strip_image_suffix",
    "write_image",
    "write_text_atomic",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".tif", ".tiff")


class ImageError(ValueError):
    """An image that cannot be read or is unusable; the message names the file and the problem."""


def strip_image_suffix(name: str) -> str:
    """``"case_ct.nii.gz" -> "case_ct"``: remove one known image suffix (case-insensitive)."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Geometry:
    """The physical grid of an image: what must survive every round trip unchanged.

    ``size`` and ``spacing_mm`` are in ITK index order (i, j, k); ``direction`` is the
    3x3 direction cosine matrix, row-major as SimpleITK gives it (column c is the world
    direction of index axis c).
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """Geometry of a 3-D SimpleITK image."""
        if image.GetDimension() != 3:
            raise ImageError(f"expected a 3-D image, got {image.GetDimension()}-D")
        return cls(
            size=tuple(int(s) for s in image.GetSize()),  # type: ignore[arg-type]
            spacing_mm=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin_mm=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def matrix(self) -> np.ndarray:
        """3x3 matrix M with world = origin + M @ (spacing * index)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def world_spacing_mm(self) -> np.ndarray:
        """``(3,)`` how far one voxel extends along each world axis (x, y, z), ``|M| @ spacing``: an axial CT's
        pixels and slice thickness, a sagittal one's slice thickness along x (exact for axis permutations)."""
        return np.abs(self.matrix) @ np.asarray(self.spacing_mm, dtype=np.float64)

    @property
    def pixel_mm(self) -> float:
        """How far one voxel reaches across the patient, left-right or front-back (the larger of
        :attr:`world_spacing_mm` along x and y): an axial CT's pixel, a sagittal slab's slice thickness or pixel."""
        footprint = self.world_spacing_mm
        return float(max(footprint[0], footprint[1]))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape of the NumPy array of this grid, ``(k, j, i)``."""
        return (self.size[2], self.size[1], self.size[0])

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp spacing, origin and direction onto ``image`` (its size must match)."""
        if tuple(image.GetSize()) != self.size:
            raise ImageError(f"size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction)
        return image

    def index_to_world(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """Continuous ITK indices (..., 3) -> LPS world points in mm (..., 3)."""
        idx = np.asarray(index, dtype=np.float64)
        affine = self.matrix * np.asarray(self.spacing_mm)[None, :]
        return idx @ affine.T + np.asarray(self.origin_mm)

    def world_to_index(self, points_mm: np.ndarray | Sequence[float]) -> np.ndarray:
        """LPS world points in mm (..., 3) -> continuous ITK indices (..., 3)."""
        pts = np.asarray(points_mm, dtype=np.float64)
        affine = self.matrix * np.asarray(self.spacing_mm)[None, :]
        return (pts - np.asarray(self.origin_mm)) @ np.linalg.inv(affine).T

    def contains_mm(self, point_mm: np.ndarray | Sequence[float]) -> bool:
        """True when the world point lies within the image's extent (voxel centres +- half a voxel)."""
        index = self.world_to_index(point_mm)
        return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(self.size, dtype=np.float64) - 0.5))

    def orientation_codes(self) -> tuple[str, str, str]:
        """nibabel-style axis codes: the RAS letter each index axis points towards."""
        ras = self.matrix * np.array([-1.0, -1.0, 1.0])[:, None]  # LPS -> RAS, per column
        letters = (("L", "R"), ("P", "A"), ("I", "S"))
        codes = []
        for axis in range(3):
            column = ras[:, axis]
            world_axis = int(np.argmax(np.abs(column)))
            codes.append(letters[world_axis][int(column[world_axis] > 0)])
        return codes[0], codes[1], codes[2]

    def same_as(self, other: Geometry, *, tol_mm: float = 1e-3, tol_direction: float = 1e-4) -> bool:
        """True when both grids coincide (same size, spacing, origin and direction within tolerance)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm, rtol=0)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol_direction, rtol=0)
        )


def axis_aligned_geometry(reference: Geometry, spacing_mm: Sequence[float]) -> Geometry:
    """An identity-direction (LPS-aligned) grid at ``spacing_mm`` covering ``reference``'s extent.

    The corners of the reference's voxel centres are mapped to world space; the new grid's
    origin is their minimum and its size covers their maximum. Used to bring any CT into
    the orientation the models were trained in; resampling back onto ``reference`` undoes it.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be three positive numbers, got {spacing_mm!r}")
    corners = np.array(
        [[a, b, c] for a in (0, reference.size[0] - 1) for b in (0, reference.size[1] - 1)
         for c in (0, reference.size[2] - 1)],
        dtype=np.float64,
    )
    world = reference.index_to_world(corners)
    low, high = world.min(axis=0), world.max(axis=0)
    size = np.floor((high - low) / spacing + 1e-6).astype(int) + 1
    return Geometry(
        size=(int(size[0]), int(size[1]), int(size[2])),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_mm=(float(low[0]), float(low[1]), float(low[2])),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def resample_onto(
    image: sitk.Image,
    geometry: Geometry,
    *,
    nearest: bool = False,
    default: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto ``geometry`` (linear, or nearest neighbour for label maps).

    ``default`` fills points outside the input: -1024 HU for CT, 0 for label maps.
    """
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(
        image,
        list(geometry.size),
        sitk.Transform(),
        interpolator,
        geometry.origin_mm,
        geometry.spacing_mm,
        geometry.direction,
        float(default),
        image.GetPixelID(),
    )


def array_of(image: sitk.Image) -> np.ndarray:
    """NumPy copy of an image's voxels, ``(k, j, i)`` order."""
    return sitk.GetArrayFromImage(image)


def image_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """SimpleITK image from a ``(k, j, i)`` array, with ``geometry`` stamped on exactly."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise ImageError(f"array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    return geometry.apply_to(sitk.GetImageFromArray(array))


def read_image(path: str | os.PathLike[str], *, scalar_3d: bool = True) -> sitk.Image:
    """Read an image; with ``scalar_3d`` insist on one-component 3-D data.

    Raises :class:`ImageError` whose message names the file and the problem (missing,
    unreadable or truncated, not 3-D, more than one component, not finite spacing).
    NaN and infinite voxels of a float NIfTI file are kept as they are on disk (ITK reads
    them as 0), so every format gives the same array.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()
        detail = next((line for line in reversed(reason) if line.strip()), "unreadable")
        raise ImageError(f"{path}: cannot read image ({detail.strip()[:200]})") from None
    _check_nifti_complete(path)
    image = _restore_nifti_non_finite(path, image)
    if scalar_3d:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ImageError(
                f"{path}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} "
                "components per voxel (RGB or vector image)"
            )
        if image.GetDimension() != 3:
            size = "x".join(str(s) for s in image.GetSize())
            raise ImageError(f"{path}: expected a 3-D image, got {image.GetDimension()}-D ({size})")
        spacing = np.asarray(image.GetSpacing())
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ImageError(f"{path}: invalid voxel spacing {tuple(spacing)}")
    return image


@dataclass(frozen=True)
class _NiftiHeader:
    """What of a NIfTI-1/2 header the completeness and non-finite checks need."""

    order: str  # struct byte order, "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    bitpix: int
    offset: int  # vox_offset: where the voxels start

    @property
    def voxels(self) -> int:
        count = 1
        for d in self.dims:
            count *= max(int(d), 0)
        return count

    @property
    def data_end(self) -> int:
        """Bytes the file must hold: header, extensions and voxels."""
        return max(self.offset, 0) + self.voxels * max(self.bitpix, 0) // 8


def _nifti_header(header: bytes) -> _NiftiHeader | None:
    """The NIfTI-1/2 header at the start of ``header`` (540 bytes suffice); None if not NIfTI."""
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            offset = int(struct.unpack(order + "q", header[168:176])[0])
            break
    else:
        return None
    shown = tuple(int(d) for d in dims[1: 1 + max(0, min(int(dims[0]), 7))])
    return _NiftiHeader(order, shown, int(datatype), int(bitpix), offset)


def _nifti_data_end(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (header, extensions, voxels), from its header; None if not NIfTI."""
    parsed = _nifti_header(header)
    return None if parsed is None else parsed.data_end


_NIFTI_FLOATS: dict[int, str] = {16: "f4", 64: "f8"}
"""NIfTI datatype codes of real floating-point voxels -> NumPy type (without byte order)."""


def _open_nifti(path: Path) -> IO[bytes] | None:
    """Binary stream of a .nii or .nii.gz file (None for other names)."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return gzip.open(path, "rb")
    if name.endswith(".nii"):
        return path.open("rb")
    return None


def _nifti_non_finite(path: Path, chunk_bytes: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (x fastest, as NumPy's C order of a (k, j, i) array) and values of the
    NaN or infinite voxels of a floating-point NIfTI file, read from its raw bytes.

    ITK's NIfTI reader (nifti_read_buffer in ITK <= 5.4, SimpleITK 2.5) silently sets every
    non-finite float voxel to 0 (fixed upstream in ITK PR #6683), so a NaN CT would read as
    a clean one; the raw data is the only witness. Integer files are skipped at once (they
    cannot hold NaN); float files are streamed in chunks, never held whole.
    """
    stream = _open_nifti(path)
    none = (np.zeros(0, dtype=np.int64), np.zeros(0))
    if stream is None:
        return none
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    with stream as raw:
        header = _nifti_header(raw.read(540))
        if header is None or header.datatype not in _NIFTI_FLOATS:
            return none
        dtype = np.dtype(header.order + _NIFTI_FLOATS[header.datatype])
        raw.seek(header.offset)
        chunk_bytes -= chunk_bytes % dtype.itemsize
        done = 0
        while done < header.voxels:
            data = raw.read(min(chunk_bytes, (header.voxels - done) * dtype.itemsize))
            if not data:
                break
            chunk = np.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize)
            bad = np.flatnonzero(~np.isfinite(chunk))
            if bad.size:
                indices.append(bad + done)
                values.append(chunk[bad].astype(np.float64))
            done += chunk.size
    if not indices:
        return none
    return np.concatenate(indices), np.concatenate(values)


def _restore_nifti_non_finite(path: Path, image: sitk.Image) -> sitk.Image:
    """``image`` with the NaN/inf voxels ITK zeroed put back, so that every format reads alike."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    try:
        where, values = _nifti_non_finite(path)
    except (EOFError, OSError, zlib.error, struct.error) as error:
        raise ImageError(f"{path}: truncated or corrupt file ({error})") from None
    if where.size == 0:
        return image
    array = sitk.GetArrayFromImage(image)
    if array.size <= int(where.max()):
        return image  # not one scalar per voxel: ITK refuses such images later
    array.reshape(-1)[where] = values
    restored = sitk.GetImageFromArray(array)
    restored.CopyInformation(image)
    return restored


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file: ITK reads the missing voxels as garbage without a word.

    For ``.nii.gz`` the gzip trailer (uncompressed size mod 2**32) settles it in one seek for
    every well-formed file; only when it disagrees is the stream decompressed to measure it
    (a multi-member gzip file has the last member's size there).
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                header = stream.read(540)
            expected = _nifti_data_end(header)
            if expected is None:
                return
            with path.open("rb") as raw:
                raw.seek(-4, os.SEEK_END)
                trailer = struct.unpack("<I", raw.read(4))[0]
            if trailer == expected % 2**32:
                return
            size = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    size += len(chunk)
        else:
            with path.open("rb") as stream:
                expected = _nifti_data_end(stream.read(540))
            if expected is None:
                return
            size = path.stat().st_size
    except (EOFError, OSError, zlib.error, struct.error) as error:
        raise ImageError(f"{path}: truncated or corrupt file ({error})") from None
    if size < expected:
        raise ImageError(f"{path}: truncated file ({size} bytes of image data where the header needs {expected})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` on success.

    Nothing is left at ``path`` when the body raises: readers never see half-written files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{name[: len(name) - len(suffix)]}.", suffix=f".tmp{suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); a result must get the permissions any new file gets
    # (0666 less the umask), or another user -- GC's reader, a container's non-root user -- cannot read it.
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_image(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write an image atomically (temp name in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path

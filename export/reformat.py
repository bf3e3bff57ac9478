"""Real labelled CTs in the forms users meet: cropped ends, thick slices, coarse pixels, a sagittal slab.

A model tuned on a handful of real CTs learns their field of view and their voxels. The held-out
scans that break it are the same anatomy seen otherwise: a lumbar scan without its sacrum (no
bottom anchor), a chest CT that starts mid-neck (no top anchor; ``from-c6``), VerSe's sagittal lumbar slabs
(3 mm sagittal slices, about 100 mm wide: no ribs beyond their heads), 5 mm slices and the 2.5-3 mm of chest
CTs, 4 mm pixels; and a slab
that also stops above the sacrum (no ribs and no foot: the held-out sagittal scan that read Dice 0).
:func:`reformats` turns one labelled :class:`~spine.case.Case` into those variants, labels
following, so ``bench/real.py --reformats`` measures every labelled real CT in each of them.

Every variant is built the same way (:func:`reformat`), on the CT's own grid (its direction kept, so
an oblique scan stays oblique; "the z axis" below is the index axis nearest the world's head-foot
axis, "the x axis" the one nearest left-right):

1. **Acquisition blur.** Where the new spacing ``s'`` along an index axis exceeds the CT's own
   ``s``, the CT is smoothed along that axis by a Gaussian of FWHM ``sqrt(s'^2 - s^2)`` (the slice
   profile a scanner reconstructing ``s'`` slices would add; FWHM = 2.3548 sigma), so a thick slice
   averages what it covers instead of sampling one thin plane.
2. **Resampling** onto the grid of the same direction covering the index box ``[low, high]``
   (continuous indices of the CT) at the new spacing: the CT linearly (-1024 HU outside), the
   mask by nearest neighbour.
3. **Labels follow.** A vertebra keeps its label when at least ``keep_fraction`` of its physical
   volume is still in view (VerSe labels only vertebrae in view: 0.85 for a crop through the
   spine's length, 0.5 for a lateral slab that trims transverse processes and ribs only); the
   others are erased from the mask and their centroids dropped. Annotated centroids keep their
   world position (they are not recomputed from the resampled mask).
4. **Orientation** (optional): the result is reoriented to the given axis codes (``"PIR"`` for
   VerSe's sagittal scans) with :func:`SimpleITK.DICOMOrient`; no voxel changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spine.case import Case
from spine.image import Geometry, image_from_array, resample_onto
from spine.labels import EVALUATED

__all__ = ["CENTROID_ONLY", "FWHM_PER_SIGMA", "REFORMATS", "Reformat", "index_axis", "reformat", "reformats"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
CROP_KEEP = 0.85  # a vertebra cut by a crop through the spine's length keeps its label above this fraction
SLAB_KEEP = 0.5  # a lateral slab trims the processes and rib heads only
SLAB_HALF_WIDTH_MM = 52.0  # VerSe's sagittal lumbar slabs are about 100-105 mm wide
SLAB_SPACING_MM = 3.0  # their sagittal slices
THICK_SLICE_MM = 5.0
MID_SLICE_MM = 3.0  # chest CTs' 2.5-3 mm slices, and VerSe sagittal scans' 3 mm
COARSE_PIXEL_MM = 4.0
SACRUM_MARGIN_MM = 3.0  # the crop below the lowest vertebra's lowest voxel
MIN_BELOW_MM = 20.0  # a "sacrum cropped away" variant needs this much CT below the lowest vertebra
FROM_C6 = "from-c6"  # the variant that starts between C5 and C6, as a chest CT does


@dataclass(frozen=True)
class Reformat:
    """A variant's recipe on its CT's grid: the new spacing per index axis (i, j, k), the continuous index box
    kept (voxel centres ``low`` to ``high``), the label rule and the axes to reorient to."""

    name: str
    spacing_mm: tuple[float, float, float]
    low: tuple[float, float, float]
    high: tuple[float, float, float]
    keep_fraction: float
    orientation: str | None = None


def index_axis(geometry: Geometry, world_axis: int) -> tuple[int, float]:
    """The index axis nearest world axis ``world_axis`` (0 x, 1 y, 2 z of LPS) and the sign of its step along it."""
    row = geometry.matrix[world_axis]
    axis = int(np.argmax(np.abs(row)))
    return axis, float(np.sign(row[axis]))


def _blur(ct: sitk.Image, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The CT's voxels (k, j, i) smoothed along each index axis that gets thicker (step 1)."""
    geometry = Geometry.of(ct)
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    sigma_zyx = [0.0, 0.0, 0.0]
    for c in range(3):  # index axis c is array axis 2 - c
        old, new = geometry.spacing_mm[c], float(spacing_mm[c])
        if new > old:
            sigma_zyx[2 - c] = math.sqrt(new**2 - old**2) / FWHM_PER_SIGMA / old
    if any(sigma_zyx):
        array = ndimage.gaussian_filter(array, sigma_zyx, mode="nearest")
    return array


def _grid(source: Geometry, recipe: Reformat) -> Geometry:
    low, high = np.asarray(recipe.low), np.asarray(recipe.high)
    old, new = np.asarray(source.spacing_mm), np.asarray(recipe.spacing_mm)
    size = np.floor((high - low) * old / new + 1e-6).astype(int) + 1
    origin = source.index_to_world(low)
    return Geometry(size=(int(size[0]), int(size[1]), int(size[2])),
                    spacing_mm=(float(new[0]), float(new[1]), float(new[2])),
                    origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])), direction=source.direction)


def _volumes_mm3(mask: np.ndarray, geometry: Geometry) -> dict[int, float]:
    counts = np.bincount(mask.ravel(), minlength=256)
    voxel = float(np.prod(geometry.spacing_mm))
    return {int(v): float(counts[v]) * voxel for v in np.flatnonzero(counts) if v > 0}


def reformat(case: Case, recipe: Reformat) -> Case:
    """``case`` (CT, mask, centroids) reformatted by ``recipe`` (module docstring, steps 1-4).

    The returned case's id is ``<case id>~<recipe name>``; its mask holds only the labels kept, its
    centroids only theirs (a centroid without mask voxels in the original stays while inside the new grid).
    A case without a mask (centroids only) can be cropped (:data:`CENTROID_ONLY`): its centroids inside the new
    grid stay.
    """
    source = Geometry.of(case.ct)
    grid = _grid(source, recipe)
    blurred = image_from_array(_blur(case.ct, recipe.spacing_mm), source)
    ct = sitk.Cast(sitk.Round(resample_onto(blurred, grid, default=-1024.0)), sitk.sitkInt16)
    mask: sitk.Image | None = None
    dropped: set[int] = set()
    if case.mask is None:
        if recipe.name not in CENTROID_ONLY:
            raise ValueError(f"{case.case_id}: the {recipe.name} reformat needs the case's mask")
    else:
        resampled = resample_onto(sitk.Cast(case.mask, sitk.sitkUInt8), grid, nearest=True, default=0)
        before = _volumes_mm3(sitk.GetArrayFromImage(sitk.Cast(case.mask, sitk.sitkUInt8)), source)
        array = sitk.GetArrayFromImage(resampled)
        after = _volumes_mm3(array, grid)
        dropped = {v for v, volume in before.items() if after.get(v, 0.0) < recipe.keep_fraction * volume}
        if dropped:
            array[np.isin(array, sorted(dropped))] = 0
        mask = image_from_array(array, grid)
    centroids = {v: np.asarray(c, dtype=np.float64) for v, c in case.centroids_mm.items()
                 if v not in dropped and grid.contains_mm(c)}
    if recipe.orientation:
        ct = sitk.DICOMOrient(ct, recipe.orientation)
        mask = None if mask is None else sitk.DICOMOrient(mask, recipe.orientation)
    return Case(f"{case.case_id}~{recipe.name}", ct, mask, centroids, f"{case.source} ({recipe.name})")


# ----------------------------------------------------------------------------- the variants


def _label_index_range(case: Case, axis: int) -> tuple[float, float] | None:
    """The lowest and highest index along ``axis`` of any evaluated label's voxel, or None without one."""
    array = sitk.GetArrayViewFromImage(case.mask)
    present = np.isin(array, sorted(EVALUATED))
    if not present.any():
        return None
    along = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != 2 - axis)))
    return float(along.min()), float(along.max())


def _centroid_index(case: Case, axis: int) -> np.ndarray:
    """The evaluated centroids' continuous indices along ``axis``, head first."""
    geometry = case.geometry
    points = [c for v, c in case.centroids_mm.items() if v in EVALUATED]
    if not points:
        return np.zeros(0)
    points = sorted(points, key=lambda c: -float(c[2]))
    return geometry.world_to_index(np.asarray(points))[:, axis]


def _box(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    geometry = case.geometry
    return np.zeros(3), np.asarray(geometry.size, dtype=np.float64) - 1.0, np.asarray(geometry.spacing_mm)


def _sacrum_cropped(case: Case) -> Reformat | None:
    axis, sign = index_axis(case.geometry, 2)
    low, high, spacing = _box(case)
    extent = _label_index_range(case, axis)
    if extent is None:
        return None
    margin = SACRUM_MARGIN_MM / spacing[axis]
    if sign > 0:  # index grows towards the head: the bottom is the low end
        cut = extent[0] - margin
        if cut * spacing[axis] < MIN_BELOW_MM:
            return None
        low[axis] = cut
    else:
        cut = extent[1] + margin
        if (high[axis] - cut) * spacing[axis] < MIN_BELOW_MM:
            return None
        high[axis] = cut
    return Reformat("sacrum-cropped", tuple(spacing), tuple(low), tuple(high), CROP_KEEP)


def _starting_at(case: Case, name: str, cut: float) -> Reformat:
    """The variant ``name`` of ``case`` whose CT starts (at its head end) at the continuous index ``cut`` along the
    head-foot index axis."""
    axis, sign = index_axis(case.geometry, 2)
    low, high, spacing = _box(case)
    if sign > 0:  # index grows towards the head: the top is the high end
        high[axis] = cut
    else:
        low[axis] = cut
    return Reformat(name, tuple(spacing), tuple(low), tuple(high), CROP_KEEP)


def _top_cropped(case: Case) -> Reformat | None:
    heads_first = _centroid_index(case, index_axis(case.geometry, 2)[0])
    if len(heads_first) < 4:
        return None
    # between the second and third from the top: two levels leave
    return _starting_at(case, "top-cropped", 0.5 * (heads_first[1] + heads_first[2]))


def _from_c6(case: Case) -> Reformat | None:
    """A chest CT's top: the CT starts half way between the annotated C5 and C6 centres (chest CTs start at C5-C7),
    for a case annotated at C5, C6 and C7, so that C6 and what lies below it are judged without the skull, C1 and
    C2 (top anchors) in view."""
    if not {5, 6, 7} <= set(case.centroids_mm):
        return None
    axis, _ = index_axis(case.geometry, 2)
    c5, c6 = case.geometry.world_to_index(np.asarray([case.centroids_mm[5], case.centroids_mm[6]]))[:, axis]
    return _starting_at(case, FROM_C6, 0.5 * (c5 + c6))


def _sagittal_slab(case: Case) -> Reformat | None:
    """A slab about :data:`SLAB_HALF_WIDTH_MM` each side of the spine in :data:`SLAB_SPACING_MM` sagittal slices; of a
    CT that is a slab already (a VerSe sagittal scan), its own width with its slices thickened to that, where they are
    thinner (verse014's 2 mm: at 3 mm its chain ended in pieces of the sacrum and S1's body went unseeded, until
    :func:`algorithm.recentre.below_a_small_foot`)."""
    axis, _ = index_axis(case.geometry, 0)
    low, high, spacing = _box(case)
    centres = _centroid_index(case, axis)
    if not len(centres):
        return None  # nothing to centre it on
    if (high[axis] - low[axis]) * spacing[axis] >= 2 * SLAB_HALF_WIDTH_MM + 20.0:
        centre, half = float(np.median(centres)), SLAB_HALF_WIDTH_MM / spacing[axis]
        low[axis], high[axis] = max(low[axis], centre - half), min(high[axis], centre + half)
    elif spacing[axis] >= SLAB_SPACING_MM:
        return None  # a slab of slab-thick slices already
    spacing[axis] = max(SLAB_SPACING_MM, spacing[axis])
    return Reformat("sagittal-slab", tuple(spacing), tuple(low), tuple(high), SLAB_KEEP, orientation="PIR")


def _sliced(thickness_mm: float) -> str:
    return f"slices-{thickness_mm:g}mm"


def _coarsened(pixel_mm: float) -> str:
    return f"pixels-{pixel_mm:g}mm"


def _slices(thickness_mm: float) -> Callable[[Case], Reformat | None]:
    """The builder of a variant with ``thickness_mm`` slices along the head-foot axis, whichever index axis that
    is; it does not apply to a CT whose slices are that thick already."""
    def build(case: Case) -> Reformat | None:
        axis, _ = index_axis(case.geometry, 2)
        low, high, spacing = _box(case)
        if spacing[axis] >= thickness_mm:
            return None
        spacing[axis] = thickness_mm
        return Reformat(_sliced(thickness_mm), tuple(spacing), tuple(low), tuple(high), SLAB_KEEP)

    return build


def _coarse_pixels(case: Case) -> Reformat | None:
    low, high, spacing = _box(case)
    in_plane = [index_axis(case.geometry, 0)[0], index_axis(case.geometry, 1)[0]]
    if min(spacing[in_plane]) >= COARSE_PIXEL_MM:
        return None
    spacing[in_plane] = np.maximum(spacing[in_plane], COARSE_PIXEL_MM)
    return Reformat(_coarsened(COARSE_PIXEL_MM), tuple(spacing), tuple(low), tuple(high), SLAB_KEEP)


def _slab_sacrum_cropped(case: Case) -> Reformat | None:
    """Both at once: VerSe's sagittal lumbar slabs often stop above the sacrum, leaving the chain with neither its
    ribs beyond their heads nor its foot (the held-out sagittal scan of issue 19: T9-L4 in a 105 mm slab)."""
    return _combined("slab-sacrum-cropped", _sagittal_slab(case), _sacrum_cropped(case))


def _combined(name: str, first: Reformat | None, second: Reformat | None) -> Reformat | None:
    """Two recipes on one grid: the index box both keep, the coarser spacing per axis, the laxer keep fraction and
    ``first``'s orientation (else ``second``'s). None where either does not apply.

    The laxer fraction is right only where the stricter recipe's cut trims no vertebra, as the sacrum crop's
    margin below the lowest one ensures: a vertebra it cut to 60 % would keep its label under the slab's 0.5."""
    if first is None or second is None:
        return None
    return Reformat(name, tuple(np.maximum(first.spacing_mm, second.spacing_mm)),
                    tuple(np.maximum(first.low, second.low)), tuple(np.minimum(first.high, second.high)),
                    min(first.keep_fraction, second.keep_fraction), first.orientation or second.orientation)


REFORMATS: dict[str, Callable[[Case], Reformat | None]] = {
    "sacrum-cropped": _sacrum_cropped,
    "top-cropped": _top_cropped,
    FROM_C6: _from_c6,
    "sagittal-slab": _sagittal_slab,
    _sliced(THICK_SLICE_MM): _slices(THICK_SLICE_MM),
    _sliced(MID_SLICE_MM): _slices(MID_SLICE_MM),
    _coarsened(COARSE_PIXEL_MM): _coarse_pixels,
    "slab-sacrum-cropped": _slab_sacrum_cropped,
}
"""Each variant's builder, by the name of the variant it builds: the recipe for a case, or None where it does not
apply (less than 20 mm of CT below the lowest vertebra, fewer than four vertebrae, not all of C5, C6 and C7
annotated, a CT already narrower than a slab, slices or pixels already that coarse)."""
CENTROID_ONLY = ("top-cropped", FROM_C6)
"""The variants that a case with centroids but no mask can take: crops through the spine's length between two
annotated centres, whose vertebrae are in view or not by their centres. The others decide which vertebrae stay
in view by the share of their volume that does (a slab trims processes, thick slices blur an end one away)."""


def reformats(case: Case, names: list[str] | None = None) -> list[tuple[Reformat, Case]]:
    """The applicable variants of ``case`` (all of :data:`REFORMATS`, or those named), each with its recipe; for a
    case without a mask (centroids only), those of :data:`CENTROID_ONLY`."""
    out = []
    for name in names or list(REFORMATS):
        if name not in REFORMATS:
            raise ValueError(f"unknown reformat {name!r}; known: {', '.join(REFORMATS)}")
        if case.mask is None and name not in CENTROID_ONLY:
            continue
        recipe = REFORMATS[name](case)
        if recipe is not None:
            out.append((recipe, reformat(case, recipe)))
    return out

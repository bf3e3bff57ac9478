"""Real vertebra shapes for the synthetic phantoms: VerSe ground-truth masks as depth-field templates.

A *template* is one real vertebra (body and posterior elements, as VerSe masks it) resampled
into its own frame: a signed depth field in mm (positive inside the bone, negative outside,
clipped at ``-OUTSIDE_MM``) on a cube of ``TEMPLATE_MM`` mm sampled every ``STEP_MM`` mm, with
axes (lateral towards the left, posterior, superior) and origin at the vertebral-body centre.
The phantom paints a template into its bone depth field exactly as it paints the analytic
primitives (:meth:`export.synth_render.Canvas.paint_bone`), so cortical shell, trabecular core,
partial volume and the mask come out the same way; only the shape is real.

The frame of a vertebra in its mask: origin at the body centre (annotated, or estimated by
:func:`export.real_cases.body_centres_mm`); superior from the centre of the vertebra below to
the one above (the spine's local direction); posterior towards the vertebra's centre of mass,
which the posterior elements pull behind the body (10-15 mm); lateral completes the frame.

Sources (``../shared/data``; VerSe, CC BY-SA 4.0, Sekuboyina et al. 2021, Loeffler et al. 2020):
``verse-label-masks`` (sub-gl003 C1-T5, sub-gl017 C1-T4, sub-gl108 C1-T3, sub-verse010 L1-L5,
sub-verse005 L1-L5) and ``verse-sub-verse004`` (T9-L5). Levels without a template (T6-T8) borrow
the nearest level's and are scaled to the level's spacing. Not used: verse-sub-verse014 (held
out for the real-CT benchmark) and the labelled CTs' masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from export.synth_render import Canvas
from export.synth_skeleton import DENSITY_VERTEBRA
from spine.image import Geometry, read_image
from spine.labels import EVALUATED, anatomical_rank
from spine.verse import read_centroids_mm

if TYPE_CHECKING:
    from export.anatomy import SpineLevel

__all__ = [
    "SHAPE_SOURCES",
    "STEP_MM",
    "TEMPLATE_MM",
    "Template",
    "load_templates",
    "nearest_templates",
    "paint_real_vertebra",
    "template_depth",
]

log = logging.getLogger(__name__)

STEP_MM = 1.0
TEMPLATE_MM = 100.0
"""Edge of the template cube: a lumbar vertebra with its transverse processes spans ~90 mm."""
OUTSIDE_MM = 6.0

SHAPE_SOURCES: tuple[tuple[str, str], ...] = (
    ("verse-label-masks/sub-gl003_seg-vert_msk.nii.gz", "verse-label-masks/sub-gl003_seg-subreg_ctd.json"),
    ("verse-label-masks/sub-gl017_seg-vert_msk.nii.gz", "verse-label-masks/sub-gl017_seg-subreg_ctd.json"),
    ("verse-label-masks/sub-gl108_seg-vert_msk.nii.gz", ""),
    ("verse-label-masks/sub-verse010_seg-vert_msk.nii.gz", "verse-label-masks/sub-verse010_seg-subreg_ctd.json"),
    ("verse-label-masks/sub-verse005_seg-vert_msk.nii.gz", ""),
    ("verse-sub-verse004/sub-verse004_seg-vert_msk.nii.gz", "verse-sub-verse004/sub-verse004_seg-subreg_ctd.json"),
)
"""(mask, annotated centroid JSON or "" to estimate body centres), relative to the shared data folder."""


@dataclass(frozen=True)
class Template:
    """One real vertebra: ``depth`` (z=w superior, y=v posterior, x=u lateral) float32 mm, its level's
    spacing to its neighbours (mm) and where it came from."""

    label: int
    depth: np.ndarray
    spacing_mm: float
    source: str


def _frame(centre: np.ndarray, above: np.ndarray | None, below: np.ndarray | None, com: np.ndarray) -> np.ndarray:
    """Columns lateral (left), posterior, superior, from neighbours and the centre of mass (module docstring)."""
    if above is not None and below is not None:
        superior = above - below
    elif above is not None:
        superior = above - centre
    elif below is not None:
        superior = centre - below
    else:
        superior = np.array([0.0, 0.0, 1.0])
    superior = superior / np.linalg.norm(superior)
    posterior = com - centre
    posterior = posterior - posterior.dot(superior) * superior
    if np.linalg.norm(posterior) < 2.0:  # no clear posterior pull: the scan's own posterior axis
        posterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
    posterior = posterior / np.linalg.norm(posterior)
    lateral = np.cross(posterior, superior)
    return np.stack([lateral, posterior, superior], axis=1)


def _signed_depth(inside: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """mm inside (positive) or outside (negative, clipped at ``-OUTSIDE_MM``) of a binary mask's surface."""
    depth_in = ndimage.distance_transform_edt(inside, sampling=spacing_zyx)
    depth_out = ndimage.distance_transform_edt(~inside, sampling=spacing_zyx)
    return np.where(inside, depth_in - 0.5 * min(spacing_zyx), -np.minimum(depth_out, OUTSIDE_MM)).astype(np.float32)


def _at_most_1mm(mask: sitk.Image) -> sitk.Image:
    """The mask on a grid no finer than 1 mm per axis (nearest neighbour): the templates are sampled at
    1 mm, and distance transforms on 0.3 mm masks would cost minutes."""
    spacing = np.asarray(mask.GetSpacing(), dtype=np.float64)
    if np.all(spacing >= STEP_MM - 1e-6):
        return mask
    new = np.maximum(spacing, STEP_MM)
    size = [max(round(n * s / t), 1) for n, s, t in zip(mask.GetSize(), spacing, new, strict=True)]
    origin = mask.TransformContinuousIndexToPhysicalPoint([0.5 * (t / s) - 0.5 for s, t in zip(spacing, new,
                                                                                                strict=True)])
    return sitk.Resample(mask, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, tuple(new),
                         mask.GetDirection(), 0, sitk.sitkUInt8)


def _templates_of(mask_path: Path, centroid_path: Path | None) -> list[Template]:
    from export.real_cases import body_centres_mm

    original = sitk.Cast(read_image(mask_path), sitk.sitkUInt8)
    mask = _at_most_1mm(original)
    geometry = Geometry.of(mask)
    array = sitk.GetArrayFromImage(mask)
    centres = body_centres_mm(mask)
    if centroid_path is not None:  # voxel coordinates of the file as stored, not of the 1 mm grid
        annotated = read_centroids_mm(centroid_path, Geometry.of(original))
        centres.update({v: c for v, c in annotated.items() if v in centres})
    del original
    spacing_zyx = tuple(reversed(geometry.spacing_mm))
    objects = ndimage.find_objects(array.astype(np.int32))
    order = sorted(centres, key=anatomical_rank)
    half = TEMPLATE_MM / 2.0
    axis = np.arange(-half, half + 1e-6, STEP_MM)
    w, v, u = np.meshgrid(axis, axis, axis, indexing="ij")
    local = np.stack([u.ravel(), v.ravel(), w.ravel()])  # (3, n): lateral, posterior, superior
    out = []
    for position, label in enumerate(order):
        box = objects[label - 1]
        if box is None or label not in EVALUATED:
            continue
        pad = 4
        low = [max(s.start - pad, 0) for s in box]
        high = [min(s.stop + pad, n) for s, n in zip(box, array.shape, strict=True)]
        crop = array[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] == label
        if crop.sum() * np.prod(spacing_zyx) < 3000.0:  # < 3 ml: a sliver at the scan's edge, not a vertebra
            continue
        touches = any(a == 0 or b == n for a, b, n in zip(low, high, array.shape, strict=True))
        if touches and crop.sum() * np.prod(spacing_zyx) < 15000.0:
            continue  # cut by the field of view
        depth = _signed_depth(crop, spacing_zyx)
        above = centres[order[position - 1]] if position > 0 else None
        below = centres[order[position + 1]] if position + 1 < len(order) else None
        zyx = np.argwhere(crop).mean(axis=0) + np.asarray(low)
        com = geometry.index_to_world(zyx[::-1])
        frame = _frame(centres[label], above, below, com)
        world = centres[label][:, None] + frame @ local  # (3, n) LPS mm
        index_xyz = geometry.world_to_index(world.T)  # (n, 3) continuous (i, j, k)
        coords = (index_xyz[:, ::-1] - np.asarray(low)).T  # (3, n) in crop (z, y, x)
        sampled = ndimage.map_coordinates(depth, coords, order=1, mode="constant", cval=-OUTSIDE_MM)
        if sampled.max() <= 0.0:
            log.warning("%s: label %d: no bone around its centre; skipped", mask_path, label)
            continue
        gaps = [float(np.linalg.norm(centres[label] - n)) for n in (above, below) if n is not None]
        out.append(Template(label, sampled.reshape(w.shape).astype(np.float32),
                            float(np.mean(gaps)) if gaps else float("nan"), f"{mask_path.name}:{label}"))
    return out


CACHE_ENV = "VERSE_GC_CACHE"
TEMPLATES_ENV = "VERSE_GC_TEMPLATES"
"""A template library file (``.npz``, as cached) to use as it is, e.g. on a machine without the VerSe masks."""
_CACHE_VERSION = 2


def _cache_file(root: Path) -> Path:
    """Cache of the library, keyed by the sources' names, sizes and times and the template format."""
    import hashlib
    import os

    key = hashlib.sha256(repr((_CACHE_VERSION, STEP_MM, TEMPLATE_MM, OUTSIDE_MM, [
        (name, (root / name).stat().st_size, int((root / name).stat().st_mtime))
        for pair in SHAPE_SOURCES for name in pair if name and (root / name).is_file()])).encode()).hexdigest()[:16]
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "verse-gc")
    return base / f"vertebra-templates-{key}.npz"


def _save(path: Path, library: dict[int, list[Template]]) -> None:
    from spine.image import atomic_path

    arrays: dict[str, np.ndarray] = {}
    for label, templates in library.items():
        for k, t in enumerate(templates):
            arrays[f"{label}_{k}_depth"] = t.depth.astype(np.float16)
            arrays[f"{label}_{k}_meta"] = np.array([t.spacing_mm])
            arrays[f"{label}_{k}_source"] = np.array(t.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.savez_compressed(stream, **arrays)


def _load(path: Path) -> dict[int, list[Template]]:
    library: dict[int, list[Template]] = {}
    with np.load(path) as data:
        for name in sorted(n for n in data.files if n.endswith("_depth")):
            label, k = (int(p) for p in name.split("_")[:2])
            library.setdefault(label, []).append(Template(
                label, data[name].astype(np.float32), float(data[f"{label}_{k}_meta"][0]),
                str(data[f"{label}_{k}_source"])))
    return library


@lru_cache(maxsize=2)
def load_templates(shared: str | None = None) -> dict[int, tuple[Template, ...]]:
    """Templates per VerSe id from the masks of :data:`SHAPE_SOURCES` (empty when the data is absent).

    A template whose spacing is unknown (a vertebra without neighbours in its mask) takes the
    median spacing of its level's other templates, else 25 mm. Built once (~1 min) and cached
    under ``$VERSE_GC_CACHE`` (default ``~/.cache/verse-gc``); ``$VERSE_GC_TEMPLATES`` names a library
    file to use instead.
    """
    import os

    from export.real_cases import shared_data_dir

    given = os.environ.get(TEMPLATES_ENV)
    if given:
        return {label: tuple(t) for label, t in _load(Path(given)).items()}
    root = Path(shared) if shared else shared_data_dir()
    library: dict[int, list[Template]] = {}
    if root is None or not any((root / mask).is_file() for mask, _ in SHAPE_SOURCES):
        return {}
    cache = _cache_file(root)
    if cache.is_file():
        try:
            return {label: tuple(t) for label, t in _load(cache).items()}
        except (OSError, ValueError, KeyError) as error:
            log.warning("%s: unreadable template cache (%s); rebuilding", cache, error)
    for mask, ctd in SHAPE_SOURCES:
        path = root / mask
        if not path.is_file():
            continue
        for template in _templates_of(path, root / ctd if ctd else None):
            library.setdefault(template.label, []).append(template)
    for label, templates in library.items():
        known = [t.spacing_mm for t in templates if np.isfinite(t.spacing_mm)]
        fallback = float(np.median(known)) if known else 25.0
        library[label] = [t if np.isfinite(t.spacing_mm) else Template(t.label, t.depth, fallback, t.source)
                          for t in templates]
    log.info("real vertebra templates: %s", {k: len(v) for k, v in sorted(library.items())})
    try:
        _save(cache, library)
    except OSError as error:
        log.warning("%s: template cache not written (%s)", cache, error)
    return {label: tuple(templates) for label, templates in library.items()}


def nearest_templates(library: dict[int, tuple[Template, ...]], label: int) -> tuple[Template, ...]:
    """The templates of ``label``, else of the nearest level by anatomical rank (T6-T8 borrow T5 or T9)."""
    if label in library:
        return library[label]
    rank = anatomical_rank(label)
    best = min(library, key=lambda other: (abs(anatomical_rank(other) - rank), other))
    return library[best]


def template_depth(template: Template, u: np.ndarray, v: np.ndarray, w: np.ndarray,
                   scale_uvw: Sequence[float]) -> np.ndarray:
    """Depth (mm) of a template scaled by ``scale_uvw`` at local points ``(u, v, w)`` (mm, any shape).

    The depth is sampled at ``(u, v, w) / scale`` and multiplied by the mean scale: an
    approximation of the scaled shape's distance field that keeps the surface exact.
    """
    half = TEMPLATE_MM / 2.0
    su, sv, sw = (float(s) for s in scale_uvw)
    coords = np.stack([(w / sw + half) / STEP_MM, (v / sv + half) / STEP_MM, (u / su + half) / STEP_MM])
    sampled = ndimage.map_coordinates(template.depth, coords.reshape(3, -1), order=1, mode="constant",
                                      cval=-OUTSIDE_MM)
    return (sampled.reshape(u.shape) * np.float32((su + sv + sw) / 3.0)).astype(np.float32)


def _extent(template: Template) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v, w) box in mm around the template's bone (where depth > -1 mm)."""
    zyx = np.argwhere(template.depth > -1.0)
    half = TEMPLATE_MM / 2.0
    low = zyx.min(axis=0)[::-1] * STEP_MM - half
    high = zyx.max(axis=0)[::-1] * STEP_MM - half
    return low, high


def paint_real_vertebra(canvas: Canvas, level: SpineLevel, templates: Sequence[Template],
                        rng: np.random.Generator) -> None:
    """Paint one of ``templates`` (drawn at random) at ``level``: scaled along the spine to the level's
    spacing, across it by the same factor +-7 % per axis, rotated into the level's frame."""
    template = templates[int(rng.integers(len(templates)))]
    along = float(np.clip(level.spacing_mm / template.spacing_mm, 0.75, 1.35))
    scale = np.array([along * rng.uniform(0.93, 1.07), along * rng.uniform(0.93, 1.07), along])
    low, high = _extent(template)
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    world = level.centre_mm + (corners * scale) @ level.frame.T
    margin = canvas.margin_mm + 1.0
    found = canvas.local_coordinates(world.min(axis=0) - margin, world.max(axis=0) + margin, level.centre_mm,
                                     level.frame)
    if found is None:
        return
    slices, u, v, w = found
    u, v, w = np.broadcast_arrays(u, v, w)
    canvas.paint_bone(slices, template_depth(template, u, v, w, scale), level.label, DENSITY_VERTEBRA)

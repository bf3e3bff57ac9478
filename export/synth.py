"""Synthetic spine CT phantoms with VerSe-style ground truth, for training the default models.

:func:`synth_case` draws one case from a seed (same seed, identical arrays):

1. a spine from real centroid chains (:mod:`export.anatomy`), label variants included
   (T13, L6, 11 thoracic, 4 lumbar) as they occur in the 112 VerSe 2020 spines, plus a
   small injected rate;
2. a field of view (cervical, thoracic, lumbar, thoracolumbar, whole spine or a random
   crop; whole body section or cropped around the spine), voxel spacing (0.3-1 mm in-plane,
   0.5-5 mm between slices, coarsened to keep the render under ``max_voxels``) and a
   stored orientation (any axis permutation and flip);
3. soft tissue on a coarse grid (:mod:`export.synth_body`), bones painted on the render grid
   (:mod:`export.synth_skeleton`): cortical shell ~700-1200 HU, trabecular core 150-300 HU,
   discs ~80 HU, canal 10-40 HU, ribs, sternum, sacrum, pelvis, skull base;
4. slice thickness (sub-slices averaged), blur, CT-like correlated noise, occasional metal
   streaks; then the axes are permuted and flipped into the stored orientation (no
   resampling: the grid stays exact).

The mask holds VerSe ids of every vertebra in the field of view (body and posterior elements,
partial ones at the edge included) and 26 for the sacrum; centroids are vertebral-body centres,
given only for vertebrae whose centre lies inside the field of view.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from export.anatomy import SpineLevel, body_size_mm, build_spine
from export.synth_body import BodyPlan, Profile, render_background, upsample_linear
from export.synth_render import Canvas
from export.synth_shapes import load_templates, nearest_templates, paint_real_vertebra
from export.synth_skeleton import (
    SacralSegment,
    paint_canal,
    paint_discs,
    paint_pelvis,
    paint_ribs,
    paint_sacrum,
    paint_skull,
    paint_vertebra,
    sacral_segments,
)
from spine.arguments import positive_int
from spine.case import Case
from spine.console import HelpFormatter
from spine.image import Geometry, image_from_array, write_image
from spine.labels import anatomical_rank
from spine.verse import centroid_json_name, mask_name, write_centroid_json

__all__ = [
    "ORIENTATIONS",
    "REGIONS",
    "add_parser",
    "case_paths",
    "synth_case",
    "write_case",
]

log = logging.getLogger(__name__)

REGIONS: tuple[str, ...] = ("cervical", "thoracic", "lumbar", "thoracolumbar", "whole", "crop")
_REGION_WEIGHTS = (0.14, 0.2, 0.27, 0.14, 0.1, 0.15)

_AXIS_OF_CODE: dict[str, tuple[int, float]] = {
    "L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0),
}
ORIENTATIONS: tuple[str, ...] = ("LPS", "RAS", "LAS", "PIR", "ASL", "RPI", "LPI", "IPL", "PIL", "SAR")
"""Common stored orientations (nibabel codes); other signed permutations are drawn too."""

DEFAULT_MAX_VOXELS = 24_000_000
SACRUM = 26


@dataclass(frozen=True)
class _Grid:
    """Output grid in canonical LPS order before reorientation, and its render super-sampling."""

    origin_mm: np.ndarray  # world (x, y, z) of the low corner voxel centre
    spacing_mm: np.ndarray  # (x, y, z)
    size: np.ndarray  # (nx, ny, nz)
    slice_axis: int  # world axis averaged over sub-slices
    subslices: int  # odd


def _parse_orientation(codes: str) -> list[tuple[int, float]]:
    codes = codes.upper()
    if len(codes) != 3 or any(c not in _AXIS_OF_CODE for c in codes):
        raise ValueError(f"orientation must be three letters of L/R, P/A, S/I, got {codes!r}")
    mapping = [_AXIS_OF_CODE[c] for c in codes]
    if sorted(axis for axis, _ in mapping) != [0, 1, 2]:
        raise ValueError(f"orientation {codes!r} does not name each anatomical axis once")
    return mapping


def _random_orientation(rng: np.random.Generator) -> str:
    if rng.random() < 0.55:
        return str(ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))])
    perm = rng.permutation(3)
    pairs = ("LR", "PA", "SI")
    return "".join(pairs[int(a)][int(rng.integers(2))] for a in perm)


def _rank_of(levels: list[SpineLevel]) -> np.ndarray:
    return np.array([anatomical_rank(level.label) for level in levels])


def _choose_z_range(
    rng: np.random.Generator, levels: list[SpineLevel], s1: SacralSegment, region: str,
) -> tuple[float, float]:
    """(bottom, top) world z in mm of the field of view for a region."""
    ranks = _rank_of(levels)
    z = np.array([level.centre_mm[2] for level in levels])

    def at(rank_choices: Sequence[float]) -> float:
        rank = float(rank_choices[int(rng.integers(len(rank_choices)))])
        return float(np.interp(rank, ranks, z))

    s1_z = float(s1.centre_mm[2])
    if region == "cervical":
        return at([7, 8, 9, 10]) - rng.uniform(0, 20), z[0] + rng.uniform(15, 60)
    if region == "thoracic":
        return at([18, 19, 20, 21]) - rng.uniform(0, 15), at([6, 7, 8, 9]) + rng.uniform(0, 15)
    if region == "lumbar":
        return s1_z - rng.uniform(10, 110), at([17, 18, 19, 20]) + rng.uniform(0, 20)
    if region == "thoracolumbar":
        return s1_z - rng.uniform(0, 100), at([11, 12, 13, 14, 15]) + rng.uniform(0, 15)
    if region == "whole":
        return s1_z - rng.uniform(0, 120), z[0] + rng.uniform(10, 50)
    if region == "crop":
        count = int(rng.integers(3, 11))
        first = int(rng.integers(0, max(len(levels) - count, 1) + 1))
        last = min(first + count - 1, len(levels) - 1)
        top = z[first] + rng.uniform(-0.6, 0.9) * levels[first].spacing_mm
        bottom = (z[last] if last < len(levels) - 1 else s1_z) - rng.uniform(-0.6, 0.9) * levels[last].spacing_mm
        return bottom, top
    raise ValueError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")


def _profile(levels: list[SpineLevel], segments: list[SacralSegment], zs: np.ndarray) -> Profile:
    """Spine position and rank at each world z (mm), extrapolated above C1 and below the sacrum."""
    z = [float(level.centre_mm[2]) for level in levels] + [float(s.centre_mm[2]) for s in segments]
    ranks = list(_rank_of(levels)) + [26.0 + 0.6 * i for i in range(len(segments))]
    xs = [float(level.centre_mm[0]) for level in levels] + [float(levels[-1].centre_mm[0])] * len(segments)
    ys = [float(level.centre_mm[1]) for level in levels] + [float(levels[-1].centre_mm[1])] * len(segments)
    widths = [level.half_width_mm for level in levels] + [s.half_width_mm for s in segments]
    depths = [level.half_depth_mm for level in levels] + [s.half_depth_mm for s in segments]
    order = np.argsort(z)
    z_sorted = np.asarray(z)[order]
    rank = np.interp(zs, z_sorted, np.asarray(ranks)[order])
    # Linear extrapolation of rank beyond the ends (about 20 mm per level).
    rank = np.where(zs > z_sorted[-1], ranks[0] - (zs - z_sorted[-1]) / 20.0, rank)
    rank = np.where(zs < z_sorted[0], ranks[-1] + (z_sorted[0] - zs) / 20.0, rank)
    return Profile(
        rank=rank,
        spine_x=np.interp(zs, z_sorted, np.asarray(xs)[order]),
        spine_y=np.interp(zs, z_sorted, np.asarray(ys)[order]),
        body_half_width=np.interp(zs, z_sorted, np.asarray(widths)[order]),
        body_half_depth=np.interp(zs, z_sorted, np.asarray(depths)[order]),
    )


def _choose_xy_range(
    rng: np.random.Generator, plan: BodyPlan, profile: Profile,
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) world (x, y) in mm of the field of view: the whole body section or a crop around the spine."""
    posterior, anterior, half_width = plan.outline(profile.rank)
    fat = plan.fat_mm * 1.3
    if rng.random() < 0.5:
        margin = rng.uniform(5.0, 40.0, size=2)
        low = np.array([np.min(profile.spine_x - half_width) - fat, np.min(profile.spine_y - anterior) - fat])
        high = np.array([np.max(profile.spine_x + half_width) + fat, np.max(profile.spine_y + posterior) + fat])
        return low - margin, high + margin
    centre = np.array([np.mean(profile.spine_x) + rng.uniform(-10, 10), np.mean(profile.spine_y) + rng.uniform(0, 30)])
    half = np.array([rng.uniform(50.0, 125.0), rng.uniform(60.0, 125.0)])
    half = np.maximum(half, [np.ptp(profile.spine_x) / 2 + 45.0, np.ptp(profile.spine_y) / 2 + 55.0])
    return centre - half, centre + half


def _odd_subslices(slice_mm: float) -> int:
    k = int(np.ceil(slice_mm / 1.2))
    return k if k % 2 == 1 else k + 1


def _choose_grid(
    rng: np.random.Generator,
    low: np.ndarray,
    high: np.ndarray,
    spacing_world: np.ndarray | None,
    max_voxels: int,
    focus: np.ndarray,
) -> _Grid:
    """Output grid covering the world box [low, high] (x, y, z mm), spacing drawn or given.

    A drawn spacing is coarsened until the render fits ``max_voxels``; with a given spacing
    the box shrinks towards ``focus`` (the spine, world mm) instead.
    """
    extent = high - low
    if spacing_world is None:
        in_plane = rng.uniform(0.3, 1.0)
        slice_mm = float(np.exp(rng.uniform(np.log(0.5), np.log(5.0))))
        slice_axis = int(rng.choice([2, 0, 1], p=[0.7, 0.2, 0.1]))
        spacing = np.full(3, in_plane)
        spacing[slice_axis] = slice_mm
        for _ in range(50):  # coarsen in-plane (then everything) until the render fits
            size = np.floor(extent / spacing).astype(int) + 1
            k = _odd_subslices(spacing[slice_axis])
            if np.prod(size.astype(np.float64)) * k <= max_voxels:
                break
            plane = [a for a in range(3) if a != slice_axis]
            if spacing[plane[0]] < 2.0:
                spacing[plane] *= 1.1
            else:
                spacing *= 1.1
    else:
        spacing = np.asarray(spacing_world, dtype=np.float64)
        slice_axis = int(np.argmax(spacing))
        low, high = _shrink_to_fit(low, high, spacing, _odd_subslices(float(spacing[slice_axis])), max_voxels, focus)
        extent = high - low
    size = np.floor(extent / spacing).astype(int) + 1
    size = np.maximum(size, 4)
    k = _odd_subslices(float(spacing[slice_axis]))
    return _Grid(origin_mm=low.copy(), spacing_mm=spacing, size=size, slice_axis=slice_axis, subslices=k)


def _shrink_to_fit(
    low: np.ndarray, high: np.ndarray, spacing: np.ndarray, subslices: int, max_voxels: int, focus: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink the box towards ``focus`` (in-plane first, down to 80 mm, then along z) until the render fits."""
    low, high = low.copy(), high.copy()
    for _ in range(200):
        size = np.floor((high - low) / spacing) + 1
        if np.prod(size) * subslices <= max_voxels:
            break
        axes = [0, 1] if np.min((high - low)[:2]) > 80.0 else [0, 1, 2]
        for a in axes:
            centre = float(np.clip(focus[a], low[a], high[a]))
            low[a] = centre - 0.93 * (centre - low[a])
            high[a] = centre + 0.93 * (high[a] - centre)
    return low, high


def _render_canvas(grid: _Grid) -> Canvas:
    """The render grid: the output grid with ``subslices`` sub-slices per slice along the slice axis."""
    spacing = grid.spacing_mm.copy()
    size = grid.size.copy()
    origin = grid.origin_mm.copy()
    k = grid.subslices
    a = grid.slice_axis
    spacing[a] = grid.spacing_mm[a] / k
    size[a] = grid.size[a] * k
    origin[a] = grid.origin_mm[a] - (k - 1) / 2 * spacing[a]
    return Canvas.empty(origin, spacing, (int(size[2]), int(size[1]), int(size[0])))


def _paint_background(rng: np.random.Generator, canvas: Canvas, plan: BodyPlan,
                      levels: list[SpineLevel], segments: list[SacralSegment]) -> None:
    coarse_mm = float(max(2.5, canvas.spacing_mm.max()))
    size = np.array(canvas.shape_zyx[::-1])
    extent = (size - 1) * canvas.spacing_mm
    n = np.floor(extent / coarse_mm).astype(int) + 2
    axes = [canvas.origin_mm[a] + coarse_mm * np.arange(n[a]) for a in range(3)]
    profile = _profile(levels, segments, axes[2])
    coarse = render_background(rng, plan, profile, axes[0], axes[1])
    positions = [(canvas.origin_mm[a] + canvas.spacing_mm[a] * np.arange(size[a]) - axes[a][0]) / coarse_mm
                 for a in (2, 1, 0)]
    canvas.hu[...] = upsample_linear(coarse, positions)


@dataclass(frozen=True)
class _Materials:
    """Case-level bone and soft-tissue HU."""

    cortical_hu: float
    trabecular_hu: float
    disc_hu: float
    csf_hu: float
    cord_hu: float
    shell_mm: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Materials:
        return cls(
            cortical_hu=float(rng.uniform(700.0, 1200.0)),
            trabecular_hu=float(rng.uniform(60.0, 250.0)),
            disc_hu=float(rng.normal(80.0, 8.0)),
            csf_hu=float(rng.normal(15.0, 4.0)),
            cord_hu=float(rng.normal(35.0, 4.0)),
            shell_mm=float(rng.uniform(0.5, 1.0)),
        )


def _compose_bone(rng: np.random.Generator, canvas: Canvas, materials: _Materials) -> np.ndarray:
    """HU of the render grid: soft tissue plus bone (cortical shell over trabecular core) from the depth field.

    Each voxel near a surface gets the mean of the depth profile (soft | cortex | core) over a
    window of one voxel across the surface: partial volume without super-sampling.
    """
    hu = canvas.hu
    voxel_mm = float(np.mean(canvas.spacing_mm))
    half = np.float32(0.5 * voxel_mm)
    near = np.nonzero(canvas.depth > -half)
    depth = canvas.depth[near]
    density = canvas.density[near]
    soft = hu[near]
    # Per bone class: (cortical scale, trabecular scale, shell scale).
    table = np.array([[1.0, 1.0, 1.0],  # 0 unused
                      [1.0, 1.0, 1.0],  # vertebra
                      [0.85, 0.95, 1.0],  # rib
                      [0.95, 0.75, 1.4],  # pelvis, sternum, skull
                      [1.1, 0.3, 4.5]],  # femoral shaft: thick cortex, fatty marrow
                     dtype=np.float32)
    cort = materials.cortical_hu * table[density, 0]
    trab = materials.trabecular_hu * table[density, 1]
    shell = materials.shell_mm * table[density, 2]
    trab = trab + rng.normal(0.0, 35.0, size=depth.shape).astype(np.float32)  # trabecular texture

    def integral(x: np.ndarray) -> np.ndarray:
        """Integral of (profile - soft) from the surface to depth x: cortex, then trabecular core."""
        return (cort - soft) * np.clip(x, 0.0, shell) + (trab - soft) * np.maximum(x - shell, 0.0)

    # Box average of the 1-D profile across the surface over one voxel: partial volume.
    hu[near] = soft + (integral(depth + half) - integral(depth - half)) / (2.0 * half)
    return hu


def _metal(rng: np.random.Generator, hu: np.ndarray, canvas: Canvas, levels: list[SpineLevel],
           spacing_mm: np.ndarray) -> None:
    """Pedicle-screw-like metal in a few axial slices: a bright spot and radial streaks."""
    level = levels[int(rng.integers(len(levels)))]
    zi = (level.centre_mm[2] - canvas.origin_mm[2]) / spacing_mm[2]
    n_slices = max(1, round(rng.uniform(3.0, 12.0) / spacing_mm[2]))
    start = round(zi) - n_slices // 2
    rows = [k for k in range(start, start + n_slices) if 0 <= k < hu.shape[0]]
    if not rows:
        return
    ys = canvas.origin_mm[1] + spacing_mm[1] * np.arange(hu.shape[1])
    xs = canvas.origin_mm[0] + spacing_mm[0] * np.arange(hu.shape[2])
    side = float(rng.choice([-1.0, 1.0]))
    spot = level.centre_mm + level.frame @ np.array([side * level.half_width_mm * 0.5, level.half_depth_mm, 0.0])
    dx = xs[None, :] - spot[0]
    dy = ys[:, None] - spot[1]
    r = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    lobes = float(rng.integers(3, 7))
    amplitude = float(rng.uniform(300.0, 900.0))
    streaks = amplitude * np.cos(lobes * phi + rng.uniform(0, np.pi)) * np.exp(-r / rng.uniform(40.0, 90.0))
    streaks *= np.clip(r / 6.0, 0.0, 1.0)
    for k in rows:
        hu[k] += streaks.astype(np.float32)
        hu[k][r < rng.uniform(2.0, 3.5)] = 3000.0


def _reorient(array_zyx: np.ndarray, grid: _Grid, codes: str) -> tuple[np.ndarray, Geometry]:
    """Canonical LPS array -> stored array (k, j, i) and its exact geometry for orientation ``codes``."""
    mapping = _parse_orientation(codes)
    out = array_zyx
    for axis, sign in mapping:
        if sign < 0:
            out = np.flip(out, axis=2 - axis)
    out = np.ascontiguousarray(out.transpose([2 - mapping[2][0], 2 - mapping[1][0], 2 - mapping[0][0]]))
    direction = np.zeros((3, 3))
    origin = grid.origin_mm.copy()
    for column, (axis, sign) in enumerate(mapping):
        direction[axis, column] = sign
        if sign < 0:
            origin[axis] = grid.origin_mm[axis] + (grid.size[axis] - 1) * grid.spacing_mm[axis]
    geometry = Geometry(
        size=tuple(int(grid.size[axis]) for axis, _ in mapping),  # type: ignore[arg-type]
        spacing_mm=tuple(float(grid.spacing_mm[axis]) for axis, _ in mapping),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return out, geometry


def synth_case(
    seed: int,
    *,
    region: str | None = None,
    spacing_mm: Sequence[float] | None = None,
    orientation: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    extra_variant_rate: float = 0.08,
    metal_rate: float = 0.06,
    landmarks: np.ndarray | None = None,
    real_shapes: bool = True,
) -> Case:
    """One synthetic spine CT with VerSe ground truth, fully determined by ``seed``.

    - ``region``: one of :data:`REGIONS`, or None to draw one;
    - ``spacing_mm``: output voxel spacing along the stored index axes (i, j, k), or None to
      draw 0.3-1 mm in-plane and 0.5-5 mm between slices (coarsened to fit ``max_voxels``);
    - ``orientation``: stored axis codes such as ``"PIR"`` or ``"LPS"``, or None to draw one;
    - ``max_voxels``: cap on rendered voxels (output voxels times sub-slices);
    - ``extra_variant_rate``: chance of injecting a T13 / L6 / 11-thoracic / 4-lumbar variant
      beyond those the sampled real spine shows;
    - ``landmarks``: real spines (n, 26, 3) instead of the default landmarks file;
    - ``real_shapes``: paint each vertebra from a real VerSe mask (:mod:`export.synth_shapes`)
      when those masks are available, else (or when False) from analytic primitives.

    Returns a :class:`spine.case.Case`: ``ct`` int16 HU, ``mask`` uint8 VerSe ids, centroids
    (LPS mm) of the vertebral bodies whose centre is inside the field of view.
    """
    if region is not None and region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    if max_voxels < 10_000:
        raise ValueError(f"max_voxels must be at least 10000, got {max_voxels}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    levels = build_spine(rng, landmarks=landmarks, extra_variant_rate=extra_variant_rate)
    segments = sacral_segments(levels[-1], rng)
    offset = np.array([rng.uniform(-40, 40), rng.uniform(-60, 120), rng.uniform(-900, 300)])
    levels = [SpineLevel(lv.label, lv.centre_mm + offset, lv.frame, lv.half_width_mm, lv.half_depth_mm,
                         lv.half_height_mm, lv.spacing_mm) for lv in levels]
    segments = [SacralSegment(s.centre_mm + offset, s.frame, s.half_width_mm, s.half_depth_mm, s.half_height_mm,
                              s.ala_mm) for s in segments]
    plan = BodyPlan.sample(rng)
    materials = _Materials.sample(rng)
    scale = float(np.mean([lv.half_width_mm / (0.5 * body_size_mm(lv.label)[0]) for lv in levels[1:]]))
    chosen = region if region is not None else str(rng.choice(REGIONS, p=_REGION_WEIGHTS))
    z_low, z_high = _choose_z_range(rng, levels, segments[0], chosen)
    z_axis = np.linspace(z_low, z_high, 64)
    xy_low, xy_high = _choose_xy_range(rng, plan, _profile(levels, segments, z_axis))
    codes = orientation.upper() if orientation is not None else _random_orientation(rng)
    mapping = _parse_orientation(codes)
    spacing_world = None
    if spacing_mm is not None:
        if len(spacing_mm) != 3 or not all(float(s) > 0 for s in spacing_mm):
            raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm!r}")
        spacing_world = np.zeros(3)
        for column, (axis, _) in enumerate(mapping):
            spacing_world[axis] = float(spacing_mm[column])
    low = np.array([xy_low[0], xy_low[1], z_low])
    high = np.array([xy_high[0], xy_high[1], z_high])
    focus = np.mean([lv.centre_mm for lv in levels if z_low <= lv.centre_mm[2] <= z_high] or [levels[0].centre_mm],
                    axis=0)
    grid = _choose_grid(rng, low, high, spacing_world, max_voxels, focus)
    canvas = _render_canvas(grid)

    _paint_background(rng, canvas, plan, levels, segments)
    paint_discs(canvas, levels, materials.disc_hu, None)
    _paint_lumbosacral_disc(canvas, levels[-1], segments[0], materials.disc_hu)
    library = load_templates() if real_shapes else {}
    for level in levels:
        if library:
            paint_real_vertebra(canvas, level, nearest_templates(library, level.label), rng)
        else:
            paint_vertebra(canvas, level, scale)
    paint_ribs(canvas, levels, plan, scale, rng)
    paint_sacrum(canvas, segments)
    paint_pelvis(canvas, segments[0], levels[-1], plan.habitus, plan.muscle_hu)
    paint_skull(canvas, levels[0], plan.habitus)
    paint_canal(canvas, levels, scale, materials.csf_hu, materials.cord_hu)

    hu = _compose_bone(rng, canvas, materials)
    mask_render = np.where(canvas.depth > 0, canvas.label, 0).astype(np.uint8)
    blur_mm = rng.uniform(0.3, 0.8)
    hu = ndimage.gaussian_filter(hu, sigma=tuple(blur_mm / canvas.spacing_mm[::-1]), truncate=2.5)
    hu, mask = _thick_slices(hu, mask_render, grid)
    if rng.random() < metal_rate:
        _metal(rng, hu, canvas, levels, grid.spacing_mm)
    hu = _add_noise(rng, hu, float(rng.uniform(6.0, 35.0)))
    ct_zyx = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    ct_array, geometry = _reorient(ct_zyx, grid, codes)
    mask_array, _ = _reorient(mask, grid, codes)
    ct = image_from_array(ct_array, geometry)
    mask_image = image_from_array(mask_array, geometry)
    centroids = _centroids_in_view(levels, segments[0], geometry, mask_array)
    log.debug("synthetic case %d: region %s, %s, size %s, spacing %s, %.2f s", seed, chosen, codes,
              geometry.size, tuple(round(s, 2) for s in geometry.spacing_mm), time.perf_counter() - started)
    return Case(case_id=f"sub-synth{seed:06d}", ct=ct, mask=mask_image, centroids_mm=centroids,
                source=f"synthetic:{seed}")


def _paint_lumbosacral_disc(canvas: Canvas, last: SpineLevel, s1: SacralSegment, disc_hu: float) -> None:
    bottom = SpineLevel(SACRUM, s1.centre_mm, s1.frame, s1.half_width_mm, s1.half_depth_mm, s1.half_height_mm,
                        last.spacing_mm)
    paint_discs(canvas, [last], disc_hu, bottom)


def _thick_slices(hu: np.ndarray, mask: np.ndarray, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Average each slice's sub-slices (slice thickness) and take the mask at the slice centre."""
    k = grid.subslices
    if k == 1:
        return hu, mask
    axis = 2 - grid.slice_axis
    shape = list(hu.shape)
    shape[axis : axis + 1] = [shape[axis] // k, k]
    averaged = hu.reshape(shape).mean(axis=axis + 1, dtype=np.float32)
    index = [slice(None)] * 3
    index[axis] = slice(k // 2, None, k)
    return averaged, np.ascontiguousarray(mask[tuple(index)])


def _add_noise(rng: np.random.Generator, hu: np.ndarray, sigma_hu: float) -> np.ndarray:
    """Add CT-like noise of standard deviation ``sigma_hu``: white noise smoothed by a [1 2 1]/4 kernel in-plane."""
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    for axis in (1, 2):
        if noise.shape[axis] < 3:
            continue
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        smoothed = noise * np.float32(0.5)
        smoothed[tuple(head)] += np.float32(0.25) * noise[tuple(tail)]
        smoothed[tuple(tail)] += np.float32(0.25) * noise[tuple(head)]
        noise = smoothed
    noise *= np.float32(sigma_hu / 0.375)
    hu += noise
    return hu


def _centroids_in_view(
    levels: list[SpineLevel], s1: SacralSegment, geometry: Geometry, mask: np.ndarray,
) -> dict[int, np.ndarray]:
    """Body centres of the vertebrae (and S1) whose centre lies in the image and whose label is in the mask."""
    present = set(np.nonzero(np.bincount(mask.ravel(), minlength=256))[0].tolist())
    size = np.array(geometry.size)
    centroids = {}
    for label, centre in [*((lv.label, lv.centre_mm) for lv in levels), (SACRUM, s1.centre_mm)]:
        index = geometry.world_to_index(centre)
        if label in present and np.all(index >= -0.5) and np.all(index <= size - 0.5):
            centroids[int(label)] = np.asarray(centre, dtype=np.float64)
    return centroids


def case_paths(out_dir: str | Path, case_id: str) -> tuple[Path, Path, Path]:
    """VerSe BIDS paths of a case under ``out_dir``: (CT, mask, centroid JSON)."""
    root = Path(out_dir)
    return (root / "rawdata" / case_id / f"{case_id}_ct.nii.gz",
            root / "derivatives" / case_id / mask_name(case_id),
            root / "derivatives" / case_id / centroid_json_name(case_id))


def write_case(case: Case, out_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write a case in the VerSe BIDS layout: int16 CT, uint8 mask, centroid JSON. Returns the three paths."""
    ct_path, mask_path, ctd_path = case_paths(out_dir, case.case_id)
    write_image(sitk.Cast(case.ct, sitk.sitkInt16), ct_path)
    if case.mask is not None:
        write_image(sitk.Cast(case.mask, sitk.sitkUInt8), mask_path)
    write_centroid_json(ctd_path, case.centroids_mm, case.geometry, decimals=4)
    return ct_path, mask_path, ctd_path


# ---------------------------------------------------------------- command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``synth``: write synthetic cases (VerSe BIDS layout) and/or a QC picture."""
    parser = subparsers.add_parser("synth", help="write synthetic spine CT cases in the VerSe layout",
                                   description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (rawdata/ and derivatives/ are created)")
    parser.add_argument("--cases", type=positive_int, default=10, help="number of cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    parser.add_argument("--region", choices=REGIONS, default=None, help="field of view (default: random)")
    parser.add_argument("--max-voxels", type=positive_int, default=DEFAULT_MAX_VOXELS,
                        help=f"cap on rendered voxels per case (default {DEFAULT_MAX_VOXELS})")
    parser.add_argument("--qc", type=Path, default=None,
                        help="write a QC picture (synthetic vs the real example CT) to this PNG")
    parser.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    """Entry point of ``python -m export synth``."""
    from tqdm import tqdm

    if args.out is None and args.qc is None:
        raise SystemExit("synth: give --out DIR (cases) and/or --qc FILE.png")
    if args.qc is not None:
        from export.synth_qc import write_qc

        write_qc(args.qc, synth_case, seed=args.seed)
        log.info("QC picture written to %s", args.qc)
    if args.out is not None:
        started = time.perf_counter()
        for i in tqdm(range(args.cases), desc="synth", unit="case"):
            case = synth_case(args.seed + i, region=args.region, max_voxels=args.max_voxels)
            write_case(case, args.out)
        log.info("%d cases written to %s in %.1f s", args.cases, args.out, time.perf_counter() - started)
    return 0

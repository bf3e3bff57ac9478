"""Bones of the synthetic phantoms: vertebrae with posterior elements, discs, canal, ribs, sacrum, pelvis.

All shapes are painted onto a :class:`export.synth_render.Canvas` in world mm (LPS). Local
vertebra coordinates ``(u, v, w)`` are lateral (left), posterior and superior along the
spine, with the origin at the vertebral-body centre (the VerSe centroid).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from export.anatomy import SpineLevel
from export.synth_body import BodyPlan
from export.synth_render import Canvas
from spine.labels import anatomical_rank

__all__ = [
    "DENSITY_PELVIS",
    "DENSITY_RIB",
    "DENSITY_VERTEBRA",
    "SacralSegment",
    "canal_centreline",
    "paint_canal",
    "paint_discs",
    "paint_pelvis",
    "paint_ribs",
    "paint_sacrum",
    "paint_skull",
    "paint_vertebra",
    "sacral_segments",
]

DENSITY_VERTEBRA = 1
DENSITY_RIB = 2
DENSITY_PELVIS = 3
DENSITY_CORTICAL_SHAFT = 4

SACRUM = 26

# Posterior-element sizes (mm) by rank; knots at C2, C6, C7, T1, T5, T10, T12, L1, L3, L5.
_KNOTS = (2, 6, 7, 8, 12, 17, 19, 20, 22, 24)
_TABLE: dict[str, tuple[float, ...]] = {
    "canal_half_width": (12.5, 12.5, 11.5, 9.5, 8.0, 8.5, 9.5, 11.0, 11.5, 12.0),
    "canal_half_depth": (7.5, 7.0, 7.0, 7.5, 7.5, 8.0, 8.5, 9.0, 8.5, 8.5),
    "pedicle_radius": (3.0, 2.8, 3.0, 3.5, 3.2, 4.0, 4.5, 4.5, 5.0, 6.5),
    "lamina_radius": (2.5, 2.3, 2.6, 2.8, 2.8, 3.0, 3.3, 3.5, 3.6, 3.8),
    "spinous_length": (22.0, 18.0, 34.0, 38.0, 40.0, 36.0, 32.0, 30.0, 31.0, 24.0),
    "spinous_angle_deg": (15.0, 15.0, 20.0, 30.0, 55.0, 45.0, 25.0, 8.0, 5.0, 10.0),
    "spinous_height": (4.0, 4.0, 6.0, 6.0, 6.0, 8.0, 11.0, 12.0, 13.0, 11.0),
    "transverse_length": (10.0, 12.0, 16.0, 22.0, 21.0, 16.0, 6.0, 14.0, 26.0, 22.0),
    "transverse_angle_deg": (-15.0, -15.0, -5.0, 30.0, 38.0, 40.0, 25.0, 5.0, 3.0, 10.0),
    "transverse_radius": (3.0, 3.0, 3.5, 4.5, 4.3, 4.5, 4.0, 3.2, 3.5, 5.0),
    "articular_radius": (4.0, 4.2, 4.2, 3.6, 3.4, 3.8, 4.2, 4.8, 5.2, 5.5),
}


def element_sizes(label: int, scale: float = 1.0) -> dict[str, float]:
    """Posterior-element sizes of a level in mm (angles in degrees), interpolated by rank."""
    rank = min(anatomical_rank(label), 24.0)
    sizes = {key: float(np.interp(rank, _KNOTS, values)) for key, values in _TABLE.items()}
    for key in sizes:
        if not key.endswith("_deg"):
            sizes[key] *= scale
    return sizes


def _to_world(level: SpineLevel) -> Callable[[float, float, float], np.ndarray]:
    def point(u: float, v: float, w: float) -> np.ndarray:
        return level.centre_mm + level.frame @ np.array([u, v, w])

    return point


def _vector(level: SpineLevel, u: float, v: float, w: float) -> np.ndarray:
    return level.frame @ np.array([u, v, w])


def canal_offset_mm(level: SpineLevel, sizes: dict[str, float]) -> float:
    """Posterior distance (mm) from the body centre to the canal centre."""
    return 0.85 * level.half_depth_mm + sizes["canal_half_depth"] + 1.0


def paint_atlas(canvas: Canvas, level: SpineLevel, scale: float) -> None:
    """C1: a ring (anterior and posterior arch), lateral masses and transverse processes; no body."""
    p = _to_world(level)
    angles = np.linspace(0.0, 2.0 * np.pi, 25)
    ring = np.array([p(21.0 * scale * np.sin(t), 3.0 - 19.0 * scale * np.cos(t), 0.0) for t in angles])
    canvas.polyline(ring, 3.3 * scale, label=level.label, density=DENSITY_VERTEBRA)
    for side in (-1.0, 1.0):
        canvas.slab(p(side * 15.0 * scale, -7.0, 6.0), _vector(level, 0, 12.0 * scale, 0),
                    _vector(level, 0, 0, -12.0), 5.5 * scale, label=level.label, density=DENSITY_VERTEBRA)
        canvas.slab(p(side * 20.0 * scale, 0.0, 0.0), _vector(level, side * 17.0 * scale, 2.0, 0), np.zeros(3),
                    3.8 * scale, label=level.label, density=DENSITY_VERTEBRA)


def paint_vertebra(canvas: Canvas, level: SpineLevel, scale: float) -> None:
    """Body (cortical shell + trabecular core from the depth field) and posterior elements, all ``level.label``."""
    if level.label == 1:
        paint_atlas(canvas, level, scale)
        return
    s = element_sizes(level.label, scale)
    a, b, h = level.half_width_mm, level.half_depth_mm, level.half_height_mm
    lumbar = level.label in (20, 21, 22, 23, 24, 25)
    kw = {"label": level.label, "density": DENSITY_VERTEBRA}
    canvas.elliptic_cylinder(level.centre_mm, level.frame, a, b, h, waist=0.07,
                             posterior_flat=0.8 if lumbar else 0.88, rounding_mm=min(2.5, 0.25 * h),
                             endplate_dip_mm=min(1.5, 0.12 * h), **kw)
    p = _to_world(level)
    vc = canal_offset_mm(level, s)
    cw, cd, pr, lr = s["canal_half_width"], s["canal_half_depth"], s["pedicle_radius"], s["lamina_radius"]
    disc = max(level.spacing_mm - 2.0 * h, 2.0)
    if level.label == 2:  # dens of C2, up into the ring of C1
        canvas.slab(p(0.0, -0.2 * b, h), _vector(level, 0.0, -0.1 * b, 0.9 * level.spacing_mm), np.zeros(3),
                    5.0 * scale, **kw)
    for side in (-1.0, 1.0):
        pu = side * (cw + 0.6 * pr)
        # Pedicle: an oval bar from the body's back to the lamina, taller than wide.
        canvas.slab(p(pu, 0.5 * b, 0.5 * h), _vector(level, 0.0, vc + 0.3 * cd - 0.5 * b, 0.0),
                    _vector(level, 0.0, 0.0, -0.5 * h), pr, **kw)
        # Lamina: a plate from the pedicle to the midline, behind the canal.
        canvas.slab(p(pu, vc + 0.3 * cd, 0.5 * h), _vector(level, -pu, 0.7 * cd + lr + 0.5, -0.1 * h),
                    _vector(level, 0.0, 0.15 * h, -1.0 * h), lr, **kw)
        # Transverse process.
        beta = np.deg2rad(s["transverse_angle_deg"])
        tl = s["transverse_length"]
        canvas.slab(p(pu, vc, 0.35 * h), _vector(level, side * tl * np.cos(beta), tl * np.sin(beta), 0.0),
                    _vector(level, 0.0, 0.0, -0.3 * h), s["transverse_radius"], **kw)
        # Articular processes: superior up towards the level above, inferior down behind the one below.
        ar = s["articular_radius"]
        canvas.slab(p(pu * 1.05, vc + 0.2 * cd, 0.2 * h), _vector(level, 0.0, 0.0, 0.8 * h + 0.45 * disc),
                    np.zeros(3), ar, **kw)
        canvas.slab(p(pu * 0.92, vc + 0.5 * cd + 3.0, -0.3 * h), _vector(level, 0.0, 1.0, -0.7 * h - 0.45 * disc),
                    np.zeros(3), 0.9 * ar, **kw)
    # Spinous process: a sagittal plate pointing back and down, tapering (root plate + thinner tip bar).
    alpha = np.deg2rad(s["spinous_angle_deg"])
    sl = s["spinous_length"]
    root = p(0.0, vc + cd + 0.5 * lr, 0.15 * h)
    direction = _vector(level, 0.0, np.cos(alpha), -np.sin(alpha))
    height = _vector(level, 0.0, 0.0, -s["spinous_height"])
    canvas.slab(root, direction * 0.6 * sl, height, 0.8 * lr, **kw)
    canvas.slab(root + direction * 0.5 * sl + 0.3 * height, direction * 0.5 * sl, 0.4 * height, 0.8 * lr, **kw)


def paint_discs(canvas: Canvas, levels: list[SpineLevel], disc_hu: float, bottom: SpineLevel | None) -> None:
    """Intervertebral discs between consecutive bodies (none between C1 and C2), soft material."""
    chain = [*levels, *([bottom] if bottom is not None else [])]
    for upper, lower in itertools.pairwise(chain):
        if upper.label == 1:
            continue
        top = upper.centre_mm - upper.frame[:, 2] * upper.half_height_mm
        base = lower.centre_mm + lower.frame[:, 2] * lower.half_height_mm
        axis = top - base
        gap = float(np.linalg.norm(axis))
        if gap < 0.5:
            continue
        superior = axis / gap
        posterior = upper.frame[:, 1] - (upper.frame[:, 1] @ superior) * superior
        posterior /= np.linalg.norm(posterior)
        frame = np.stack([np.cross(posterior, superior), posterior, superior], axis=1)
        half_width = 0.5 * (upper.half_width_mm + min(lower.half_width_mm, 1.2 * upper.half_width_mm))
        half_depth = 0.5 * (upper.half_depth_mm + min(lower.half_depth_mm, 1.2 * upper.half_depth_mm))
        canvas.elliptic_cylinder(0.5 * (top + base), frame, 0.98 * half_width, 0.96 * half_depth, 0.5 * gap + 2.0,
                                 posterior_flat=0.85, soft_hu=disc_hu)


def canal_centreline(levels: list[SpineLevel], scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canal centre points (n, 3) in mm, with their lateral axes (n, 3) and (half width, half depth) (n, 2)."""
    points, laterals, sizes = [], [], []
    for level in levels[1:]:  # from C2 down; C1's ring is open by construction
        s = element_sizes(level.label)
        points.append(level.centre_mm + level.frame[:, 1] * canal_offset_mm(level, s))
        laterals.append(level.frame[:, 0])
        sizes.append((s["canal_half_width"], s["canal_half_depth"]))
    points_a = np.asarray(points)
    # Extend one step above C2 (through C1) and below the last lumbar level (into the sacrum).
    top = points_a[0] + (points_a[0] - points_a[1]) * 1.5
    bottom = points_a[-1] + (points_a[-1] - points_a[-2]) * 1.2
    return (np.vstack([top, points_a, bottom]), np.vstack([laterals[0], laterals, laterals[-1]]),
            np.vstack([sizes[0], sizes, sizes[-1]]))


def paint_canal(canvas: Canvas, levels: list[SpineLevel], scale: float, csf_hu: float, cord_hu: float) -> None:
    """Carve the spinal canal through the bone (two parallel tubes: an oval section) and draw the cord."""
    points, laterals, sizes = canal_centreline(levels, scale)
    half_depth = float(np.median(sizes[:, 1])) * scale
    for side in (-1.0, 1.0):
        offset = laterals * (side * np.maximum(sizes[:, :1] * scale - half_depth, 0.0))
        canvas.carve(points + offset, half_depth, csf_hu)
    ranks = [anatomical_rank(level.label) for level in levels[1:]]
    cord_end = 1 + next((i for i, r in enumerate(ranks) if r >= 20.5), len(ranks) - 1)
    canvas.polyline(points[: cord_end + 1], 4.5 * scale, soft_hu=cord_hu)


@dataclass(frozen=True)
class SacralSegment:
    """One fused sacral segment: body centre, frame and half sizes in mm; ``ala`` = half width of the wings."""

    centre_mm: np.ndarray
    frame: np.ndarray
    half_width_mm: float
    half_depth_mm: float
    half_height_mm: float
    ala_mm: float


def sacral_segments(last: SpineLevel, rng: np.random.Generator) -> list[SacralSegment]:
    """S1-S5 below the last lumbar vertebra: tilted forward 30-45 deg at S1, curving anteriorly below."""
    lateral, posterior, superior = last.frame[:, 0], last.frame[:, 1], last.frame[:, 2]
    disc = max(last.spacing_mm * 0.3, 6.0)
    tilt = np.deg2rad(rng.uniform(28.0, 45.0))
    sup = np.cos(tilt) * superior - np.sin(tilt) * posterior
    a, b = last.half_width_mm, last.half_depth_mm
    shape = ((1.0, 0.95, 0.34, 1.0), (0.72, 0.7, 0.3, 0.86), (0.52, 0.5, 0.27, 0.62),
             (0.38, 0.38, 0.24, 0.38), (0.28, 0.28, 0.2, 0.22))
    segments = []
    top = last.centre_mm - superior * (last.half_height_mm + disc)
    ala_scale = rng.uniform(1.9, 2.2)
    for i, (fw, fd, fh, fa) in enumerate(shape):
        h = fh * last.spacing_mm * 0.5 * 1.8
        post = np.cross(sup, lateral)
        post /= np.linalg.norm(post)
        centre = top - sup * h
        frame = np.stack([lateral, post, sup], axis=1)
        segments.append(SacralSegment(centre, frame, a * fw, b * fd, h, a * fa * ala_scale))
        top = centre - sup * h
        bend = np.deg2rad(10.0 + 3.0 * i)  # sacral kyphosis: going down, turn anteriorly
        sup = np.cos(bend) * sup + np.sin(bend) * post
        sup /= np.linalg.norm(sup)
    return segments


def paint_sacrum(canvas: Canvas, segments: list[SacralSegment]) -> None:
    """Sacrum (label 26): one lofted solid through the segments (alae included), the S1 body on top,
    a sacral canal and the median crest."""
    first, lateral = segments[0], segments[0].frame[:, 0]
    top = (first.centre_mm + first.frame[:, 2] * 0.6 * first.half_height_mm
           + first.frame[:, 1] * 0.4 * first.half_depth_mm)
    points = [top]
    widths = [first.ala_mm]
    depths = [1.15 * first.half_depth_mm]
    for segment in segments:
        points.append(segment.centre_mm + segment.frame[:, 1] * 0.4 * segment.half_depth_mm
                      - segment.frame[:, 2] * segment.half_height_mm)
        widths.append(0.85 * segment.ala_mm)
        depths.append(1.1 * segment.half_depth_mm)
    canvas.loft(np.asarray(points), lateral, np.asarray(widths), np.asarray(depths), label=SACRUM,
                density=DENSITY_VERTEBRA)
    canvas.elliptic_cylinder(first.centre_mm, first.frame, first.half_width_mm, first.half_depth_mm,
                             first.half_height_mm * 1.1, rounding_mm=2.0, endplate_dip_mm=1.0, label=SACRUM,
                             density=DENSITY_VERTEBRA)
    for segment in segments[:3]:
        c, f = segment.centre_mm, segment.frame
        crest = c + f[:, 1] * (1.9 * segment.half_depth_mm + 3.0)
        canvas.slab(crest + f[:, 2] * segment.half_height_mm, -f[:, 2] * 2 * segment.half_height_mm, np.zeros(3),
                    3.0, label=SACRUM, density=DENSITY_VERTEBRA)
    canal = np.array([s.centre_mm + s.frame[:, 1] * (1.15 * s.half_depth_mm + 4.0) for s in segments[:4]])
    canvas.carve(canal, 5.0, 15.0)


def _ilium_surface(s1: SacralSegment, last: SpineLevel, side: float, habitus: float) -> np.ndarray:
    """Grid of points (rows top->bottom, columns posterior->anterior, 3) on one iliac bone's mid-surface.

    Top row: the iliac crest, an arc from the posterior superior iliac spine beside the
    sacroiliac joint, bulging laterally, to the anterior superior spine. Lower rows narrow
    towards the acetabulum, ~95 mm below S1 and ~90 mm lateral of the midline.
    """
    lateral, posterior, superior = last.frame[:, 0], last.frame[:, 1], last.frame[:, 2]
    c = s1.centre_mm
    h = habitus
    angles = np.linspace(0.0, 1.0, 9)
    # Crest arc in the axial plane (lateral, posterior) offsets in mm.
    crest_lat = 0.85 * s1.ala_mm + 8.0 + (115.0 * h - s1.ala_mm) * np.sin(angles * np.pi * 0.62)
    crest_post = 40.0 - 95.0 * h * angles**1.1
    acetabulum = np.array([92.0 * h, -(s1.half_depth_mm + 25.0), -95.0])
    rows = []
    for t in np.linspace(0.0, 1.0, 7):
        lat = (1 - t) * crest_lat + t * (acetabulum[0] + 10.0 * (angles - 0.5))
        post = (1 - t) * crest_post + t * (acetabulum[1] + 30.0 * (0.5 - angles))
        up = (1 - t) * (45.0 - 12.0 * np.sin(angles * np.pi)) + t * acetabulum[2]
        # The wing is concave medially (iliac fossa): push the middle rows laterally.
        lat = lat + 12.0 * np.sin(t * np.pi) * np.sin(angles * np.pi)
        rows.append(c + np.outer(side * lat, lateral) + np.outer(post, posterior) + np.outer(up, superior))
    return np.asarray(rows)


def paint_pelvis(canvas: Canvas, s1: SacralSegment, last: SpineLevel, habitus: float, muscle_hu: float) -> None:
    """Iliac bones (curved plates with a thick crest), acetabula, pubis, ischium and proximal femurs.

    Unlabelled bone; the iliac fossa and the buttock are lined with muscle first so the wing
    sits in soft tissue, not in the bowel.
    """
    lateral, posterior, superior = last.frame[:, 0], last.frame[:, 1], last.frame[:, 2]
    c = s1.centre_mm
    kw = {"label": 0, "density": DENSITY_PELVIS}
    h = habitus
    for side in (-1.0, 1.0):
        grid = _ilium_surface(s1, last, side, habitus)
        n_rows, n_cols = grid.shape[:2]
        for soft_pass in (True, False):
            for r in range(n_rows - 1):
                for q in range(n_cols - 1):
                    origin = grid[r, q]
                    e1 = grid[r, q + 1] - origin
                    e2 = grid[r + 1, q] - origin
                    if soft_pass:  # iliacus inside, gluteal muscles outside
                        canvas.slab(origin, e1, e2, 16.0, soft_hu=muscle_hu)
                    else:
                        thickness = 2.2 + 2.8 * (r == 0) + 1.5 * (r >= n_rows - 3) + 2.0 * (q == 0)
                        canvas.slab(origin, e1, e2, thickness, **kw)
        canvas.polyline(grid[0], 6.0, **kw)  # iliac crest
        joint = c + lateral * side * (0.85 * s1.ala_mm + 9.0) + posterior * (0.8 * s1.half_depth_mm)
        canvas.slab(joint + superior * 10.0, -superior * 45.0, posterior * 18.0, 6.0, **kw)  # sacroiliac part
        acetabulum = grid[-1, n_cols // 2]
        head = acetabulum + lateral * side * 8.0
        canvas.slab(head, np.zeros(3), np.zeros(3), 23.0 * h, **kw)
        neck = head + lateral * side * 45.0 - superior * 35.0
        canvas.slab(head, neck - head, np.zeros(3), 14.0 * h, **kw)
        canvas.slab(neck + lateral * side * 10.0, lateral * side * 8.0 - superior * 230.0, np.zeros(3), 14.0 * h,
                    label=0, density=DENSITY_CORTICAL_SHAFT)
        canvas.slab(neck + lateral * side * 12.0, np.zeros(3), np.zeros(3), 18.0 * h, **kw)  # greater trochanter
        pubis = c - posterior * (s1.half_depth_mm + 85.0 * h) - superior * 115.0 + lateral * side * 10.0
        canvas.slab(acetabulum - posterior * 15.0, pubis - acetabulum + posterior * 15.0, np.zeros(3), 8.0, **kw)
        canvas.slab(acetabulum + posterior * 10.0, -superior * 55.0 - lateral * side * 15.0 + posterior * 10.0,
                    np.zeros(3), 10.0, **kw)


def rib_count_end(index: int, n_thoracic: int, rng: np.random.Generator, label: int) -> float:
    """Angular end of a rib on the cage ellipse (0 = posterior, pi = sternum), by its thoracic index."""
    if label == 28:  # T13: stump rib
        return float(rng.uniform(0.12, 0.22)) * np.pi
    if index == n_thoracic:  # last rib: floating, short; sometimes only a stump
        if rng.random() < 0.15:
            return float(rng.uniform(0.12, 0.2)) * np.pi
        return float(rng.uniform(0.22, 0.42)) * np.pi
    if index == n_thoracic - 1:
        return float(rng.uniform(0.45, 0.6)) * np.pi
    if index <= 7:
        return 0.86 * np.pi
    return float(np.interp(index, [8, 10], [0.8, 0.72])) * np.pi


def paint_ribs(
    canvas: Canvas,
    levels: list[SpineLevel],
    plan: BodyPlan,
    scale: float,
    rng: np.random.Generator,
) -> None:
    """Ribs from each thoracic level (T13: stumps), costal cartilage and sternum (unlabelled)."""
    thoracic = [lv for lv in levels if 8 <= lv.label <= 19 or lv.label == 28]
    n = len(thoracic)
    front_points: list[tuple[float, np.ndarray]] = []
    for index, level in enumerate(thoracic, start=1):
        rank = np.array([anatomical_rank(level.label)])
        cy_off, half_ap, half_width = (float(v[0]) for v in plan.cage(rank))
        s = element_sizes(level.label, scale)
        theta_end = rib_count_end(index, n, rng, level.label)
        drop = (50.0 + 50.0 * min(index, 12) / 12.0) * scale
        p = _to_world(level)
        cx, cy = level.centre_mm[0], level.centre_mm[1] + cy_off
        radius = 3.0 if index > 1 else 3.4
        for side in (-1.0, 1.0):
            head = p(side * (level.half_width_mm * 0.85), 0.3 * level.half_depth_mm, 0.7 * level.half_height_mm)
            beta = np.deg2rad(s["transverse_angle_deg"])
            reach = s["canal_half_width"] + s["pedicle_radius"] + s["transverse_length"] * np.cos(beta)
            tip = p(side * reach, canal_offset_mm(level, s) + s["transverse_length"] * np.sin(beta) - 5.0,
                    0.2 * level.half_height_mm)
            cos0 = np.clip((tip[1] + 2.0 - cy) / half_ap, -1.0, 1.0)
            theta0 = float(np.arccos(cos0))
            if theta_end <= theta0 + 0.05:
                canvas.slab(head, tip - head, np.array([0.0, 0.0, -5.0]), radius, label=0, density=DENSITY_RIB)
                continue
            thetas = np.linspace(theta0, theta_end, 14)
            frac = (thetas - theta0) / (np.pi - theta0)
            arc = np.stack([cx + side * half_width * np.sin(thetas), cy + half_ap * np.cos(thetas),
                            tip[2] - drop * frac], axis=1)
            path = np.vstack([head, tip, arc])
            for a, b in itertools.pairwise(path):
                canvas.slab(a, b - a, np.array([0.0, 0.0, -6.0 * scale]), radius * scale, label=0, density=DENSITY_RIB)
            end = arc[-1]
            if index <= 10 and level.label != 28:
                sternum_edge = np.array([cx + side * 14.0, cy - half_ap + 4.0, end[2] - 8.0])
                canvas.polyline(np.array([end, sternum_edge]), 4.5 * scale, soft_hu=130.0)
                if index <= 7:
                    front_points.append((float(end[2]), sternum_edge))
    if front_points:
        _paint_sternum(canvas, levels, plan, scale)


def _paint_sternum(canvas: Canvas, levels: list[SpineLevel], plan: BodyPlan, scale: float) -> None:
    """Sternum: a plate in front of the rib cage from the T2-T3 disc (jugular notch) down to T9."""
    ranks = np.array([anatomical_rank(level.label) for level in levels])
    centres = np.array([level.centre_mm for level in levels])
    ends = []
    for rank in (9.5, 16.0):
        spine = np.array([np.interp(rank, ranks, centres[:, a]) for a in range(3)])
        cy_off, half_ap, _ = (float(v[0]) for v in plan.cage(np.array([rank])))
        ends.append(np.array([spine[0], spine[1] + cy_off - half_ap + 3.0, spine[2]]))
    top, bottom = ends
    canvas.slab(top - np.array([14.0, 0.0, 0.0]) * scale, bottom - top, np.array([28.0, 0.0, 0.0]) * scale,
                5.0 * scale, label=0, density=DENSITY_PELVIS)


def paint_skull(canvas: Canvas, c1: SpineLevel, habitus: float) -> None:
    """Skull base and occiput above C1, and the mandible in front of C2-C3 (unlabelled bone)."""
    lateral, posterior, superior = c1.frame[:, 0], c1.frame[:, 1], c1.frame[:, 2]
    c = c1.centre_mm
    kw = {"label": 0, "density": DENSITY_PELVIS}
    # Occiput: a curved plate behind and above the atlas, the foramen magnum left open.
    for i, angle in enumerate(np.linspace(0.15, 1.45, 7)):
        centre = c + superior * (22.0 + 60.0 * np.sin(angle) ** 2) + posterior * (25.0 + 45.0 * np.cos(angle) - 10)
        width = 55.0 * habitus * (0.6 + 0.4 * np.sin(angle + 0.3))
        canvas.slab(centre - lateral * width, lateral * 2 * width, superior * 14.0 - posterior * 6.0 * (i < 3), 3.5,
                    **kw)
    # Skull base (petrous / basiocciput) in front of the foramen magnum.
    canvas.slab(c + superior * 20.0 - posterior * 15.0 - lateral * 45.0, lateral * 90.0, -posterior * 30.0, 4.5, **kw)
    # Mandible: a U from the angles (beside C2) to the chin.
    angles = np.linspace(-1.3, 1.3, 11)
    body = np.array([c - superior * 25.0 - posterior * (20.0 + 65.0 * np.cos(t)) + lateral * 45.0 * np.sin(t)
                     for t in angles])
    canvas.polyline(body, 5.5, **kw)
    for side in (-1.0, 1.0):
        angle_pt = body[0 if side < 0 else -1]
        canvas.slab(angle_pt, superior * 45.0 + posterior * 8.0, np.zeros(3), 4.5, **kw)

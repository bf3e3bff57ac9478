"""Soft-tissue background of the synthetic phantoms: body outline, fat, muscle, lungs, viscera.

Everything here varies slowly in space, so it is computed on a coarse grid (a few mm) and
interpolated linearly onto the render grid. Sizes are distances from the vertebral body
centre of the spine level at that height, in mm, as functions of the *rank* (continuous
position along the spine: 1 = C1 ... 24 = L5, 26 = S1, see :func:`spine.labels.anatomical_rank`).
HU values: air -1000, lung ~ -850, fat ~ -100, muscle ~ 40-55, organs 40-65, blood 40 (or
contrast-enhanced 150-300).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BodyPlan", "Profile", "render_background", "upsample_linear"]


def _interp(rank: np.ndarray, knots: dict[float, float]) -> np.ndarray:
    xs = np.array(sorted(knots))
    return np.interp(rank, xs, np.array([knots[k] for k in xs]))


# Distances from the vertebral body centre (mm) of the muscle wall (inside the fat), by rank.
_POSTERIOR = {0: 70, 1: 60, 4: 50, 7: 58, 10: 64, 17: 66, 20: 72, 23: 82, 26: 88, 32: 88}
_ANTERIOR = {0: 110, 1: 95, 3: 70, 5: 58, 7: 60, 8: 95, 10: 125, 14: 140, 18: 145, 20: 135, 23: 120, 26: 120, 32: 115}
_HALF_WIDTH = {0: 75, 1: 70, 4: 55, 7: 68, 8: 115, 10: 135, 14: 132, 18: 132, 20: 122, 23: 128, 26: 145, 32: 158}
# Rib cage (thoracic levels): half width and anterior reach of the ribs' ellipse.
_CAGE_HALF_WIDTH = {7.5: 42, 8: 52, 9: 72, 10: 88, 12: 105, 15: 117, 18: 121, 20: 118}
_CAGE_ANTERIOR = {7.5: 40, 8: 48, 9: 75, 10: 100, 12: 122, 15: 133, 18: 138, 20: 135}
_CAGE_POSTERIOR_MM = 32.0
# Psoas and paraspinal block beside the lumbar bodies (half width added to the body's).
_PSOAS = {18: 0, 19.5: 8, 21: 22, 23: 38, 24: 44, 26: 55, 32: 60}


@dataclass(frozen=True)
class Profile:
    """Per-height description of the body along the spine (arrays over z, mm and HU)."""

    rank: np.ndarray
    spine_x: np.ndarray
    spine_y: np.ndarray
    body_half_width: np.ndarray  # vertebral body, mm
    body_half_depth: np.ndarray


@dataclass(frozen=True)
class BodyPlan:
    """Case-level body habitus and tissue HU (sampled once per case)."""

    habitus: float  # size factor of the outline, ~0.85-1.25
    fat_mm: float  # subcutaneous fat thickness
    wall_mm: float  # muscle wall thickness
    muscle_hu: float
    fat_hu: float
    lung_hu: float
    organ_hu: float
    blood_hu: float  # 40 native, 150-300 with contrast
    diaphragm_rank: float  # rank of the posterior diaphragm
    lung_apex_rank: float
    carina_rank: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> BodyPlan:
        contrast = rng.random() < 0.45
        return cls(
            habitus=float(rng.uniform(0.85, 1.2)),
            fat_mm=float(rng.gamma(2.5, 10.0) + 5.0),
            wall_mm=float(rng.uniform(8.0, 16.0)),
            muscle_hu=float(rng.normal(38.0, 6.0)),
            fat_hu=float(rng.normal(-100.0, 8.0)),
            lung_hu=float(rng.normal(-850.0, 25.0)),
            organ_hu=float(rng.normal(48.0, 6.0) + (60.0 if contrast else 0.0)),
            blood_hu=float(rng.uniform(150.0, 300.0) if contrast else rng.normal(42.0, 5.0)),
            diaphragm_rank=float(rng.uniform(17.5, 19.2)),
            lung_apex_rank=float(rng.uniform(5.8, 6.8)),
            carina_rank=float(rng.uniform(11.0, 12.5)),
        )

    def outline(self, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(posterior, anterior, half width) of the muscle wall in mm, by rank."""
        h = self.habitus
        return _interp(rank, _POSTERIOR) * (0.6 + 0.4 * h), _interp(rank, _ANTERIOR) * h, _interp(rank, _HALF_WIDTH) * h

    def cage(self, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rib-cage ellipse by rank: (centre y offset from the spine, half AP, half width), mm."""
        _, anterior, half_width = self.outline(rank)
        h = self.habitus
        front = np.minimum(_interp(rank, _CAGE_ANTERIOR) * h * 1.05, anterior - 6.0)
        width = np.minimum(_interp(rank, _CAGE_HALF_WIDTH) * h, half_width - 8.0)
        half_ap = 0.5 * (front + _CAGE_POSTERIOR_MM)
        return _CAGE_POSTERIOR_MM - half_ap, half_ap, width


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """0 below ``-width/2``, 1 above ``width/2``, linear in between: a soft threshold at 0."""
    return np.clip(x / width + 0.5, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation, correlation ``sigma`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, truncate=2.5)
    return field / max(float(field.std()), 1e-6)


def render_background(
    rng: np.random.Generator,
    plan: BodyPlan,
    profile: Profile,
    xs_mm: np.ndarray,
    ys_mm: np.ndarray,
) -> np.ndarray:
    """Soft-tissue HU on the coarse grid ``(len(profile.rank), len(ys), len(xs))``.

    ``profile`` holds one entry per coarse z; ``xs_mm``/``ys_mm`` are the coarse grid's world
    coordinates. Bone is not drawn here.
    """
    rank = profile.rank[:, None, None]
    dx = xs_mm[None, None, :] - profile.spine_x[:, None, None]
    dy = ys_mm[None, :, None] - profile.spine_y[:, None, None]
    posterior, anterior, half_width = (a[:, None, None] for a in plan.outline(profile.rank))
    fat = plan.fat_mm * _interp(profile.rank, {3: 0.5, 8: 0.8, 20: 1.2, 26: 1.3})[:, None, None]
    shape = (len(profile.rank), len(ys_mm), len(xs_mm))

    def ellipse(inflate: np.ndarray | float) -> np.ndarray:
        cy = 0.5 * (posterior - anterior)
        ay = 0.5 * (posterior + anterior) + inflate
        ax = half_width + inflate
        return ((dx / ax) ** 2 + ((dy - cy) / ay) ** 2).astype(np.float32)

    outer = ellipse(fat)
    inner = ellipse(0.0)
    cavity = ellipse(-plan.wall_mm) < 1.0
    texture = _smooth_noise(rng, shape, 1.5)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[outer < 1.0] = plan.fat_hu
    hu += np.where(outer < 1.0, 8.0 * texture, 0.0).astype(np.float32)
    muscle = inner < 1.0
    septa = _ramp(texture[muscle] - 1.6, 0.5)  # fat septa between muscles
    hu[muscle] = plan.muscle_hu + 6.0 * texture[muscle] + septa * (plan.fat_hu - plan.muscle_hu)

    block_w = profile.body_half_width[:, None, None] + _interp(profile.rank, _PSOAS)[:, None, None] + 6.0
    spine_block = (np.abs(dx) < block_w) & (dy > -profile.body_half_depth[:, None, None] - 6.0)
    posterior_cut = dy < np.where(rank < 19.5, 26.0, 0.0)
    viscera = cavity & ~spine_block & posterior_cut

    # Thorax: lungs inside the rib cage above the diaphragm, mediastinum and heart in between.
    cage_cy, cage_ay, cage_ax = (a[:, None, None] for a in plan.cage(profile.rank))
    in_cage = (dx / (cage_ax - 4.0)) ** 2 + ((dy - cage_cy) / (cage_ay - 4.0)) ** 2 < 1.0
    # Diaphragm: higher anteriorly (smaller rank) and on the right (x < spine).
    diaphragm = plan.diaphragm_rank - 2.0 * np.clip(-dy / 120.0, 0, 1.2) - 0.5 * (dx < 0)
    thorax = (rank > plan.lung_apex_rank) & (rank < diaphragm)
    heart_rank = 0.5 * (plan.carina_rank + plan.diaphragm_rank) + 1.0
    heart = (((dx - 25.0) / 60.0) ** 2 + ((dy + 0.55 * (anterior + 10.0)) / (0.32 * anterior)) ** 2
             + ((rank - heart_rank) / 3.2) ** 2) < 1.0
    mediastinum = (np.abs(dx - 5.0) < 28.0) & (dy < -profile.body_half_depth[:, None, None])
    lung = viscera & in_cage & thorax & ~heart & ~mediastinum
    soft_thorax = viscera & in_cage & thorax & ~lung
    mix = _ramp(texture[soft_thorax] - 0.8, 0.6)
    hu[soft_thorax] = plan.muscle_hu - 8.0 + mix * (plan.fat_hu - plan.muscle_hu + 8.0)
    hu[heart & viscera & thorax] = plan.blood_hu * 0.7 + plan.muscle_hu * 0.3
    vessels = _smooth_noise(rng, shape, 0.8)
    hu[lung] = plan.lung_hu + 25.0 * texture[lung] + _ramp(vessels[lung] - 2.0, 0.4) * (-100.0 - plan.lung_hu)

    # Abdomen and pelvis: organs and bowel in mesenteric fat, some gas.
    abdomen = viscera & (rank >= diaphragm - 0.5) & ~(in_cage & thorax)
    bowel = _smooth_noise(rng, shape, 2.5)
    gas = _smooth_noise(rng, shape, 1.2)
    content = plan.organ_hu - 15.0 + 12.0 * texture[abdomen]
    loops = _ramp(bowel[abdomen] - 0.45, 0.35)
    hu[abdomen] = plan.fat_hu + loops * (content - plan.fat_hu)
    below_diaphragm = np.broadcast_to(rank > 19.5, shape)[abdomen]
    air = _ramp(gas[abdomen] - 2.1, 0.35) * loops * below_diaphragm
    hu[abdomen] += air * (-950.0 - hu[abdomen])
    liver = abdomen & (dx < 10.0) & ((((dx + 70.0) / 95.0) ** 2 + ((dy + 50.0) / 90.0) ** 2
                                       + ((rank - plan.diaphragm_rank - 1.0) / 2.6) ** 2) < 1.0)
    hu[liver] = plan.organ_hu + 5.0 * texture[liver]
    kidney_rank = plan.diaphragm_rank + 2.5
    for side, shift in ((-1.0, 0.6), (1.0, 0.0)):
        kidney = abdomen & ((((dx - side * 62.0) / 26.0) ** 2 + ((dy + 5.0) / 32.0) ** 2
                             + ((rank - kidney_rank - shift) / 1.6) ** 2) < 1.0)
        hu[kidney] = plan.organ_hu - 10.0 + 0.5 * (plan.blood_hu - 42.0)

    # Great vessels: aorta left-anterior of the spine, trachea in the neck and upper chest.
    bd = profile.body_half_depth[:, None, None]
    aorta = (((dx - 18.0) ** 2 + (dy + bd + 14.0) ** 2) < 12.0**2) & (rank > plan.carina_rank - 2.0) & (rank < 23.5)
    hu[aorta & cavity] = plan.blood_hu
    trachea = (((dx**2 + (dy + bd + 22.0) ** 2) < 9.0**2) & (rank > 3.5) & (rank < plan.carina_rank))
    hu[trachea] = -990.0
    return hu


def upsample_linear(coarse: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of ``coarse`` at fractional indices per axis (clamped at the edges)."""
    out = coarse
    for axis, pos in enumerate(positions):
        pos = np.clip(pos, 0.0, coarse.shape[axis] - 1.0)
        low = np.floor(pos).astype(np.intp)
        high = np.minimum(low + 1, coarse.shape[axis] - 1)
        weight = (pos - low).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = len(pos)
        weight = weight.reshape(shape)
        a = np.take(out, low, axis=axis)
        b = np.take(out, high, axis=axis)
        a += weight * (b - a)
        out = a
    return out

"""Analytic vertebra phantoms with known body heights and trabecular HU (tests of :mod:`algorithm.measure`).

A straight spine tilted by ``tilt_deg`` in the sagittal plane; each vertebra a body (elliptic cylinder, semi-axes
22 mm lateral and 16 mm antero-posterior, height 26 mm, a 1.5 mm cortex at 700 HU around trabecular bone of its
own HU, a basivertebral vein of 40 HU at the posterior wall's middle) and an arch (pedicles, lamina, spinous and
transverse processes, 500 HU) around a canal. Chosen bodies are compressed: ``("wedge", f)`` the anterior wall's
height lowered by ``f`` (linear in ``a``), ``("biconcave", f)`` both endplates dished (depth ~ (1 - rho^2)^2), the
centre's height lowered by ``f``, ``("crush", f)`` the whole height lowered by ``f``. The truth heights are the
phantom's where the measurement takes them (:func:`algorithm.measure.inset_mm` inside the walls on the
mid-sagittal plane, and midway).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from algorithm.measure import Heights, inset_mm

HEIGHT_MM = 26.0
SEMI_L_MM, SEMI_A_MM = 22.0, 16.0
STEP_MM = 36.0
CORTEX_MM = 1.5
DEFAULT_LEVELS = (18, 19, 20, 21, 22, 23, 24)
DEFAULT_SHAPES: dict[int, tuple[str, float]] = {19: ("wedge", 0.40), 21: ("biconcave", 0.38), 23: ("crush", 0.5)}
DEFAULT_HU = {18: 220.0, 19: 120.0, 20: 180.0, 21: 95.0, 22: 150.0, 23: 70.0, 24: 260.0}


def _surfaces(lat: np.ndarray, a: np.ndarray, shape: tuple[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(bottom, top) of the body, mm along the axis, at lateral ``lat`` and anterior ``a`` (body frame)."""
    half = HEIGHT_MM / 2
    bottom, top = np.full(np.shape(lat), -half), np.full(np.shape(lat), half)
    if shape is None:
        return bottom, top
    kind, f = shape
    if kind == "wedge":
        return bottom, bottom + HEIGHT_MM * (1 - f * (np.asarray(a) + SEMI_A_MM) / (2 * SEMI_A_MM))
    if kind == "biconcave":
        rho2 = (np.asarray(lat) / SEMI_L_MM) ** 2 + (np.asarray(a) / SEMI_A_MM) ** 2
        dish = f * half * np.clip(1 - rho2, 0, None) ** 2  # the rim keeps its height, as in a real biconcave loss
        return bottom + dish, top - dish
    if kind == "crush":
        return bottom * (1 - f), top * (1 - f)
    raise ValueError(kind)


def true_heights(shape: tuple[str, float] | None, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Heights:
    """The phantom's heights where :mod:`algorithm.measure` measures them on voxels ``spacing_mm`` (walls at
    a = +-16 mm on l = 0)."""
    values = []
    inset = inset_mm(spacing_mm)
    for a in (SEMI_A_MM - inset, 0.0, -SEMI_A_MM + inset):
        bottom, top = _surfaces(np.array(0.0), np.array(a), shape)
        values.append(float(top - bottom))
    return Heights(*values)


@dataclass
class Phantom:
    ct: sitk.Image
    labels: sitk.Image
    centres_mm: dict[int, np.ndarray]
    hu: dict[int, float]
    shapes: dict[int, tuple[str, float]]


def build(spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0), *, tilt_deg: float = 10.0,
          levels: tuple[int, ...] = DEFAULT_LEVELS, shapes: Mapping[int, tuple[str, float]] | None = None,
          hu: Mapping[int, float] | None = None, noise_hu: float = 15.0, seed: int = 0) -> Phantom:
    """The phantom on an LPS grid of ``spacing_mm`` (x, y, z); labels take the value at each voxel's centre."""
    shapes = dict(DEFAULT_SHAPES if shapes is None else shapes)
    hu = dict(DEFAULT_HU if hu is None else hu)
    theta = np.deg2rad(tilt_deg)
    u = np.array([0.0, np.sin(theta), np.cos(theta)])
    a_dir = np.array([0.0, -np.cos(theta), np.sin(theta)])
    l_dir = np.cross(u, a_dir)
    n = len(levels)
    centres = {label: (((n - 1) / 2 - i) * STEP_MM) * u for i, label in enumerate(levels)}
    reach = np.array([60.0, 75.0, (n - 1) / 2 * STEP_MM * np.cos(theta) + 35.0])
    low = -reach
    low[1] = -45.0
    size = np.floor((reach - low) / np.asarray(spacing_mm)).astype(int) + 1
    axes = [low[d] + np.arange(size[d]) * spacing_mm[d] for d in range(3)]
    ct = np.full((size[2], size[1], size[0]), 40.0)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for label in levels:
        # only the slices this vertebra (and its disc) can reach
        near = np.abs(axes[2] - centres[label][2]) <= STEP_MM / 2 + 60.0 * np.sin(theta) + 2.0
        rows = np.flatnonzero(near)
        z, y, x = np.meshgrid(axes[2][rows], axes[1], axes[0], indexing="ij")
        rel = np.stack([x, y, z], axis=-1) - centres[label]
        lat, a, w = rel @ l_dir, rel @ a_dir, rel @ u
        shape = shapes.get(label)
        bottom, top = _surfaces(lat, a, shape)
        ellipse = (lat / SEMI_L_MM) ** 2 + (a / SEMI_A_MM) ** 2
        body = (ellipse <= 1) & (w >= bottom) & (w <= top)
        inner_ellipse = (lat / (SEMI_L_MM - CORTEX_MM)) ** 2 + (a / (SEMI_A_MM - CORTEX_MM)) ** 2
        trabecular = body & (inner_ellipse <= 1) & (w >= bottom + CORTEX_MM) & (w <= top - CORTEX_MM)
        vein = trabecular & (a <= -SEMI_A_MM + 7) & (np.abs(lat) <= 3) & (np.abs(w - (top + bottom) / 2) <= 3)
        pedicles = ((np.abs(np.abs(lat) - 13) ** 2 + (w - 3) ** 2) <= 4.5 ** 2) & (a >= -26) & (a <= -14)
        lamina = (a >= -34) & (a <= -26) & (np.abs(lat) <= 17.5) & (np.abs(w - 2) <= 5)
        spinous = (a >= -58) & (a <= -34) & (np.abs(lat) <= 3) & (np.abs(w) <= 8)
        transverse = (np.abs(lat) >= 17) & (np.abs(lat) <= 38) & (a >= -28) & (a <= -22) & (np.abs(w - 4) <= 3)
        arch = (pedicles | lamina | spinous | transverse) & ~body
        disc = (ellipse <= 1) & (w > top) & (w < STEP_MM - HEIGHT_MM / 2)
        block, block_labels = ct[rows[0]:rows[-1] + 1], labels[rows[0]:rows[-1] + 1]
        block[disc & (block_labels == 0)] = 80.0
        block[body] = 700.0
        block[trabecular] = hu[label]
        block[vein] = 40.0
        block[arch] = 500.0
        block_labels[body | arch] = label
    ct += rng.normal(0.0, noise_hu, ct.shape) if noise_hu else 0.0
    ct_image = sitk.GetImageFromArray(np.round(ct).astype(np.int16))
    label_image = sitk.GetImageFromArray(labels)
    for image in (ct_image, label_image):
        image.SetSpacing(tuple(float(s) for s in spacing_mm))
        image.SetOrigin(tuple(float(v) for v in low))
    return Phantom(ct_image, label_image, centres, hu, shapes)

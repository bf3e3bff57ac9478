"""QC picture of one case, like VerSe's snapshots: sagittal and coronal slabs with coloured labels.

Both views are maximum-intensity projections of a thin slab that follows the spine (its
centre, per axial level, interpolated between the labelled centroids), so a curved spine
stays in view. Each vertebra's label is drawn over the CT in its colour, with its name
beside its centroid. Views are in the usual display conventions: superior up; sagittal with
anterior on the left; coronal with the patient's right on the left.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from spine.image import Geometry, axis_aligned_geometry, resample_onto
from spine.labels import MAX_LABEL
from spine.preprocess import AIR_HU

__all__ = ["QCResult", "QCVertebra", "label_colours", "render_qc", "slab_mip"]


class QCVertebra(Protocol):
    """What the picture needs of a labelled vertebra (``algorithm.pipeline.Vertebra`` has it)."""

    @property
    def label(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def position_mm(self) -> tuple[float, float, float]: ...


class QCResult(Protocol):
    """What the picture needs of a case's result (``algorithm.pipeline.CaseResult`` has it): qc sits
    below the pipeline and does not import it."""

    @property
    def labels(self) -> sitk.Image: ...
    @property
    def vertebrae(self) -> Sequence[QCVertebra]: ...
    @property
    def note(self) -> str: ...

WINDOW_HU = (-400.0, 1400.0)
"""Display window: soft tissue dark grey, bone bright."""
SLAB_HALF_MM = 10.0
"""Half thickness of the CT slab projected in each view."""
LABEL_SLAB_HALF_MM = 15.0
"""Half thickness of the label slab (a little wider: the whole vertebra shows its colour)."""
MARGIN_MM = 60.0
"""Shown around the vertebrae in the in-plane directions."""
MAX_PIXELS = 640
"""Longest side of a view, in display voxels."""


def label_colours() -> np.ndarray:
    """``(MAX_LABEL + 1, 3)`` RGB in [0, 1]; label 0 black. Hues step by the golden ratio so that
    neighbouring vertebrae always differ clearly."""
    colours = np.zeros((MAX_LABEL + 1, 3))
    for label in range(1, MAX_LABEL + 1):
        hue = (label * 0.6180339887) % 1.0
        colours[label] = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return colours


def slab_mip(volume: np.ndarray, centre: np.ndarray, half: int, axis: int) -> np.ndarray:
    """Per-row maximum over a slab that follows the spine.

    ``volume`` is ``(z, y, x)``; ``axis`` 2 projects along x (a sagittal view ``(z, y)``), 1 along y
    (a coronal view ``(z, x)``). ``centre[z]`` is the slab centre index on that axis for row ``z``.
    """
    if axis not in (1, 2):
        raise ValueError(f"axis must be 1 (coronal) or 2 (sagittal), got {axis}")
    size = volume.shape[axis]
    rows = []
    for z in range(volume.shape[0]):
        c = round(float(centre[z]))
        lo, hi = max(c - half, 0), min(c + half + 1, size)
        if hi <= lo:
            lo, hi = max(min(c, size - 1), 0), max(min(c, size - 1), 0) + 1
        plane = volume[z, :, lo:hi] if axis == 2 else volume[z, lo:hi, :]
        rows.append(plane.max(axis=axis - 1))
    return np.stack(rows)


def _display_grid(geometry: Geometry, points_mm: np.ndarray) -> Geometry:
    """Identity-direction display grid: the whole scan in z; in x and y the vertebrae plus a margin."""
    full = axis_aligned_geometry(geometry, geometry.spacing_mm)
    low = np.asarray(full.origin_mm)
    high = low + (np.asarray(full.size) - 1) * np.asarray(full.spacing_mm)
    if len(points_mm):
        low[:2] = np.maximum(low[:2], points_mm[:, :2].min(axis=0) - MARGIN_MM)
        high[:2] = np.minimum(high[:2], points_mm[:, :2].max(axis=0) + MARGIN_MM)
    extent = np.maximum(high - low, 1.0)
    spacing = max(min(geometry.spacing_mm), float(extent.max()) / MAX_PIXELS, 0.5)
    size = np.floor(extent / spacing).astype(int) + 1
    return Geometry(tuple(int(s) for s in size), (spacing,) * 3, tuple(float(v) for v in low),  # type: ignore[arg-type]
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _slab_centres(grid: Geometry, points_mm: np.ndarray, axis_world: int) -> np.ndarray:
    """Slab centre index (along world axis 0 = x or 1 = y) for each z row of ``grid``."""
    z_mm = grid.origin_mm[2] + np.arange(grid.size[2]) * grid.spacing_mm[2]
    if len(points_mm) == 0:
        return np.full(len(z_mm), (grid.size[axis_world] - 1) / 2.0)
    order = np.argsort(points_mm[:, 2])
    along = np.interp(z_mm, points_mm[order, 2], points_mm[order, axis_world])
    return (along - grid.origin_mm[axis_world]) / grid.spacing_mm[axis_world]


def _views(image: sitk.Image, labels: sitk.Image, points_mm: np.ndarray) -> tuple[Geometry, list[np.ndarray]]:
    grid = _display_grid(Geometry.of(image), points_mm)
    ct = sitk.GetArrayFromImage(sitk.Resample(image, list(grid.size), sitk.Transform(), sitk.sitkLinear,
                                              grid.origin_mm, grid.spacing_mm, grid.direction, AIR_HU,
                                              sitk.sitkFloat32))
    lab = sitk.GetArrayFromImage(resample_onto(labels, grid, nearest=True, default=0))
    s = grid.spacing_mm[0]
    half, label_half = max(round(SLAB_HALF_MM / s), 0), max(round(LABEL_SLAB_HALF_MM / s), 0)
    cx, cy = _slab_centres(grid, points_mm, 0), _slab_centres(grid, points_mm, 1)
    views = [slab_mip(ct, cx, half, axis=2), slab_mip(lab, cx, label_half, axis=2),
             slab_mip(ct, cy, half, axis=1), slab_mip(lab, cy, label_half, axis=1)]
    return grid, views


def _overlay(ct: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB picture: windowed CT in grey, labels blended in their colours."""
    low, high = WINDOW_HU
    grey = np.clip((ct - low) / (high - low), 0.0, 1.0)[..., None].repeat(3, axis=-1)
    mask = labels > 0
    rgb = grey.copy()
    rgb[mask] = (1 - alpha) * grey[mask] + alpha * colours[np.minimum(labels[mask], MAX_LABEL)]
    return rgb


def render_qc(image: sitk.Image, result: QCResult, *, title: str = "", dpi: int = 110,
              notes: Mapping[int, str] | None = None) -> bytes:
    """PNG bytes of the QC picture of ``result`` on its CT ``image``; ``notes``: {label: text} shown after the
    label's name (the measurements' grade and HU)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    points = np.array([v.position_mm for v in result.vertebrae], dtype=np.float64).reshape(-1, 3)
    grid, (sag_ct, sag_lab, cor_ct, cor_lab) = _views(image, result.labels, points)
    colours = label_colours()
    s = grid.spacing_mm[0]
    z0 = grid.origin_mm[2]
    extent_z = (z0 - s / 2, z0 + (grid.size[2] - 0.5) * s)
    panels = [
        ("sagittal", _overlay(sag_ct, sag_lab, colours), grid.origin_mm[1], grid.size[1], 1, "A", "P"),
        ("coronal", _overlay(cor_ct, cor_lab, colours), grid.origin_mm[0], grid.size[0], 0, "R", "L"),
    ]
    widths = [size for _, _, _, size, _, _, _ in panels]
    height_in, panel_height_in = 9.0, 7.9  # the rest holds the titles
    width_in = min(max(0.6 + panel_height_in * sum(widths) / max(grid.size[2], 1), 6.0), 20.0)
    figure, axes = plt.subplots(1, 2, figsize=(width_in, height_in), facecolor="black",
                                gridspec_kw={"width_ratios": widths, "wspace": 0.04})
    for axis, (name, rgb, origin, size, world_axis, left, right) in zip(axes, panels, strict=True):
        extent = (origin - s / 2, origin + (size - 0.5) * s, *extent_z)
        axis.imshow(rgb, origin="lower", extent=extent, interpolation="bilinear")
        axis.set_facecolor("black")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
        axis.set_title(f"{name}  ({left} \u2190 \u2192 {right})", color="white", fontsize=10)
        _draw_names(axis, result, world_axis, colours, extent, notes or {})
    headline = title or "case"
    if result.vertebrae:
        names = ", ".join(v.name for v in result.vertebrae)
        subtitle = f"{len(result.vertebrae)} vertebrae: {names}"
    else:
        subtitle = f"no vertebra labelled: {result.note}"
    figure.suptitle(f"{headline}\n{subtitle}", color="white", fontsize=11)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=0.89)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="black")
    plt.close(figure)
    return buffer.getvalue()


def _draw_names(axis: object, result: QCResult, world_axis: int, colours: np.ndarray,
                extent: Sequence[float], notes: Mapping[int, str]) -> None:
    """Each vertebra's name in a box of its colour, on the left of its centroid, with a tick to it."""
    span = extent[1] - extent[0]
    for vertebra in result.vertebrae:
        u, z = vertebra.position_mm[world_axis], vertebra.position_mm[2]
        text_u = max(u - 0.22 * span, extent[0] + 0.06 * span)
        colour = colours[vertebra.label]
        axis.plot([text_u, u], [z, z], color=colour, linewidth=0.8, alpha=0.9)  # type: ignore[attr-defined]
        axis.plot([u], [z], marker="o", markersize=3, color="white")  # type: ignore[attr-defined]
        name, x, align = vertebra.name, text_u, "right"
        if vertebra.label in notes:  # two lines from the panel's left edge: a long note would leave the panel
            name, x, align = f"{vertebra.name}\n{notes[vertebra.label]}", extent[0] + 0.01 * span, "left"
        axis.text(x, z, name, color="black", fontsize=8, fontweight="bold",  # type: ignore[attr-defined]
                  ha=align, va="center", bbox={"boxstyle": "round,pad=0.2", "facecolor": colour,
                                               "edgecolor": "none", "alpha": 0.9})

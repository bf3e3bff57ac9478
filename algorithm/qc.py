"""QC picture of one case, like VerSe's snapshots: sagittal and coronal slabs with coloured labels.

Both views are maximum-intensity projections of a thin slab that follows the spine (its
centre, per axial level, interpolated between the labelled centroids), so a curved spine
stays in view. Each vertebra's label is drawn over the CT in its colour, with its name
beside its centroid. Views are in the usual display conventions: superior up; sagittal with
anterior on the left; coronal with the patient's right on the left.

What a reader must see at a glance:

- **which levels to check**: a vertebra whose point probability is under :data:`UNCERTAIN_BELOW`
  gets its name with a ``?`` in a dashed white frame and a red cross on its centroid (a
  confident one: a solid box and a white dot); the legend under the views says so, and the
  subtitle lists them with their confidence;
- **every name**: on a crowded spine (a whole spine in a short picture, a small cervical
  spine in a long scan) names are pushed apart along the view's height so that no two boxes
  overlap, each with a leader line to its centroid (:func:`spread_labels`);
- **the whole subtitle**: the labels are written as runs (``C1-L5``) and wrapped to the
  picture's width, with room made for as many lines as that takes.
"""

from __future__ import annotations

import colorsys
import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from spine.image import Geometry, axis_aligned_geometry, resample_onto
from spine.labels import MAX_LABEL, anatomical_rank
from spine.preprocess import AIR_HU

__all__ = ["UNCERTAIN_BELOW", "QCResult", "QCVertebra", "label_colours", "label_runs", "qc_figure", "render_qc",
           "slab_mip", "spread_labels"]


class QCVertebra(Protocol):
    """What the picture needs of a labelled vertebra (``algorithm.pipeline.Vertebra`` has it)."""

    @property
    def label(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def position_mm(self) -> tuple[float, float, float]: ...
    @property
    def confidence(self) -> float: ...


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
UNCERTAIN_BELOW = 0.8
"""Point probability under which a vertebra is marked for checking (the same threshold as the case's log line,
:data:`algorithm.pipeline.UNCERTAIN_BELOW`): the decoder gives a labelling it is sure of >= 0.95, a fragment is
capped at 0.5 and a doubtful case at 0.3."""
NAME_FONT_PT = 8.0
NAME_BOX_PT = NAME_FONT_PT * 1.9
"""Height a name's box takes on the page, with its padding and a little air (points)."""


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


_RUN_STEPS = {*((v, v + 1) for v in range(1, 24)), (19, 28), (28, 20), (24, 25)}
"""Steps that continue a run of labels: the next level (C1..L5), and T12 -> T13 -> L1, L5 -> L6. An 11-thoracic
spine's T11 -> L1 starts a new run, so that a run never hides a level that is not there."""


def label_runs(labels: Sequence[int]) -> str:
    """Labels as runs of consecutive levels: ``[1..24]`` -> ``"C1-L5"``, ``[18, 19, 20, 22]`` -> ``"T11-L1, L3"``,
    ``[19, 28, 20]`` -> ``"T12-L1"`` (:data:`_RUN_STEPS`)."""
    from spine.labels import name_of

    runs: list[list[int]] = []
    for label in sorted({int(v) for v in labels}, key=anatomical_rank):
        if runs and (runs[-1][-1], label) in _RUN_STEPS:
            runs[-1].append(label)
        else:
            runs.append([label])
    return ", ".join(name_of(r[0]) if len(r) == 1 else f"{name_of(r[0])}-{name_of(r[-1])}" for r in runs)


def spread_labels(z_mm: Sequence[float], gap_mm: float, low_mm: float, high_mm: float) -> np.ndarray:
    """Heights for name boxes at centroid heights ``z_mm`` (any order) so that neighbours are at least ``gap_mm``
    apart and all lie in ``[low_mm, high_mm]`` (when they fit), each as near its centroid as that allows.

    Head to foot (decreasing z) each box goes to ``min(z_i, previous - gap)``; boxes pushed below ``low_mm``
    are then lifted from the bottom, ``max(t_i, next + gap)``, and clipped to ``high_mm`` at the top. The
    order of the boxes is the order of the centroids, so leader lines never cross.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    order = np.argsort(-z, kind="stable")
    placed = np.empty(len(z))
    previous = np.inf
    for i in order:
        placed[i] = min(z[i], high_mm, previous - gap_mm)
        previous = placed[i]
    following = -np.inf
    for i in order[::-1]:
        placed[i] = max(placed[i], low_mm, following + gap_mm)
        following = placed[i]
    return placed


def render_qc(image: sitk.Image, result: QCResult, *, title: str = "", dpi: int = 110,
              notes: Mapping[int, str] | None = None) -> bytes:
    """PNG bytes of the QC picture of ``result`` on its CT ``image``; ``notes``: {label: text} shown under the
    label's name (the measurements' grade and HU)."""
    from matplotlib import pyplot as plt

    figure = qc_figure(image, result, title=title, dpi=dpi, notes=notes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="black")
    plt.close(figure)
    return buffer.getvalue()


def _subtitle(result: QCResult) -> tuple[str, list[str]]:
    """The subtitle (what was labelled, what to check) and the names to check."""
    if not result.vertebrae:
        return f"no vertebra labelled: {result.note}", []
    doubtful = [v for v in result.vertebrae if v.confidence < UNCERTAIN_BELOW]
    text = f"{len(result.vertebrae)} vertebrae: {label_runs([v.label for v in result.vertebrae])}"
    if doubtful:
        text += "; check " + ", ".join(f"{v.name} ({v.confidence:.2f})" for v in doubtful)
    return text, [v.name for v in doubtful]


def qc_figure(image: sitk.Image, result: QCResult, *, title: str = "", dpi: int = 110,
              notes: Mapping[int, str] | None = None) -> object:
    """The QC picture as a matplotlib figure (:func:`render_qc` saves it); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

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
    panel_height_in = 7.9
    width_in = min(max(0.6 + panel_height_in * sum(widths) / max(grid.size[2], 1), 6.0), 20.0)
    subtitle, _ = _subtitle(result)
    # ~0.6 em per character at 10 pt: wrap the subtitle to the picture's width, one line of room per line
    chars = max(int(width_in * 72 / (10 * 0.6)), 30)
    lines = [textwrap.fill(title or "case", chars), *textwrap.wrap(subtitle, chars)]
    head_in, foot_in = 0.45 + 0.22 * len(lines), 0.35
    height_in = panel_height_in + head_in + foot_in
    figure, axes = plt.subplots(1, 2, figsize=(width_in, height_in), facecolor="black", dpi=dpi,
                                gridspec_kw={"width_ratios": widths, "wspace": 0.04})
    figure.subplots_adjust(left=0.02, right=0.98, bottom=foot_in / height_in, top=1.0 - head_in / height_in)
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
    figure.suptitle("\n".join(lines), color="white", fontsize=10, y=1.0 - 0.08 / height_in, va="top")
    handles = [Line2D([], [], marker="o", color="white", linestyle="none", markersize=4,
                      label="labelled"),
               Line2D([], [], marker="x", color="red", linestyle="none", markersize=6, markeredgewidth=2,
                      label=f"NAME? in a dashed frame: check it (confidence under {UNCERTAIN_BELOW:g})")]
    figure.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=8, labelcolor="white",
                  bbox_to_anchor=(0.5, 0.0))
    return figure


def _draw_names(axis: object, result: QCResult, world_axis: int, colours: np.ndarray,
                extent: Sequence[float], notes: Mapping[int, str] | None = None) -> None:
    """Each vertebra's name in a box of its colour, on the left of its centroid, with a leader line to it; names
    pushed apart where they would overlap (:func:`spread_labels`); uncertain ones framed, with a ``?`` and a red
    cross on the centroid; a note (``notes``) on a second line, the box then starting at the panel's left edge
    (a long note would leave the panel)."""
    notes = notes or {}
    if not result.vertebrae:
        return
    span = extent[1] - extent[0]
    height_px = axis.get_window_extent().height  # type: ignore[attr-defined]
    mm_per_point = (extent[3] - extent[2]) / max(height_px * 72.0 / axis.figure.dpi, 1.0)  # type: ignore[attr-defined]
    gap = NAME_BOX_PT * mm_per_point * (2 if notes else 1)  # a box with a note holds two lines
    heights = spread_labels([v.position_mm[2] for v in result.vertebrae], gap, extent[2] + gap / 2,
                            extent[3] - gap / 2)
    for vertebra, text_z in zip(result.vertebrae, heights, strict=True):
        u, z = vertebra.position_mm[world_axis], vertebra.position_mm[2]
        text_u = max(u - 0.22 * span, extent[0] + 0.06 * span)
        colour = colours[vertebra.label]
        doubtful = vertebra.confidence < UNCERTAIN_BELOW
        start_u = extent[0] + 0.01 * span if vertebra.label in notes else text_u  # a noted box starts at the edge
        axis.plot([start_u, u], [text_z, z], color=colour, linewidth=0.8, alpha=0.9)  # type: ignore[attr-defined]
        if doubtful:
            axis.plot([u], [z], marker="x", markersize=7, markeredgewidth=2, color="red")  # type: ignore[attr-defined]
        else:
            axis.plot([u], [z], marker="o", markersize=3, color="white")  # type: ignore[attr-defined]
        box = {"boxstyle": "round,pad=0.2", "facecolor": colour, "alpha": 0.9,
               **({"edgecolor": "white", "linestyle": "--", "linewidth": 1.5} if doubtful else {"edgecolor": "none"})}
        name, x, align = vertebra.name + ("?" if doubtful else ""), text_u, "right"
        if vertebra.label in notes:  # the leader line runs under the box from its left end
            name, x, align = f"{name}\n{notes[vertebra.label]}", start_u, "left"
        axis.text(x, text_z, name, color="black",  # type: ignore[attr-defined]
                  fontsize=NAME_FONT_PT, fontweight="bold", ha=align, va="center", bbox=box, gid="vertebra-name")

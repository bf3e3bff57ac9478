"""Training data for the three stages: per-stage preprocessing cache and patch sampling.

Preprocessing is exactly the inference one (:mod:`spine.preprocess`): a case's CT goes
through :func:`~spine.preprocess.to_model_grid` at the stage spacing, then
:meth:`~spine.modelmeta.Intensity.apply`; patches come from
:func:`~spine.preprocess.crop_patch` (padding with ``Intensity.background``, the value of
air) and heatmaps from :func:`~spine.preprocess.gaussian_heatmap`. All arrays are
``(z, y, x)`` on the identity-direction model grid.

Per stage a case becomes one :class:`StageVolume` (network input, optional label map or
target, centroids in array coordinates), cached as ``.npy`` files so that each case is
resampled once; training memory-maps them.

Targets:

- detect: the spine (any vertebra label 1-28) smoothed with a Gaussian of ``DETECT_SMOOTH_MM``
  at the CT's own resolution, resampled to the stage grid and thresholded at 0.25, so a
  vertebra thinner than one 8 mm voxel still shows; without a mask, a tube of radius
  ``DETECT_TUBE_MM`` along the centroid polyline.
- locate: one Gaussian per vertebral-body centroid (sigma ``heatmap_sigma_mm``) in the
  channel of its label (``LOCATE_CHANNELS`` order); the default network learns them as one
  class-agnostic centre heatmap and a per-voxel label classification (see :data:`LOCATE_NOTES`).
- segment: the mask of one vertebra in a patch centred near its centroid; the second
  input channel is a Gaussian at the (jittered) centroid estimate.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spine.case import Case
from spine.image import Geometry
from spine.labels import LOCATE_CHANNELS, MAX_LABEL, name_of
from spine.modelmeta import Intensity, ModelMeta
from spine.preprocess import crop_patch, gaussian_heatmap, to_model_grid, world_to_zyx

__all__ = [
    "DETECT_SMOOTH_MM",
    "DETECT_TUBE_MM",
    "STAGE_DEFAULTS",
    "Augmentation",
    "CaseSource",
    "PatchSampler",
    "StageDefaults",
    "StageVolume",
    "default_meta",
    "load_or_prepare",
    "locate_target",
    "prepare_volume",
    "segment_inputs",
]

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Bump when what is cached changes; old cache entries are then recomputed."""

DETECT_SMOOTH_MM = 4.0
DETECT_TUBE_MM = 20.0


LOCATE_NOTES = (
    "targets: one Gaussian (sigma 5 mm) per vertebral-body centroid in its label's channel; output channel c = "
    "sigmoid(centre logit) * exp(label logit c - max label logit): the channel maximum is the probability that a "
    "vertebral-body centre is at the voxel, the ratios between channels are label likelihood ratios (softmax over "
    "the 26 labels divided by its maximum); patch 288x144x144 mm; 3 mm instead of 2 mm because the default model "
    "is trained on 2 shared CPU cores"
)


@dataclass(frozen=True)
class StageDefaults:
    """Default geometry of a stage; everything here ends up in the ModelMeta."""

    spacing_zyx_mm: tuple[float, float, float]
    patch_shape_zyx: tuple[int, int, int]
    input_channels: tuple[str, ...]
    channels: tuple[str, ...]
    heatmap_sigma_mm: float
    crop_margin_mm: float | None
    """Cache only the box around the spine plus this margin (None: whole volume)."""
    notes: str


STAGE_DEFAULTS: dict[str, StageDefaults] = {
    "detect": StageDefaults(
        spacing_zyx_mm=(8.0, 8.0, 8.0),
        patch_shape_zyx=(64, 48, 48),
        input_channels=("ct",),
        channels=("spine",),
        heatmap_sigma_mm=0.0,
        crop_margin_mm=None,
        notes="coarse spine probability (any vertebra 1-28, smoothed 4 mm, >0.25) at 8 mm; "
              "threshold 0.5 and take the bounding box; patch 512x384x384 mm",
    ),
    "locate": StageDefaults(
        spacing_zyx_mm=(3.0, 3.0, 3.0),
        patch_shape_zyx=(96, 48, 48),
        input_channels=("ct",),
        channels=tuple(name_of(label) for label in LOCATE_CHANNELS),
        heatmap_sigma_mm=5.0,
        crop_margin_mm=None,
        notes=LOCATE_NOTES,
    ),
    "segment": StageDefaults(
        spacing_zyx_mm=(1.5, 1.5, 1.5),
        patch_shape_zyx=(48, 80, 64),
        input_channels=("ct", "heatmap"),
        channels=("vertebra",),
        heatmap_sigma_mm=8.0,
        crop_margin_mm=72.0,
        notes="binary mask of the vertebra whose centroid is the heatmap's centre (posterior elements "
              "included); patch centred on the centroid (crop_patch convention: centroid at index shape/2), "
              "72 mm (z) x 120 mm (y, anterior-posterior) x 96 mm (x) at 1.5 mm",
    ),
}


def default_meta(
    stage: str,
    *,
    spacing_zyx_mm: Sequence[float] | None = None,
    patch_shape_zyx: Sequence[int] | None = None,
    heatmap_sigma_mm: float | None = None,
    intensity: Intensity | None = None,
    trained_on: str = "",
    notes: str | None = None,
) -> ModelMeta:
    """The ModelMeta of a stage from :data:`STAGE_DEFAULTS`, with overrides (e.g. tiny patches in tests)."""
    if stage not in STAGE_DEFAULTS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {tuple(STAGE_DEFAULTS)}")
    d = STAGE_DEFAULTS[stage]
    return ModelMeta(
        stage=stage,
        spacing_zyx_mm=tuple(float(s) for s in (spacing_zyx_mm or d.spacing_zyx_mm)),  # type: ignore[arg-type]
        patch_shape_zyx=tuple(int(s) for s in (patch_shape_zyx or d.patch_shape_zyx)),  # type: ignore[arg-type]
        input_channels=d.input_channels,
        channels=d.channels,
        intensity=intensity or Intensity(),
        output="probability",
        heatmap_sigma_mm=float(d.heatmap_sigma_mm if heatmap_sigma_mm is None else heatmap_sigma_mm),
        trained_on=trained_on,
        notes=d.notes if notes is None else notes,
    )


# ----------------------------------------------------------------------------- volumes


@dataclass
class StageVolume:
    """One case on a stage's model grid.

    - ``image``: network input ``(z, y, x)`` float32 (``Intensity.apply`` of the resampled CT);
    - ``labels``: VerSe ids ``(z, y, x)`` uint8 (segment stage), else None;
    - ``target``: detect target ``(z, y, x)`` uint8 in {0, 1} (detect stage), else None;
    - ``centroids_zyx``: {VerSe id: continuous array coordinates (3,)} of every centroid;
    - ``grid``: the (possibly cropped) model grid the arrays live on.
    """

    case_id: str
    image: np.ndarray
    grid: Geometry
    centroids_zyx: dict[int, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    target: np.ndarray | None = None

    @property
    def spacing_zyx_mm(self) -> np.ndarray:
        return np.asarray(self.grid.spacing_mm[::-1], dtype=np.float64)


def _spine_binary(mask: sitk.Image) -> sitk.Image:
    """Float32 image: 1 where the mask holds any vertebra label 1..28."""
    binary = sitk.BinaryThreshold(mask, 1, MAX_LABEL, 1, 0)
    return sitk.Cast(binary, sitk.sitkFloat32)


def _tube_target(centroids_zyx: dict[int, np.ndarray], shape: Sequence[int], spacing_zyx: np.ndarray,
                 radius_mm: float) -> np.ndarray:
    """Binary tube of ``radius_mm`` around the polyline through the centroids (anatomical order)."""
    from scipy.spatial import cKDTree

    from spine.labels import anatomical_rank

    target = np.zeros(tuple(shape), dtype=np.uint8)
    if not centroids_zyx:
        return target
    ordered = [centroids_zyx[label] * spacing_zyx for label in sorted(centroids_zyx, key=anatomical_rank)]
    points = [ordered[0]]
    for a, b in itertools.pairwise(ordered):
        steps = max(int(np.linalg.norm(b - a) / 2.0), 1)
        points.extend(a + (b - a) * t for t in np.linspace(0, 1, steps + 1)[1:])
    tree = cKDTree(np.asarray(points))
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing_zyx, strict=True)],
                                indexing="ij"), axis=-1).reshape(-1, 3)
    distance, _ = tree.query(grid, distance_upper_bound=radius_mm + 1.0)
    return (distance <= radius_mm).reshape(tuple(shape)).astype(np.uint8)


def _crop_box(volume: StageVolume, margin_mm: float) -> StageVolume:
    """Crop a volume to the bounding box of its labels and centroids plus ``margin_mm``."""
    spacing = volume.spacing_zyx_mm
    points = [c for c in volume.centroids_zyx.values()]
    if volume.labels is not None and volume.labels.any():
        nz = np.nonzero(volume.labels)
        points += [np.array([n.min() for n in nz], float), np.array([n.max() for n in nz], float)]
    if not points:
        return volume
    pts = np.asarray(points)
    margin = margin_mm / spacing
    shape = np.asarray(volume.image.shape)
    low = np.clip(np.floor(pts.min(axis=0) - margin).astype(int), 0, shape)
    high = np.clip(np.ceil(pts.max(axis=0) + margin).astype(int) + 1, 0, shape)
    if np.any(high <= low):
        return volume
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    start_xyz = low[::-1].astype(np.float64)
    origin = volume.grid.index_to_world(start_xyz)
    grid = Geometry(
        size=(int(high[2] - low[2]), int(high[1] - low[1]), int(high[0] - low[0])),
        spacing_mm=volume.grid.spacing_mm,
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=volume.grid.direction,
    )
    return StageVolume(
        case_id=volume.case_id,
        image=np.ascontiguousarray(volume.image[box]),
        grid=grid,
        centroids_zyx={label: c - low for label, c in volume.centroids_zyx.items()},
        labels=None if volume.labels is None else np.ascontiguousarray(volume.labels[box]),
        target=None if volume.target is None else np.ascontiguousarray(volume.target[box]),
    )


def prepare_volume(case: Case, meta: ModelMeta, *, crop_margin_mm: float | None = None) -> StageVolume:
    """Bring one case onto ``meta``'s model grid (the inference preprocessing) with its stage target."""
    hu, grid = to_model_grid(case.ct, meta.spacing_zyx_mm)
    image = meta.intensity.apply(hu)
    centroids = {int(label): world_to_zyx(grid, np.asarray(point, dtype=np.float64))
                 for label, point in case.centroids_mm.items()}
    labels = target = None
    if meta.stage == "segment":
        if case.mask is None:
            raise ValueError(f"{case.case_id}: the segment stage needs a vertebra mask")
        labels = to_model_grid(case.mask, meta.spacing_zyx_mm, nearest=True, default=0)[0].astype(np.uint8)
    elif meta.stage == "detect":
        if case.mask is not None:
            spine = sitk.SmoothingRecursiveGaussian(_spine_binary(case.mask), DETECT_SMOOTH_MM)
            smooth, _ = to_model_grid(spine, meta.spacing_zyx_mm, default=0.0)
            target = (smooth > 0.25).astype(np.uint8)
        else:
            target = _tube_target(centroids, image.shape, np.asarray(meta.spacing_zyx_mm), DETECT_TUBE_MM)
    volume = StageVolume(case.case_id, image.astype(np.float32), grid, centroids, labels, target)
    if crop_margin_mm is not None:
        volume = _crop_box(volume, crop_margin_mm)
    return volume


# ----------------------------------------------------------------------------- cache


def _geometry_json(grid: Geometry) -> dict[str, list[float] | list[int]]:
    return {"size": list(grid.size), "spacing_mm": list(grid.spacing_mm), "origin_mm": list(grid.origin_mm),
            "direction": list(grid.direction)}


@dataclass(frozen=True)
class CaseSource:
    """A case not read yet: its id, the file it comes from (the cache key, with its mtime) and a reader."""

    case_id: str
    source: str
    read: Callable[[], Case]


def _cache_key(case_id: str, source: str, meta: ModelMeta, crop_margin_mm: float | None) -> str:
    try:
        stamp = os.stat(source).st_mtime_ns if source and Path(source).exists() else 0
    except OSError:
        stamp = 0
    payload = json.dumps([PREPROCESS_VERSION, meta.stage, meta.spacing_zyx_mm, meta.intensity.__dict__,
                          crop_margin_mm, case_id, source, stamp, DETECT_SMOOTH_MM, DETECT_TUBE_MM])
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def load_or_prepare(case: Case | CaseSource, meta: ModelMeta, cache_dir: str | os.PathLike[str] | None, *,
                    crop_margin_mm: float | None = None) -> StageVolume:
    """:func:`prepare_volume`, cached under ``cache_dir/<stage>/<case>-<key>/`` (memory-mapped on reuse).

    A :class:`CaseSource` is read only when its cache entry is missing.
    """
    if cache_dir is None:
        return prepare_volume(case.read() if isinstance(case, CaseSource) else case, meta,
                              crop_margin_mm=crop_margin_mm)
    key = _cache_key(case.case_id, str(case.source), meta, crop_margin_mm)
    folder = Path(cache_dir) / meta.stage / f"{case.case_id}-{key}"
    info_path = folder / "volume.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        g = info["grid"]
        grid = Geometry(tuple(g["size"]), tuple(g["spacing_mm"]), tuple(g["origin_mm"]), tuple(g["direction"]))
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") if (folder / f"{name}.npy").exists() else None
                  for name in ("image", "labels", "target")}
        return StageVolume(
            case_id=info["case_id"], image=arrays["image"], grid=grid,
            centroids_zyx={int(k): np.asarray(v, dtype=np.float64) for k, v in info["centroids_zyx"].items()},
            labels=arrays["labels"], target=arrays["target"],
        )
    source = str(case.source)
    if isinstance(case, CaseSource):
        case = case.read()
    volume = prepare_volume(case, meta, crop_margin_mm=crop_margin_mm)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "image.npy", volume.image)
    if volume.labels is not None:
        np.save(tmp / "labels.npy", volume.labels)
    if volume.target is not None:
        np.save(tmp / "target.npy", volume.target)
    info = {"case_id": volume.case_id, "source": source, "grid": _geometry_json(volume.grid),
            "centroids_zyx": {str(k): [float(x) for x in v] for k, v in volume.centroids_zyx.items()}}
    (tmp / "volume.json").write_text(json.dumps(info), encoding="utf-8")
    if folder.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return volume


# ----------------------------------------------------------------------------- targets


def locate_target(centroids_zyx: dict[int, np.ndarray], start_zyx: Sequence[int], shape_zyx: Sequence[int],
                  sigma_mm: float, spacing_zyx_mm: Sequence[float]) -> np.ndarray:
    """26-channel heatmaps ``(len(LOCATE_CHANNELS), z, y, x)`` for a patch at ``start_zyx``.

    Channel ``i`` holds a Gaussian (peak 1, sigma in mm) at the centroid of label
    ``LOCATE_CHANNELS[i]`` when that label is present, zeros otherwise.
    """
    target = np.zeros((len(LOCATE_CHANNELS), *shape_zyx), dtype=np.float32)
    reach = 4.0 * sigma_mm / np.asarray(spacing_zyx_mm)
    for channel, label in enumerate(LOCATE_CHANNELS):
        if label not in centroids_zyx:
            continue
        local = np.asarray(centroids_zyx[label]) - np.asarray(start_zyx)
        if np.any(local < -reach) or np.any(local > np.asarray(shape_zyx) - 1 + reach):
            continue
        target[channel] = gaussian_heatmap(shape_zyx, local, sigma_mm, spacing_zyx_mm)
    return target


def segment_inputs(image: np.ndarray, estimate_zyx: Sequence[float], meta: ModelMeta,
                   patch_centre_zyx: Sequence[float] | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Two-channel segment input ``(2, z, y, x)``: CT patch and the Gaussian at ``estimate_zyx``.

    The patch is centred on ``patch_centre_zyx`` (default: the estimate itself, the inference
    convention); returns the input and the patch's start corner.
    """
    centre = estimate_zyx if patch_centre_zyx is None else patch_centre_zyx
    patch, start = crop_patch(image, centre, meta.patch_shape_zyx, pad_value=meta.intensity.background)
    heat = gaussian_heatmap(meta.patch_shape_zyx, np.asarray(estimate_zyx, dtype=np.float64) - np.asarray(start),
                            meta.heatmap_sigma_mm, meta.spacing_zyx_mm)
    return np.stack([patch.astype(np.float32), heat]), start


# ----------------------------------------------------------------------------- sampling


VIEW_CUTS: dict[str, tuple[int, int, float, tuple[float, float]]] = {
    "posterior": (1, +1, 0.5, (12.0, 45.0)),  # through the canal, the laminae or the spinous process
    "left": (2, +1, 0.1, (15.0, 45.0)),  # LPS +x
    "right": (2, -1, 0.1, (15.0, 45.0)),
    "superior": (0, +1, 0.15, (4.0, 20.0)),  # the top slice through the body or the disc above it
    "inferior": (0, -1, 0.15, (4.0, 20.0)),
}
"""Where :attr:`Augmentation.view_cut_p` may end the view, by side: ``(array axis, direction along it, weight,
(nearest, farthest) distance of the plane from the vertebra's centre in mm)``. Never in front of the body: no
reconstruction centred on the patient cuts it there."""


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to training patches (never superior/inferior flips: labels are ordered).

    Intensity changes act on the CT channel in network units (1.0 = 1000 HU with the default
    intensity mapping).
    """

    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05
    noise_std: float = 0.03
    flip_lr: float = 0.5
    centroid_jitter_mm: float = 3.0
    """Segment: standard deviation of the error of the centroid estimate."""
    off_centre_mm: float = 8.0
    """Segment: with probability ``off_centre_p``, the patch centre moves this far (uniform) from the estimate."""
    off_centre_p: float = 0.3
    spatial_p: float = 0.6
    """Locate, segment: probability of a random similarity transform of the patch (and of its centroids,
    labels and heatmap)."""
    rotate_deg: float | tuple[float, float, float] = 12.0
    """Locate, segment: largest rotation about each axis (real spines are tilted, scoliotic, lordotic); three
    values: about the z, y and x array axes (x: left-right, so its angle tilts the spine in the sagittal plane,
    as lordosis does: 30-45 degrees at the lumbosacral junction)."""
    zoom: tuple[float, float] = (0.85, 1.2)
    """Locate, segment: range of the isotropic zoom (body and patient size), times +-5 % per axis."""
    sacrum_p: float = 0.0
    """Segment: probability of a negative sample, the heatmap on the sacrum's top (S1) and an empty target:
    a seed there should outline nothing, or S1 passes for a sixth lumbar vertebra (:mod:`algorithm.recentre`).
    Off by default: a 400-iteration fine-tune with 0.1 removed the false L6 on the bundled example but moved
    other outlines enough to flip an unseen lumbar CT's labels (issue 8's note); worth a longer run."""
    appearance_p: float = 0.5
    """Locate, segment: probability of each appearance change: bone contrast (osteoporotic to dense),
    blur or sharpening (reconstruction kernel), thick-slice simulation (2-5 mm slices)."""
    thick_axes: tuple[float, float, float] = (1.0, 0.0, 0.0)
    """Locate, segment: which array axis (z, y, x) a thick-slice simulation thickens, as relative weights: axial
    protocols thicken z; sagittal lumbar scans (VerSe's 1 x 1 x 2-3 mm) thicken x, coronal ones y."""
    thick_factor: tuple[float, float] = (1.3, 2.0)
    """Locate, segment: range of a simulated slice's thickness in model-grid voxels (segment's 1.5 mm grid: 2-3 mm
    slices; 5 mm slices need 3.3)."""
    coarse_p: float = 0.0
    """Locate, segment: probability of a coarse in-plane grid: y and x averaged over the same number of model-grid
    voxels (:attr:`coarse_factor`) and sampled back, z over a thick slice's (:attr:`thick_factor`). Radiotherapy
    head-and-neck CTs have 3.5-5.4 mm pixels; the training CTs have 0.7-1.5 mm, with the example's 3 mm the
    coarsest. Off by default; drawn after the other appearance changes, so runs without it draw as before."""
    coarse_factor: tuple[float, float] = (2.3, 3.6)
    """Locate, segment: range of a coarse pixel's width in model-grid voxels (segment's 1.5 mm grid: 3.5-5.4 mm)."""
    view_cut_p: float = 0.0
    """Segment: probability that the scan's field of view ends inside the patch (:data:`VIEW_CUTS`): beyond a
    plane through the vertebra the CT is the model grid's padding (air) and the target empty. Cardiac and
    aortic reconstructions cut the posterior elements; a model that only saw whole vertebrae outlines nothing
    at a thoracic body with air straight behind its canal. Off by default."""
    view_cut_sides: tuple[str, ...] = tuple(VIEW_CUTS)
    """Segment: the sides (:data:`VIEW_CUTS` keys) a view cut is drawn from, with their weights."""

    @classmethod
    def none(cls) -> Augmentation:
        return cls(scale=(1.0, 1.0), shift=0.0, noise_std=0.0, flip_lr=0.0, centroid_jitter_mm=0.0,
                   off_centre_mm=0.0, off_centre_p=0.0, spatial_p=0.0, sacrum_p=0.0, appearance_p=0.0)


def coarsen(ct: np.ndarray, factors_zyx: Sequence[float]) -> np.ndarray:
    """``ct`` as a scanner with coarser voxels would have recorded it, on the same grid: along each axis whose
    factor f exceeds 1, the mean over round(f) voxels (a thick slice or a wide pixel), sampled at 1/f of the
    voxels (linear), then interpolated back to ``ct``'s shape (linear)."""
    factors = np.asarray(factors_zyx, dtype=np.float64)
    out = ct
    for axis, factor in enumerate(factors):
        if factor > 1.0:
            out = ndimage.uniform_filter1d(out, max(round(factor), 1), axis=axis)
    out = ndimage.zoom(out, np.where(factors > 1.0, 1.0 / factors, 1.0), order=1)
    return ndimage.zoom(out, np.asarray(ct.shape, dtype=np.float64) / np.asarray(out.shape), order=1)


def cut_view(x: np.ndarray, y: np.ndarray, centre_zyx: Sequence[float], spacing_zyx_mm: Sequence[float],
             axis: int, side: int, distance_mm: float, background: float) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (C, *patch) and ``y`` (C', *patch) with the view ended ``distance_mm`` from ``centre_zyx`` (voxel
    coordinates of the patch) on ``side`` (+1: increasing index) of ``axis``: there ``x[0]`` (the CT) is
    ``background`` and ``y`` is 0; other input channels (the seed's heatmap) are kept."""
    x, y = np.array(x, copy=True), np.array(y, copy=True)
    index = np.arange(x.shape[1 + axis], dtype=np.float64)
    beyond = side * (index - float(centre_zyx[axis])) * float(spacing_zyx_mm[axis]) > distance_mm
    where = [slice(None)] * 3
    where[axis] = beyond
    x[0][tuple(where)] = background
    for channel in y:
        channel[tuple(where)] = 0
    return x, y


class PatchSampler:
    """Draws training batches ``(x, y)`` of one stage from cached volumes.

    ``x``: ``(batch, len(input_channels), *patch)`` float32; ``y``: ``(batch, len(channels), *patch)``
    float32 in [0, 1]. All randomness comes from ``rng`` so a seed (and its saved state) makes
    a run reproducible.
    """

    def __init__(self, volumes: Sequence[StageVolume], meta: ModelMeta, rng: np.random.Generator,
                 augmentation: Augmentation | None = None):
        if not volumes:
            raise ValueError("no training volumes")
        self.volumes = list(volumes)
        self.meta = meta
        self.rng = rng
        self.augmentation = augmentation or Augmentation()
        self.shape = tuple(meta.patch_shape_zyx)
        self.spacing = np.asarray(meta.spacing_zyx_mm, dtype=np.float64)
        if meta.stage == "segment":
            self._vertebrae = [(i, label) for i, v in enumerate(self.volumes) for label in sorted(v.centroids_zyx)
                               if v.labels is not None and label <= MAX_LABEL and label not in (26, 27)]
            if not self._vertebrae:
                raise ValueError("no vertebra with a centroid in the training volumes")
            self._sacra = [(i, top) for i, v in enumerate(self.volumes) if v.labels is not None
                           and len(top := sacrum_top(v.labels, self.spacing)) > 0]
        elif meta.stage == "locate" and not any(v.centroids_zyx for v in self.volumes):
            raise ValueError("no centroids in the training volumes")

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(batch_size):
            x, y = getattr(self, f"_sample_{self.meta.stage}")()
            x, y = self._augment(x, y)
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)

    # Each stage's sampler returns x (C_in, *patch) and y (C_out, *patch).

    def _random_centre(self, volume: StageVolume) -> np.ndarray:
        """Uniform patch centre such that the patch overlaps the volume (centred if smaller)."""
        shape = np.asarray(volume.image.shape, dtype=np.float64)
        patch = np.asarray(self.shape, dtype=np.float64)
        low = np.minimum(patch / 2.0, shape / 2.0)
        high = np.maximum(shape - patch / 2.0, shape / 2.0)
        return self.rng.uniform(low, high)

    def _sample_detect(self) -> tuple[np.ndarray, np.ndarray]:
        volume = self.volumes[int(self.rng.integers(len(self.volumes)))]
        centre = self._random_centre(volume)
        x, _ = crop_patch(volume.image, centre, self.shape, pad_value=self.meta.intensity.background)
        if volume.target is None:
            raise ValueError(f"{volume.case_id}: detect volume without target")
        y, _ = crop_patch(volume.target, centre, self.shape, pad_value=0)
        return x[None], y[None].astype(np.float32)

    def _sample_locate(self) -> tuple[np.ndarray, np.ndarray]:
        volume = self.volumes[int(self.rng.integers(len(self.volumes)))]
        while not volume.centroids_zyx:
            volume = self.volumes[int(self.rng.integers(len(self.volumes)))]
        if self.rng.random() < 0.2:
            centre = self._random_centre(volume)
        else:
            labels = sorted(volume.centroids_zyx)
            anchor = volume.centroids_zyx[labels[int(self.rng.integers(len(labels)))]]
            centre = anchor + self.rng.uniform(-0.3, 0.3, 3) * np.asarray(self.shape)
        aug = self.augmentation
        if aug.spatial_p > 0 and self.rng.random() < aug.spatial_p:
            x, centroids = self._similarity_patch(volume, centre)
            y = locate_target(centroids, (0, 0, 0), self.shape, self.meta.heatmap_sigma_mm, self.spacing)
        else:
            x, start = crop_patch(volume.image, centre, self.shape, pad_value=self.meta.intensity.background)
            y = locate_target(volume.centroids_zyx, start, self.shape, self.meta.heatmap_sigma_mm, self.spacing)
        if aug.appearance_p > 0:
            x = self._appearance(x)
        return x[None], y

    def _similarity(self, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A random rotation and zoom about ``centre``: ``(matrix, offset, c_out)`` such that output voxel
        ``o`` of the patch samples the volume at ``matrix @ o + offset = centre + matrix (o - c_out)``
        (voxel units of the possibly anisotropic model grid); a volume point ``p`` lands at
        ``c_out + matrix^-1 (p - centre)``."""
        aug = self.augmentation
        limit = np.broadcast_to(np.asarray(aug.rotate_deg, dtype=np.float64), (3,))
        angles = np.deg2rad(self.rng.uniform(-limit, limit))
        rotation = np.eye(3)
        for axis, angle in enumerate(angles):
            c, s = np.cos(angle), np.sin(angle)
            i, j = [a for a in range(3) if a != axis]
            r = np.eye(3)
            r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
            rotation = rotation @ r
        zoom = self.rng.uniform(*aug.zoom) * self.rng.uniform(0.95, 1.05, 3)
        # mm -> mm map from output to input (zoom > 1 magnifies: output mm cover fewer input mm).
        to_input_mm = rotation @ np.diag(1.0 / zoom)
        matrix = np.diag(1.0 / self.spacing) @ to_input_mm @ np.diag(self.spacing)
        c_out = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return matrix, np.asarray(centre, dtype=np.float64) - matrix @ c_out, c_out

    def _warp(self, array: np.ndarray, matrix: np.ndarray, offset: np.ndarray, *, labels: bool = False) -> np.ndarray:
        """``array`` resampled through the similarity (linear for CT, nearest for labels)."""
        if labels:
            return ndimage.affine_transform(array, matrix, offset=offset, output_shape=self.shape, order=0,
                                            mode="constant", cval=0)
        return ndimage.affine_transform(array.astype(np.float32, copy=False), matrix, offset=offset,
                                        output_shape=self.shape, order=1, mode="constant",
                                        cval=float(self.meta.intensity.background))

    def _similarity_patch(self, volume: StageVolume, centre: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The CT patch around ``centre`` seen through a random rotation and zoom (:meth:`_similarity`),
        and the centroids moved with it."""
        matrix, offset, c_out = self._similarity(centre)
        inverse = np.linalg.inv(matrix)
        centroids = {label: c_out + inverse @ (np.asarray(p, dtype=np.float64) - np.asarray(centre))
                     for label, p in volume.centroids_zyx.items()}
        return self._warp(volume.image, matrix, offset), centroids

    def _appearance(self, ct: np.ndarray) -> np.ndarray:
        """Scanner and patient appearance on a CT patch in network units (1.0 = 1000 HU)."""
        aug = self.augmentation
        ct = np.array(ct, dtype=np.float32, copy=True)
        if self.rng.random() < aug.appearance_p:
            # Bone contrast: trabecular bone of old patients sits near 100 HU, of young ones above 250.
            knee = np.float32((100.0 - self.meta.intensity.center) / self.meta.intensity.scale)
            above = ct > knee
            ct[above] = knee + (ct[above] - knee) * np.float32(self.rng.uniform(0.6, 1.5))
        if self.rng.random() < aug.appearance_p:
            sigma = self.rng.uniform(0.3, 1.0, 3) * np.asarray([self.rng.uniform(1, 2), 1, 1])
            blurred = ndimage.gaussian_filter(ct, sigma)
            sharpen = self.rng.random() < 0.3  # a sharp kernel: unsharp masking; else a smooth one
            ct = ct + np.float32(self.rng.uniform(0.3, 1.0)) * (ct - blurred) if sharpen else blurred
        if self.rng.random() < aug.appearance_p * 0.5:
            # Thick slices: average along one axis, then sample back (partial volume between bodies and discs, or
            # across the laminae of a sagittal scan).
            weights = np.asarray(aug.thick_axes, dtype=np.float64)
            axis = int(self.rng.choice(3, p=weights / weights.sum())) if np.count_nonzero(weights) > 1 else int(
                np.argmax(weights))
            factors = np.ones(3)
            factors[axis] = self.rng.uniform(*aug.thick_factor)
            ct = coarsen(ct, factors)
        if aug.coarse_p > 0 and self.rng.random() < aug.coarse_p:
            pixel = self.rng.uniform(*aug.coarse_factor)
            ct = coarsen(ct, np.array([self.rng.uniform(*aug.thick_factor), pixel, pixel]))
        return ct.astype(np.float32, copy=False)

    def _sample_segment(self) -> tuple[np.ndarray, np.ndarray]:
        aug = self.augmentation
        if self._sacra and aug.sacrum_p > 0 and self.rng.random() < aug.sacrum_p:
            index, top = self._sacra[int(self.rng.integers(len(self._sacra)))]
            estimate = top[int(self.rng.integers(len(top)))].astype(np.float64)
            x, _ = segment_inputs(self.volumes[index].image, estimate, self.meta, estimate)
            return x, np.zeros((1, *self.shape), dtype=np.float32)
        index, label = self._vertebrae[int(self.rng.integers(len(self._vertebrae)))]
        volume = self.volumes[index]
        estimate = volume.centroids_zyx[label] + self.rng.normal(0.0, aug.centroid_jitter_mm, 3) / self.spacing
        centre = estimate
        if aug.off_centre_p > 0 and self.rng.random() < aug.off_centre_p:
            centre = estimate + self.rng.uniform(-aug.off_centre_mm, aug.off_centre_mm, 3) / self.spacing
        if volume.labels is None:
            raise ValueError(f"{volume.case_id}: segment volume without labels")
        if aug.spatial_p > 0 and self.rng.random() < aug.spatial_p:
            matrix, offset, c_out = self._similarity(centre)
            moved = c_out + np.linalg.inv(matrix) @ (np.asarray(estimate) - np.asarray(centre))
            heat = gaussian_heatmap(self.shape, moved, self.meta.heatmap_sigma_mm, self.spacing).astype(np.float32)
            x = np.stack([self._warp(volume.image, matrix, offset), heat])
            labels = self._warp(volume.labels, matrix, offset, labels=True)
            true_centre = c_out + np.linalg.inv(matrix) @ (volume.centroids_zyx[label] - np.asarray(centre))
        else:
            x, start = segment_inputs(volume.image, estimate, self.meta, centre)
            labels, _ = crop_patch(volume.labels, centre, self.shape, pad_value=0)
            true_centre = volume.centroids_zyx[label] - np.asarray(start, dtype=np.float64)
        if aug.appearance_p > 0:
            x = np.stack([self._appearance(x[0]), x[1]])
        y = (labels == label)[None].astype(np.float32)
        if aug.view_cut_p > 0 and self.rng.random() < aug.view_cut_p:
            weights = np.asarray([VIEW_CUTS[name][2] for name in aug.view_cut_sides])
            name = aug.view_cut_sides[int(self.rng.choice(len(weights), p=weights / weights.sum()))]
            axis, side, _, (near, far) = VIEW_CUTS[name]
            x, y = cut_view(x, y, true_centre, self.spacing, axis, side, float(self.rng.uniform(near, far)),
                            float(self.meta.intensity.background))
        return x, y

    def _augment(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        aug = self.augmentation
        x = np.array(x, dtype=np.float32, copy=True)
        ct = x[0]
        lo, hi = aug.scale
        if hi > lo:
            ct *= np.float32(self.rng.uniform(lo, hi))
        if aug.shift > 0:
            ct += np.float32(self.rng.uniform(-aug.shift, aug.shift))
        if aug.noise_std > 0:
            ct += self.rng.normal(0.0, self.rng.uniform(0, aug.noise_std), ct.shape).astype(np.float32)
        if aug.flip_lr > 0 and self.rng.random() < aug.flip_lr:
            x = np.ascontiguousarray(x[..., ::-1])
            y = np.ascontiguousarray(y[..., ::-1])
        return x, y


def sacrum_top(labels: np.ndarray, spacing_zyx_mm: np.ndarray, *, depth_mm: float = 30.0,
               samples: int = 64) -> np.ndarray:
    """Up to ``samples`` voxel indices ``(M, 3)`` of the sacrum (VerSe id 26) within ``depth_mm`` of its top
    (the largest z index: model grids are LPS, +z superior): where S1's body lies. Empty without a sacrum."""
    voxels = np.argwhere(labels == 26)
    if len(voxels) == 0:
        return voxels
    top = voxels[voxels[:, 0] >= voxels[:, 0].max() - depth_mm / float(spacing_zyx_mm[0])]
    step = max(len(top) // samples, 1)
    return top[::step][:samples]


def volumes_for(cases: Iterable[Case | CaseSource], meta: ModelMeta, cache_dir: str | os.PathLike[str] | None,
                *, crop_margin_mm: float | None = None) -> list[StageVolume]:
    """Preprocess (or load from cache) every case for one stage."""
    return [load_or_prepare(case, meta, cache_dir, crop_margin_mm=crop_margin_mm) for case in cases]


def with_provenance(meta: ModelMeta, **changes: str) -> ModelMeta:
    """A copy of ``meta`` with provenance fields (trained_on, commit, version, notes) replaced."""
    return replace(meta, **changes)


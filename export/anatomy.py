"""Spine geometry for the synthetic phantoms: real centroid chains, label variants, vertebra shapes.

Positions come from the annotated centroids of 112 real VerSe 2020 spines
(``verse2020-landmarks/landmarks.csv``): a case samples one real spine (a "donor") and
chains its neighbour offsets, borrowing offsets of other real spines for the levels the
donor does not cover. The landmark frame is LPS-like (x towards the left, y posterior,
z superior, mm), the same axes as the project's world frame, so offsets are used as-is.

Sizes per level (vertebral body width and depth, canal, processes) are textbook adult
values in mm, scaled per case; body heights follow the sampled centroid spacing so that
bodies and discs always fit between neighbours.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from spine.labels import anatomical_rank

__all__ = [
    "LANDMARK_COLUMNS",
    "LANDMARKS_ENV",
    "SpineLevel",
    "body_size_mm",
    "build_spine",
    "default_landmarks_path",
    "load_landmarks",
    "sample_label_sequence",
    "shared_data_dirs",
]

log = logging.getLogger(__name__)

LANDMARKS_ENV = "VERSE_GC_LANDMARKS"
"""Environment variable naming another ``landmarks.csv`` (same format)."""

LANDMARK_COLUMNS: tuple[int, ...] = (*range(1, 26), 28)
"""VerSe id of each landmark column of ``landmarks.csv``: C1-C7, T1-T12, L1-L6, T13."""

_COLUMN_OF: dict[int, int] = {label: column for column, label in enumerate(LANDMARK_COLUMNS)}

def default_landmarks_path() -> Path:
    """``$VERSE_GC_LANDMARKS``, else the copy shipped in ``export/data``, else a shared data folder's.

    Shared data folders tried: ``<repo>/../shared/data`` and ``<repo>/shared/data``.
    """
    env = os.environ.get(LANDMARKS_ENV)
    if env:
        return Path(env)
    bundled = Path(__file__).resolve().parent / "data" / "verse2020_landmarks.csv"
    if bundled.is_file():
        return bundled
    candidates = [folder / "verse2020-landmarks" / "landmarks.csv" for folder in shared_data_dirs()]
    return next((path for path in candidates if path.is_file()), candidates[0])


def shared_data_dirs() -> list[Path]:
    """Where the project's shared sample data may be: beside the repository or inside it."""
    repo = Path(__file__).resolve().parents[1]
    return [repo.parent / "shared" / "data", repo / "shared" / "data"]


@lru_cache(maxsize=4)
def load_landmarks(path: str | None = None) -> np.ndarray:
    """Real spines as an array (n_scans, 26, 3) in mm, NaN where a vertebra is absent.

    Columns follow :data:`LANDMARK_COLUMNS`. Raises ValueError naming the file when it is
    missing or malformed.
    """
    csv = Path(path) if path is not None else default_landmarks_path()
    if not csv.is_file():
        raise ValueError(f"{csv}: landmarks file not found (set {LANDMARKS_ENV})")
    rows = []
    for number, line in enumerate(csv.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 1 + 26 * 3:
            raise ValueError(f"{csv}:{number}: expected {1 + 26 * 3} fields, got {len(fields)}")
        try:
            rows.append([float(v) for v in fields[1:]])
        except ValueError:
            raise ValueError(f"{csv}:{number}: non-numeric coordinate") from None
    if not rows:
        raise ValueError(f"{csv}: no landmark rows")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 26, 3)


@dataclass(frozen=True)
class SpineLevel:
    """One vertebra of a synthetic spine, in world mm (LPS).

    ``frame`` columns are the vertebra's unit axes: lateral (towards the left), posterior,
    superior (along the spine). Half sizes are of the vertebral body (mm).
    """

    label: int
    centre_mm: np.ndarray
    frame: np.ndarray
    half_width_mm: float
    half_depth_mm: float
    half_height_mm: float
    spacing_mm: float  # distance to the neighbours (mean), mm


def _has(row: np.ndarray, label: int) -> bool:
    return bool(np.isfinite(row[_COLUMN_OF[label], 0]))


def sample_label_sequence(
    rng: np.random.Generator,
    donor: np.ndarray,
    *,
    extra_variant_rate: float = 0.08,
) -> list[int]:
    """Cranio-caudal vertebra labels of a spine (C1 .. last lumbar), variants as the donor shows.

    Variants read from the donor: T13 column present (13 thoracic), L6 present (6 lumbar),
    T11 and L1 but no T12 (11 thoracic), L3 and L4 but no L5 (4 lumbar). With probability
    ``extra_variant_rate`` one more variant is injected at random.
    """
    t13 = _has(donor, 28)
    l6 = _has(donor, 25)
    no_t12 = _has(donor, 18) and _has(donor, 20) and not _has(donor, 19)
    no_l5 = _has(donor, 22) and _has(donor, 23) and not _has(donor, 24)
    if rng.random() < extra_variant_rate:
        kind = int(rng.integers(4))
        if kind == 0 and not no_t12:
            t13 = True
        elif kind == 1 and not no_l5:
            l6 = True
        elif kind == 2 and not t13:
            no_t12 = True
        elif kind == 3 and not l6:
            no_l5 = True
    labels = list(range(1, 19))  # C1..T11
    if not no_t12:
        labels.append(19)
        if t13:
            labels.append(28)
    labels += [20, 21, 22, 23]
    if not no_l5:
        labels.append(24)
        if l6:
            labels.append(25)
    return labels


def _step_from(row: np.ndarray, upper: int, lower: int) -> np.ndarray | None:
    if _has(row, upper) and _has(row, lower):
        return row[_COLUMN_OF[lower]] - row[_COLUMN_OF[upper]]
    return None


def _substitute_pair(upper: int, lower: int) -> tuple[int, int]:
    """A standard neighbour pair whose offset stands in for a variant pair no spine has."""
    table = {(19, 28): (18, 19), (28, 20): (19, 20), (18, 20): (19, 20), (23, 25): (23, 24), (24, 25): (23, 24)}
    return table.get((upper, lower), (upper, lower))


def _max_turn_deg(spines: np.ndarray) -> np.ndarray:
    """Largest angle (degrees) between consecutive neighbour offsets of each real spine (C1..L6 columns), (n,)."""
    steps = np.diff(spines[:, :25], axis=1)
    units = steps / np.linalg.norm(steps, axis=2, keepdims=True)
    cosines = np.clip(np.sum(units[:, :-1] * units[:, 1:], axis=2), -1.0, 1.0)
    angles = np.degrees(np.arccos(cosines))
    return np.where(np.isfinite(angles), angles, 0.0).max(axis=1)


def _align(source: np.ndarray, target: np.ndarray, fraction: float = 1.0) -> np.ndarray:
    """Rotation matrix turning direction ``source`` onto ``target`` (or ``fraction`` of the way)."""
    a = source / np.linalg.norm(source)
    b = target / np.linalg.norm(target)
    axis = np.cross(a, b)
    sin = float(np.linalg.norm(axis))
    if sin < 1e-9:
        return np.eye(3)
    return _rotation(axis / sin, fraction * float(np.arctan2(sin, float(a @ b))))


def _chain_steps(
    rng: np.random.Generator,
    spines: np.ndarray,
    donor_index: int,
    labels: list[int],
) -> np.ndarray:
    """Offsets (n-1, 3) between consecutive ``labels``: the donor's where it has them, else other real spines'.

    Other spines are tried in one random order per case, so neighbouring missing levels
    usually come from the same spine and keep its real curvature. Spines with a kink over
    50 degrees between neighbour offsets lend no levels. Where the lending spine changes,
    its run of offsets is rotated so that its offset just above the junction (when it has
    one) matches the chain's: the curvature continues without a step.
    """
    smooth = _max_turn_deg(spines) <= 50.0
    lenders = [int(i) for i in rng.permutation(len(spines)) if int(i) != donor_index and smooth[int(i)]]
    order = [donor_index, *lenders]
    steps: list[np.ndarray] = []
    source: list[int] = []
    turn = np.eye(3)
    for position, (upper, lower) in enumerate(itertools.pairwise(labels)):
        step, lender = None, -1
        for pair in ((upper, lower), _substitute_pair(upper, lower)):
            for index in order:
                step = _step_from(spines[index], *pair)
                if step is not None:
                    lender = index
                    break
            if step is not None:
                break
        if step is None:  # no spine has this pair: continue in the direction of the chain
            step = steps[-1] if steps else np.array([0.0, 0.0, -25.0])
            lender = source[-1] if source else -1
        elif source and lender != source[-1]:
            previous = _step_from(spines[lender], labels[position - 1], upper) if position > 0 else None
            # Same level above the junction: match it; else meet the chain half-way.
            turn = _align(previous, steps[-1]) if previous is not None else _align(step, steps[-1], 0.5)
        steps.append(turn @ step)
        source.append(lender)
    return np.asarray(steps, dtype=np.float64)


# Vertebral body full width (lateral) and depth (AP) in mm, C1..L5 (VerSe ids 1..24); L6 as L5,
# T13 between T12 and L1. C1 has no body: its entry sizes the ring.
_BODY_WIDTH_MM = (44, 18, 17, 18, 19, 21, 24, 27, 28, 28, 28, 29, 30, 31, 33, 35, 38, 40, 42, 44, 46, 48, 50, 52)
_BODY_DEPTH_MM = (10, 16, 15, 15.5, 16, 16.5, 17, 18, 19, 21, 23, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 35, 35)


def body_size_mm(label: int) -> tuple[float, float]:
    """Textbook (width, depth) of a vertebral body in mm."""
    if label == 25:
        label = 24
    if label == 28:
        return (0.5 * (_BODY_WIDTH_MM[18] + _BODY_WIDTH_MM[19]), 0.5 * (_BODY_DEPTH_MM[18] + _BODY_DEPTH_MM[19]))
    return float(_BODY_WIDTH_MM[label - 1]), float(_BODY_DEPTH_MM[label - 1])


def _height_fraction(label: int) -> float:
    """Body height / centroid spacing: the rest is disc."""
    rank = anatomical_rank(label)
    if rank <= 7:
        return 0.74
    if rank < 20:
        return 0.78
    return 0.70


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit ``axis`` by ``angle`` radians."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _frames(centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-vertebra orthonormal frames (n, 3, 3): columns lateral (left), posterior, superior."""
    n = len(centres)
    frames = np.zeros((n, 3, 3))
    for i in range(n):
        upper = centres[max(i - 1, 0)]
        lower = centres[min(i + 1, n - 1)]
        superior = upper - lower
        superior /= np.linalg.norm(superior)
        posterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
        posterior /= np.linalg.norm(posterior)
        lateral = np.cross(posterior, superior)
        frame = np.stack([lateral, posterior, superior], axis=1)
        twist = _rotation(superior, float(rng.normal(0.0, np.deg2rad(2.5))))  # axial rotation
        frames[i] = twist @ frame
    return frames


def build_spine(
    rng: np.random.Generator,
    *,
    landmarks: np.ndarray | None = None,
    extra_variant_rate: float = 0.08,
) -> list[SpineLevel]:
    """A whole synthetic spine C1 .. last lumbar vertebra, C1 at the world origin (mm, LPS).

    Centroid chain from real spines (see the module docstring), scaled by a case factor
    (0.9-1.1), with ~1 mm jitter per step and a small global tilt.
    """
    spines = load_landmarks() if landmarks is None else landmarks
    smooth = np.flatnonzero(_max_turn_deg(spines) <= 50.0).tolist() or list(range(len(spines)))
    donor_index = int(smooth[int(rng.integers(len(smooth)))])
    donor = spines[donor_index]
    labels = sample_label_sequence(rng, donor, extra_variant_rate=extra_variant_rate)
    steps = _chain_steps(rng, spines, donor_index, labels)
    scale = float(rng.uniform(0.9, 1.1))
    steps = steps * scale + rng.normal(0.0, 0.7, size=steps.shape)
    tilt = _rotation(np.array([1.0, 0.0, 0.0]), float(rng.normal(0, np.deg2rad(3))))
    tilt = _rotation(np.array([0.0, 1.0, 0.0]), float(rng.normal(0, np.deg2rad(2)))) @ tilt
    steps = steps @ tilt.T
    centres = np.vstack([np.zeros(3), np.cumsum(steps, axis=0)])
    frames = _frames(centres, rng)
    size_scale = scale * float(rng.uniform(0.93, 1.07))
    levels = []
    gaps = np.linalg.norm(steps, axis=1)
    for i, label in enumerate(labels):
        near = [gaps[j] for j in (i - 1, i) if 0 <= j < len(gaps)]
        spacing = float(np.mean(near))
        width, depth = body_size_mm(label)
        levels.append(SpineLevel(
            label=label,
            centre_mm=centres[i],
            frame=frames[i],
            half_width_mm=0.5 * width * size_scale,
            half_depth_mm=0.5 * depth * size_scale,
            half_height_mm=0.5 * spacing * _height_fraction(label),
            spacing_mm=spacing,
        ))
    log.debug("spine from donor %d: %d vertebrae, labels %s", donor_index, len(levels), labels)
    return levels

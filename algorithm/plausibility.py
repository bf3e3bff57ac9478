"""Is a labelled spine anatomically plausible? Checks that make weak answers say so.

The decoder's confidence measures how well one labelling beats the others *given the network's
evidence*. When that evidence is wrong as a whole (a lumbar spine whose every vertebra the network
calls cervical), the decoder can be confidently wrong. Two measurements taken on the result, not on
the network's evidence, catch a wrong region:

- **spacing**: the distance between consecutive labelled centroids against the median distance of
  those levels in 113 real VerSe 2020 spines (the labelling prior). Cervical centres lie 15-19 mm
  apart, lumbar ones 33-38 mm: a lumbar spine labelled cervical has spacing ratio ~2.
- **size**: each vertebra's segmented volume against the volume of that level in real VerSe masks
  (:data:`REFERENCE_VOLUME_ML`): C3-C6 ~14 ml, T1-T5 23-28 ml, L2-L5 50-56 ml, so a wrong region is a
  factor of 2-4.

Each check reports the median log ratio over the vertebrae (robust to a partial vertebra at the
field of view's edge). A case fails a check when the median ratio leaves [1 / tolerance, tolerance];
the pipeline then caps every point's probability at :data:`IMPLAUSIBLE_CAP` and the run report and log
say which check failed and by how much. Nothing here changes a label.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from spine.labels import allowed_next, anatomical_rank, name_of

__all__ = [
    "IMPLAUSIBLE_CAP",
    "REFERENCE_VOLUME_ML",
    "Plausibility",
    "assess",
    "expected_distance_mm",
    "size_ratio",
    "spacing_ratio",
]

REFERENCE_VOLUME_ML: dict[int, float] = {
    1: 18.4, 2: 20.6, 3: 13.5, 4: 13.2, 5: 13.7, 6: 14.6, 7: 20.4,
    8: 22.7, 9: 24.3, 10: 24.6, 11: 28.3, 12: 26.9, 13: 26.8, 14: 26.8, 15: 26.7, 16: 26.7,
    17: 29.7, 18: 34.4, 19: 39.1, 28: 39.1,
    20: 36.2, 21: 49.7, 22: 54.0, 23: 56.2, 24: 55.4, 25: 55.4,
}
"""Median whole-vertebra volume (ml, body and posterior elements as VerSe masks them) per VerSe id, measured on
the real VerSe masks of ``../shared/data`` (sub-gl003, gl017, gl108, verse004, verse005, verse010; 1-3 spines a
level) with :func:`export.synth_shapes.load_templates`. T6-T8 (no mask) are interpolated; T13 = T12, L6 = L5."""

SPACING_TOLERANCE = 1.45
"""Median spacing ratio allowed either way: real spines vary by about 10 % (the prior's log sd 0.07), a missed
vertebra between two labelled ones is priced by the decoder, and a wrong region is a factor of ~2."""
SIZE_TOLERANCE = 2.2
"""Median volume ratio allowed either way: spines differ by ~30 %, segmentation misses parts of a vertebra, and a
wrong region is a factor of 2-4."""
IMPLAUSIBLE_CAP = 0.3
"""Probability ceiling of every point of a case that fails a check."""


@dataclass(frozen=True)
class Plausibility:
    """Outcome of :func:`assess`: the two medians (None when not measurable) and the reasons for doubt."""

    spacing_ratio: float | None
    size_ratio: float | None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def plausible(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, object]:
        return {"plausible": self.plausible,
                "spacing_ratio": None if self.spacing_ratio is None else round(self.spacing_ratio, 3),
                "size_ratio": None if self.size_ratio is None else round(self.size_ratio, 3),
                "reasons": list(self.reasons)}


@functools.cache
def _step_medians() -> dict[tuple[int, int], float]:
    from algorithm.labelling_prior import load_default

    return {(s.source, s.target): float(math.exp(s.log_mean)) for s in load_default().steps}


def expected_distance_mm(upper: int, lower: int, medians: Mapping[tuple[int, int], float]) -> float | None:
    """Median centre-to-centre distance from ``upper`` down to ``lower`` along the anatomical chain (sum of
    the steps in between, variants allowed); None when ``lower`` does not follow ``upper``."""
    frontier: list[tuple[int, float]] = [(upper, 0.0)]
    for _ in range(30):
        following: list[tuple[int, float]] = []
        for label, total in frontier:
            for nxt in allowed_next(label):
                if (label, nxt) not in medians:
                    continue
                if nxt == lower:
                    return total + medians[(label, nxt)]
                following.append((nxt, total + medians[(label, nxt)]))
        if not following:
            return None
        frontier = following
    return None


def spacing_ratio(labels: Sequence[int], positions_mm: np.ndarray,
                  medians: Mapping[tuple[int, int], float] | None = None) -> float | None:
    """Median over consecutive labelled vertebrae (head to foot) of observed / expected centre distance.

    ``labels`` and ``positions_mm`` (N, 3) pair up; None with fewer than two vertebrae.
    """
    medians = _step_medians() if medians is None else medians
    order = sorted(range(len(labels)), key=lambda i: anatomical_rank(labels[i]))
    ratios = []
    for a, b in itertools.pairwise(order):
        expected = expected_distance_mm(int(labels[a]), int(labels[b]), medians)
        if expected:
            observed = float(np.linalg.norm(np.asarray(positions_mm[a]) - np.asarray(positions_mm[b])))
            ratios.append(math.log(max(observed, 1e-3) / expected))
    return float(math.exp(float(np.median(ratios)))) if ratios else None


def size_ratio(volumes_ml: Mapping[int, float]) -> float | None:
    """Median over vertebrae with a segmented volume of observed / reference volume of their label."""
    ratios = [math.log(v / REFERENCE_VOLUME_ML[label]) for label, v in volumes_ml.items()
              if v > 0 and label in REFERENCE_VOLUME_ML]
    return float(math.exp(float(np.median(ratios)))) if ratios else None


def _outside(ratio: float | None, tolerance: float) -> bool:
    return ratio is not None and not 1.0 / tolerance <= ratio <= tolerance


def assess(labels: Sequence[int], positions_mm: np.ndarray, volumes_ml: Mapping[int, float]) -> Plausibility:
    """Both checks on one case's labelled vertebrae (labels, LPS centroids, segmented volumes in ml)."""
    spacing = spacing_ratio(labels, positions_mm)
    size = size_ratio(volumes_ml)
    reasons = []
    span = f"{name_of(min(labels, key=anatomical_rank))}-{name_of(max(labels, key=anatomical_rank))}" \
        if len(labels) else ""
    if _outside(spacing, SPACING_TOLERANCE):
        reasons.append(f"the labelled vertebrae ({span}) lie {spacing:.2f}x as far apart as real vertebrae of "
                       "those levels: the labels' region is doubtful")
    if _outside(size, SIZE_TOLERANCE):
        reasons.append(f"the segmented vertebrae ({span}) are {size:.2f}x the volume of real vertebrae of those "
                       "levels: the labels' region or the segmentation is doubtful")
    return Plausibility(spacing, size, tuple(reasons))

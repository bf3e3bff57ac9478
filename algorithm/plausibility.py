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

A third judgement comes before any network runs, on the CT's grid alone (:func:`judge_geometry`): its
physical field of view and voxel spacing against what CT scanners produce. The impossible (a 2.4 m wide
image, 20 mm slices) is refused by :func:`algorithm.inputs.check_ct`; the unusual (6 mm slices, a 75 cm
wide field of view) runs, and the log and the run report's ``plausibility.geometry`` say so.

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

from spine.image import Geometry
from spine.labels import allowed_next, anatomical_rank, name_of

__all__ = [
    "FOV_IMPOSSIBLE_MM",
    "FOV_UNUSUAL_MM",
    "IMPLAUSIBLE_CAP",
    "SPACING_IMPOSSIBLE_MM",
    "SPACING_UNUSUAL_MM",
    "GeometryJudgement",
    "REFERENCE_VOLUME_ML",
    "Plausibility",
    "assess",
    "judge_geometry",
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

FOV_IMPOSSIBLE_MM = (1000.0, 1000.0, 2500.0)
"""Physical extent (x, y, z world axes: across, front to back, head to foot) no CT image of a person has.
Scanner bores are 70-90 cm wide and no scanner reconstructs beyond ~80 cm across (extended FOV), so
1 m in x or y is not a CT of a person; table travel and body height stop at about 2 m, so 2.5 m in z
is not one either. Such a grid is a header with a wrong spacing (the issue's 20 mm spacing: 2.4 m)."""
FOV_UNUSUAL_MM = (700.0, 700.0, 2100.0)
"""Extent beyond which a CT is unusual: the standard reconstruction FOV is <= 50 cm and wide-bore extended
FOVs reach ~70 cm; a whole-body scan of a tall person is ~2 m. Beyond it the spacing is probably wrong."""
SPACING_IMPOSSIBLE_MM = 10.0
"""Coarsest voxel spacing of a CT: no scanner reconstructs slices thicker than 10 mm (the widest collimation of
old sequential scanners), and in-plane pixels are FOV / matrix <= 800 / 512 ~ 1.6 mm. At 10 mm a vertebra
(15-38 mm high) spans 2-3 slices: nothing could be labelled anyway."""
SPACING_UNUSUAL_MM = 5.0
"""Coarsest usual spacing: 5 mm slices are the thickest routine clinical reconstruction, and the detect and
locate models see a 3 mm grid: beyond 5 mm vertebrae blur into each other and labels get skipped."""
SPACING_FINE_MM = 0.2
"""Finest usual spacing: ultra-high-resolution and photon-counting CT reach ~0.2 mm; finer is a specimen
or micro-CT scan, far outside what the models were trained on (0.3-1.5 mm in-plane, 0.5-5 mm slices)."""


@dataclass(frozen=True)
class Plausibility:
    """Outcome of :func:`assess`: the two medians (None when not measurable) and the reasons for doubt."""

    spacing_ratio: float | None
    size_ratio: float | None
    reasons: tuple[str, ...] = field(default_factory=tuple)
    geometry: tuple[str, ...] = field(default_factory=tuple)
    """The CT grid's unusual properties (:func:`judge_geometry`): they make the case doubtful, not the labels."""

    @property
    def plausible(self) -> bool:
        return not self.reasons and not self.geometry

    @property
    def size_doubtful(self) -> bool:
        """The size check failed: the vertebrae are the wrong size for their labels' levels."""
        return _outside(self.size_ratio, SIZE_TOLERANCE)

    def to_dict(self) -> dict[str, object]:
        return {"plausible": self.plausible,
                "spacing_ratio": None if self.spacing_ratio is None else round(self.spacing_ratio, 3),
                "size_ratio": None if self.size_ratio is None else round(self.size_ratio, 3),
                "reasons": list(self.reasons), "geometry": list(self.geometry)}


@dataclass(frozen=True)
class GeometryJudgement:
    """What :func:`judge_geometry` found: problems that make the grid impossible, and unusual properties."""

    impossible: tuple[str, ...] = ()
    unusual: tuple[str, ...] = ()


def _extents_mm(geometry: Geometry) -> np.ndarray:
    """Physical extent along the world axes x, y, z: image axis i (length ``size_i * spacing_i``) counted on the
    world axis its direction points along most (``argmax_w |M[w, i]|``), so an oblique grid is not inflated."""
    lengths = np.asarray(geometry.size, dtype=float) * np.asarray(geometry.spacing_mm, dtype=float)
    extents = np.zeros(3)
    for i, world in enumerate(np.argmax(np.abs(geometry.matrix), axis=0)):
        extents[world] = max(extents[world], lengths[i])
    return extents


def judge_geometry(geometry: Geometry) -> GeometryJudgement:
    """The CT grid's field of view and spacing against what scanners produce (the thresholds' docstrings say why).

    Impossible: any world extent above :data:`FOV_IMPOSSIBLE_MM`, or any spacing above
    :data:`SPACING_IMPOSSIBLE_MM`. Unusual: an extent above :data:`FOV_UNUSUAL_MM`, a spacing above
    :data:`SPACING_UNUSUAL_MM` or below :data:`SPACING_FINE_MM`.
    """
    extents = _extents_mm(geometry)
    spacing = np.asarray(geometry.spacing_mm, dtype=float)
    shown = "x".join(f"{s:g}" for s in spacing)
    impossible, unusual = [], []
    for axis, name in enumerate("xyz"):
        what = f"{extents[axis] / 10:.0f} cm along {name} ({'head to foot' if name == 'z' else 'across'})"
        if extents[axis] > FOV_IMPOSSIBLE_MM[axis]:
            impossible.append(f"the image is {what}: no CT of a person is (limit {FOV_IMPOSSIBLE_MM[axis] / 10:.0f} "
                              f"cm; a wrong voxel spacing {shown} mm in the header?)")
        elif extents[axis] > FOV_UNUSUAL_MM[axis]:
            unusual.append(f"the image is {what}, more than CT fields of view usually are "
                           f"({FOV_UNUSUAL_MM[axis] / 10:.0f} cm): is the voxel spacing {shown} mm right?")
    if spacing.max() > SPACING_IMPOSSIBLE_MM:
        impossible.append(f"voxel spacing {shown} mm: no CT scanner reconstructs voxels over "
                          f"{SPACING_IMPOSSIBLE_MM:g} mm")
    elif spacing.max() > SPACING_UNUSUAL_MM:
        unusual.append(f"voxel spacing {shown} mm is coarser than {SPACING_UNUSUAL_MM:g} mm: vertebrae blur into "
                       "each other and labels may be skipped")
    if spacing.min() < SPACING_FINE_MM:
        unusual.append(f"voxel spacing {shown} mm is finer than clinical CT ({SPACING_FINE_MM:g} mm): a specimen "
                       "or micro-CT scan is outside what the models learnt")
    return GeometryJudgement(tuple(impossible), tuple(unusual))


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


def assess(labels: Sequence[int], positions_mm: np.ndarray, volumes_ml: Mapping[int, float],
           geometry: Sequence[str] = ()) -> Plausibility:
    """Both checks on one case's labelled vertebrae (labels, LPS centroids, segmented volumes in ml); ``geometry``:
    the CT grid's unusual properties (:func:`judge_geometry`), carried into the outcome."""
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
    return Plausibility(spacing, size, tuple(reasons), tuple(geometry))

"""Geometric and variant priors of the vertebra chain, fitted on annotated real spines.

The labelling decoder (:mod:`algorithm.labelling`) scores a labelled chain of
vertebra candidates with three numbers learned here from annotated centroids
(``landmarks.csv`` of VerSe 2020, one row a scan):

* **Step lengths.** For every allowed step ``a -> b`` between consecutive
  vertebrae (``spine.labels.allowed_next``, variants included) the distance
  ``d`` in mm between the two centroids. It is modelled on the log scale with a
  per-spine size factor: ``log d[spine, step] = log_mean[step] + g[spine] + e``
  with ``g ~ N(0, scale_log_sd**2)`` (taller or shorter spines) and the residual
  ``e ~ N(0, log_sd[step]**2)``. The two-way model is fitted by alternating
  means (``g`` shrunk towards 0 for spines with few steps). Rare variant steps
  (T11->L1, T12->T13, T13->L1, L5->L6) have their mean shrunk towards the
  adjacent normal steps with a pseudo-count ``shrinkage``; every ``log_sd`` is
  shrunk towards the pooled residual variance the same way.
* **Step direction.** The RMS angle (radians) between a step ``x[k+1] - x[k]`` and
  the spine's local direction there, estimated by the central chord
  ``x[k+2] - x[k-1]`` (interior steps of 3 or more consecutive vertebrae): how far a
  step may turn away from the curve through the chain.
* **Chord ratios.** The straight distance over 2 and 3 consecutive steps
  divided by the sum of the step lengths (slightly below 1 on a curved spine):
  the decoder uses them for the gap of a missed vertebra.
* **Variant frequencies.** ``P(next | label)`` where the anatomy branches:
  T11 -> T12 or L1 (11 thoracic), T12 -> T13 or L1, L4 -> L5 or the sacrum
  (4 lumbar), L5 -> L6 or the sacrum. Counts of consecutive annotated pairs with
  Jeffreys smoothing ``(count + 0.5) / (total + 0.5 * options)``. The sacrum
  is not annotated in the landmarks: a spine whose last vertebra is L4, L5 or L6
  counts as ending on the sacrum when that vertebra lies at least
  ``minsacrum_room_mm`` above the scan's lower edge (the CSV frame is RAI with
  its origin at the volume's inferior corner, so the z coordinate is that height);
  otherwise the field of view was cropped there and the pair is not counted.
  A caller that knows better passes ``sacrum_below`` per spine (the VID scans, below).
* **Chain ends.** ``P(first annotated label = l)`` and ``P(last = l)`` over the spines,
  Jeffreys-smoothed over the 26 labels: where fields of view of real scans start and
  stop (most abdominal CTs end on L5, above the sacrum). The decoder reads them as
  ``log(26 P)``, 0 for a uniform prior.

Sources: the VerSe 2020 landmarks (113 scans) and, with ``--vid``, the ground truth of the
VID dataset (Buergin, Prevost, Stollenga, MICCAI 2023; CC BY-SA 4.0; 1,947 CTs of VerSe, CT
Colonography and Pancreas-CT; world mm, no sacrum annotated). VID shows no sacrum, and its
scans are abdominal CTs that reach the pelvis: a VID spine whose last annotated vertebra
is L4, L5 or L6 counts as ending on the sacrum.

The landmark columns are C1-C7, T1-T12, L1-L6, T13: exactly the locate stage's
channel order ``spine.labels.LOCATE_CHANNELS`` (VerSe ids 1..25, 28).

Command line::

    python -m algorithm.labelling_prior --landmarks CSV --vid FOLDER --out algorithm/labelling_prior.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine.labels import EVALUATED, LOCATE_CHANNELS, allowed_next, anatomical_rank, name_of
from spine.vid import VidScan, read_scan, scan_ids

__all__ = [
    "CHAIN_LABELS",
    "DEFAULT_PRIOR_PATH",
    "SACRUM",
    "BranchPrior",
    "LabellingPrior",
    "StepPrior",
    "chain_steps",
    "fit",
    "load_default",
    "main",
    "read_landmarks",
    "sacrum_room",
    "vid_landmarks",
]

log = logging.getLogger(__name__)

FORMAT = "verse-gc labelling prior"
FORMAT_VERSION = 2
DEFAULT_PRIOR_PATH = Path(__file__).with_name("labelling_prior.json")
"""The prior shipped with the code, fitted on the VerSe 2020 landmarks (113 scans) and the VID ground truth."""

SACRUM = 26
"""VerSe id of the sacrum: the anatomical end of the chain after the last lumbar vertebra."""

CHAIN_LABELS: tuple[int, ...] = tuple(sorted(EVALUATED, key=anatomical_rank))
"""The 26 evaluated labels from the skull down: C1..T12, T13, L1..L6."""

_NORMAL_SEQUENCE: tuple[int, ...] = (*range(1, 20), *range(20, 25))  # C1..T12, L1..L5
_ROUND = 6  # decimals kept in the JSON file


def chain_steps() -> tuple[tuple[int, int], ...]:
    """Allowed steps ``(a, b)`` between consecutive evaluated vertebrae, head to foot, variants included."""
    return tuple((a, b) for a in CHAIN_LABELS for b in allowed_next(a) if b in EVALUATED)


def _normal_steps() -> frozenset[tuple[int, int]]:
    return frozenset(itertools.pairwise(_NORMAL_SEQUENCE))


@dataclass(frozen=True)
class StepPrior:
    """Length of one step ``source -> target`` between consecutive vertebrae.

    ``log d = log_mean + g + e`` (d in mm), ``e ~ N(0, log_sd**2)`` within a spine of
    size factor ``exp(g)``. ``count`` is the number of annotated pairs behind it.
    """

    source: int
    target: int
    count: int
    log_mean: float
    log_sd: float

    @property
    def median_mm(self) -> float:
        """Median step length in mm for a spine of average size: ``exp(log_mean)``."""
        return math.exp(self.log_mean)


@dataclass(frozen=True)
class BranchPrior:
    """``P(target | source)`` where the anatomy branches (``target`` 26 = the sacrum follows)."""

    source: int
    target: int
    count: int
    probability: float


@dataclass(frozen=True)
class LabellingPrior:
    """All numbers the chain decoder learns from annotated spines (see the module docstring)."""

    steps: tuple[StepPrior, ...]
    branches: tuple[BranchPrior, ...]
    scale_log_sd: float
    chord_ratio: tuple[float, float]
    """Straight distance / summed step lengths over 2 and over 3 consecutive steps."""
    direction_sd_rad: float
    """RMS angle between a step and the local direction of the spine (radians)."""
    scans: int
    source: str = ""
    first_probability: tuple[float, ...] = ()
    """P(the first annotated label of a scan is l), chain order (``CHAIN_LABELS``); () = uniform."""
    last_probability: tuple[float, ...] = ()
    """P(the last annotated label of a scan is l), chain order; () = uniform."""

    def end_log_odds(self) -> tuple[np.ndarray, np.ndarray]:
        """``log(26 P(first = l))`` and ``log(26 P(last = l))`` (26,) in chain order: 0 where uniform."""
        uniform = np.full(len(CHAIN_LABELS), 1.0 / len(CHAIN_LABELS))
        first = np.asarray(self.first_probability or uniform)
        last = np.asarray(self.last_probability or uniform)
        return np.log(len(CHAIN_LABELS) * first), np.log(len(CHAIN_LABELS) * last)

    def step(self, source: int, target: int) -> StepPrior:
        """The prior of one allowed step; ValueError for a step the anatomy does not allow."""
        for step in self.steps:
            if step.source == source and step.target == target:
                return step
        raise ValueError(f"no step {name_of(source)} -> {name_of(target)} in the labelling prior")

    def branch_probability(self, source: int, target: int) -> float:
        """``P(target follows source)``: 1 where the anatomy does not branch after ``source``."""
        options = [b for b in self.branches if b.source == source]
        if not options:
            if target not in allowed_next(source):
                raise ValueError(f"{name_of(target)} cannot follow {name_of(source)}")
            return 1.0
        for branch in options:
            if branch.target == target:
                return branch.probability
        raise ValueError(f"{name_of(target)} cannot follow {name_of(source)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, names beside ids, floats rounded to 6 decimals."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": self.source,
            "scans": self.scans,
            "scale_log_sd": round(self.scale_log_sd, _ROUND),
            "chord_ratio": [round(r, _ROUND) for r in self.chord_ratio],
            "direction_sd_rad": round(self.direction_sd_rad, _ROUND),
            "steps": [
                {
                    "from": name_of(s.source),
                    "to": name_of(s.target),
                    "from_label": s.source,
                    "to_label": s.target,
                    "count": s.count,
                    "log_mean": round(s.log_mean, _ROUND),
                    "log_sd": round(s.log_sd, _ROUND),
                    "median_mm": round(s.median_mm, 3),
                }
                for s in self.steps
            ],
            "branches": [
                {
                    "from": name_of(b.source),
                    "to": name_of(b.target),
                    "from_label": b.source,
                    "to_label": b.target,
                    "count": b.count,
                    "probability": round(b.probability, _ROUND),
                }
                for b in self.branches
            ],
            "ends": [
                {"label": label, "name": name_of(label), "first": round(first, _ROUND), "last": round(last, _ROUND)}
                for label, first, last in zip(CHAIN_LABELS, *(p or (1.0 / len(CHAIN_LABELS),) * len(CHAIN_LABELS)
                                                              for p in (self.first_probability,
                                                                        self.last_probability)), strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabellingPrior:
        """Inverse of :meth:`to_dict`; ValueError naming what is missing or wrong."""
        if data.get("format") != FORMAT or data.get("version") not in (1, FORMAT_VERSION):
            raise ValueError(f"not a {FORMAT!r} version 1 or {FORMAT_VERSION} document")
        try:
            steps = tuple(
                StepPrior(int(s["from_label"]), int(s["to_label"]), int(s["count"]),
                          float(s["log_mean"]), float(s["log_sd"]))
                for s in data["steps"]
            )
            branches = tuple(
                BranchPrior(int(b["from_label"]), int(b["to_label"]), int(b["count"]), float(b["probability"]))
                for b in data["branches"]
            )
            chord = tuple(float(r) for r in data["chord_ratio"])
            ends = {int(e["label"]): (float(e["first"]), float(e["last"])) for e in data.get("ends", [])}
            if ends and set(ends) != set(CHAIN_LABELS):
                raise ValueError("the chain ends must list every evaluated label once")
            prior = cls(steps, branches, float(data["scale_log_sd"]), (chord[0], chord[1]),
                        float(data["direction_sd_rad"]), int(data["scans"]), str(data.get("source", "")),
                        tuple(ends[label][0] for label in CHAIN_LABELS) if ends else (),
                        tuple(ends[label][1] for label in CHAIN_LABELS) if ends else ())
        except (KeyError, TypeError, IndexError) as error:
            raise ValueError(f"malformed labelling prior: {error!r}") from None
        _check_prior(prior)
        return prior

    def save(self, path: str | Path) -> None:
        """Write the prior as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LabellingPrior:
        """Read a prior written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _check_prior(prior: LabellingPrior) -> None:
    """ValueError unless every allowed step is present with a finite mean and positive spread."""
    have = {(s.source, s.target): s for s in prior.steps}
    for key in chain_steps():
        step = have.get(key)
        if step is None:
            raise ValueError(f"labelling prior lacks the step {name_of(key[0])} -> {name_of(key[1])}")
        if not (math.isfinite(step.log_mean) and step.log_sd > 0):
            raise ValueError(f"labelling prior step {name_of(key[0])} -> {name_of(key[1])} is degenerate")
    if not prior.scale_log_sd >= 0 or not all(0 < r <= 1.0 + 1e-9 for r in prior.chord_ratio):
        raise ValueError("labelling prior scale or chord ratios out of range")
    if not 0 < prior.direction_sd_rad < math.pi:
        raise ValueError(f"labelling prior direction spread {prior.direction_sd_rad} out of range")
    for ends in (prior.first_probability, prior.last_probability):
        if ends and (len(ends) != len(CHAIN_LABELS) or min(ends) <= 0 or abs(sum(ends) - 1.0) > 1e-3):
            raise ValueError("labelling prior chain-end probabilities must be 26 positive values summing to 1")
    for source in {b.source for b in prior.branches}:
        total = sum(b.probability for b in prior.branches if b.source == source)
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"branch probabilities after {name_of(source)} sum to {total}, not 1")


def read_landmarks(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Read ``landmarks.csv``: scan ids and an (S, 26, 3) array in mm, nan where absent.

    Columns are in ``LOCATE_CHANNELS`` order (C1..L6, then T13), coordinates x, y, z
    in the scan's RAI frame (z superior).
    """
    ids: list[str] = []
    rows: list[list[float]] = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) != 1 + 3 * len(LOCATE_CHANNELS):
                raise ValueError(f"{path}:{line_number}: expected an id and {3 * len(LOCATE_CHANNELS)} "
                                 f"coordinates, got {len(row) - 1} values")
            try:
                rows.append([float(value) for value in row[1:]])
            except ValueError:
                raise ValueError(f"{path}:{line_number}: non-numeric coordinate") from None
            ids.append(row[0].strip())
    landmarks = np.asarray(rows, dtype=float).reshape(len(rows), len(LOCATE_CHANNELS), 3)
    return tuple(ids), landmarks


def _present_chain(spine_mm: np.ndarray) -> list[int]:
    """Labels annotated in one spine (26, 3), from the head down."""
    column = {label: k for k, label in enumerate(LOCATE_CHANNELS)}
    return [label for label in CHAIN_LABELS if np.all(np.isfinite(spine_mm[column[label]]))]


def _fit_step_model(
    spine_of: np.ndarray, step_of: np.ndarray, log_d: np.ndarray, n_spines: int, n_steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alternating means for ``log d = m[step] + g[spine] + e``; returns m, g (shrunk), residuals."""
    per_spine = np.bincount(spine_of, minlength=n_spines).astype(float)
    per_step = np.bincount(step_of, minlength=n_steps).astype(float)
    g = np.zeros(n_spines)
    m = np.zeros(n_steps)
    for _ in range(50):
        m = np.bincount(step_of, log_d - g[spine_of], minlength=n_steps) / np.maximum(per_step, 1.0)
        g = np.bincount(spine_of, log_d - m[step_of], minlength=n_spines) / (per_spine + 1.0)
        g -= np.average(g, weights=per_spine) if per_spine.sum() else 0.0
    return m, g, log_d - m[step_of] - g[spine_of]


def fit(
    landmarks_mm: np.ndarray,
    *,
    source: str = "",
    shrinkage: float = 5.0,
    minsacrum_room_mm: float = 40.0,
    sacrum_below: np.ndarray | None = None,
) -> LabellingPrior:
    """Fit step lengths, spine size spread, chord ratios, variant frequencies and chain ends.

    ``landmarks_mm``: (S, 26, 3) centroids in mm, columns in ``LOCATE_CHANNELS`` order,
    nan where absent, z superior with its origin at the scan's lower edge (as
    :func:`read_landmarks` returns them). ``sacrum_below`` (S,) bool, where given, says
    whether each spine's last vertebra sits on the sacrum, instead of its height over the
    scan's edge. See the module docstring for the model.
    """
    landmarks_mm = np.asarray(landmarks_mm, dtype=float)
    if landmarks_mm.ndim != 3 or landmarks_mm.shape[1:] != (len(LOCATE_CHANNELS), 3):
        raise ValueError(f"landmarks must have shape (S, {len(LOCATE_CHANNELS)}, 3), got {landmarks_mm.shape}")
    if shrinkage < 0 or minsacrum_room_mm < 0:
        raise ValueError("shrinkage and minsacrum_room_mm must be non-negative")
    if sacrum_below is not None and np.shape(sacrum_below) != (len(landmarks_mm),):
        raise ValueError(f"sacrum_below must have shape ({len(landmarks_mm)},)")
    steps = chain_steps()
    step_index = {step: k for k, step in enumerate(steps)}
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    first_counts = np.zeros(len(CHAIN_LABELS))
    last_counts = np.zeros(len(CHAIN_LABELS))
    column = {label: k for k, label in enumerate(LOCATE_CHANNELS)}

    spine_of: list[int] = []
    step_of: list[int] = []
    log_d: list[float] = []
    pair_counts: dict[tuple[int, int], int] = {}
    chords: dict[int, list[float]] = {2: [], 3: []}
    angles: list[float] = []
    for s, spine in enumerate(landmarks_mm):
        chain = _present_chain(spine)
        points = np.array([spine[column[label]] for label in chain]).reshape(-1, 3)
        lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
        for k, (a, b) in enumerate(itertools.pairwise(chain)):
            if (a, b) not in step_index or lengths[k] <= 0:
                log.debug("spine %d: %s -> %s is not an allowed step; gap skipped", s, name_of(a), name_of(b))
                continue
            spine_of.append(s)
            step_of.append(step_index[(a, b)])
            log_d.append(math.log(lengths[k]))
            pair_counts[(a, b)] = pair_counts.get((a, b), 0) + 1
        for k in range(1, len(chain) - 2):
            step, chord = points[k + 1] - points[k], points[k + 2] - points[k - 1]
            cosine = step @ chord / max(float(np.linalg.norm(step) * np.linalg.norm(chord)), 1e-12)
            angles.append(math.acos(min(1.0, max(-1.0, float(cosine)))))
        for n in (2, 3):
            for k in range(len(chain) - n):
                arc = lengths[k:k + n].sum()
                if arc > 0:
                    chords[n].append(float(np.linalg.norm(points[k + n] - points[k]) / arc))
        if chain:
            first_counts[rank[chain[0]]] += 1
            last_counts[rank[chain[-1]]] += 1
        on_sacrum = (spine[column[chain[-1]], 2] >= minsacrum_room_mm if sacrum_below is None
                     else bool(sacrum_below[s])) if chain else False
        if chain and chain[-1] in (23, 24, 25) and on_sacrum:
            pair_counts[(chain[-1], SACRUM)] = pair_counts.get((chain[-1], SACRUM), 0) + 1
    if not log_d:
        raise ValueError("no consecutive vertebrae in the landmarks: nothing to fit")

    spine_arr, step_arr, log_arr = np.array(spine_of), np.array(step_of), np.array(log_d)
    m, _, residual = _fit_step_model(spine_arr, step_arr, log_arr, len(landmarks_mm), len(steps))
    counts = np.bincount(step_arr, minlength=len(steps))
    pooled_var = float(np.mean(residual**2))
    step_var = np.bincount(step_arr, residual**2, minlength=len(steps))
    log_sd = np.sqrt((step_var + shrinkage * pooled_var) / (counts + shrinkage))

    normal = _normal_steps()
    log_mean = m.copy()
    for k, (a, b) in enumerate(steps):
        if (a, b) in normal:
            continue
        reference = [m[step_index[p]] for p in normal if (p[0] == a or p[1] == b) and counts[step_index[p]]]
        if not reference:
            reference = [m[step_index[p]] for p in normal if p[1] == a and counts[step_index[p]]]
        if reference:
            log_mean[k] = (counts[k] * m[k] + shrinkage * float(np.mean(reference))) / (counts[k] + shrinkage)
    if np.any(counts[[step_index[p] for p in normal]] == 0):
        raise ValueError("the landmarks do not cover every normal step C1..L5: cannot fit")

    # Spine size factor: mean residual of spines with at least 5 steps, unshrunk.
    per_spine = np.bincount(spine_arr, minlength=len(landmarks_mm))
    size = np.bincount(spine_arr, log_arr - log_mean[step_arr], minlength=len(landmarks_mm))
    well_sampled = per_spine >= 5
    scale_log_sd = float(np.std(size[well_sampled] / per_spine[well_sampled])) if well_sampled.sum() > 1 else 0.0

    branches: list[BranchPrior] = []
    for a in CHAIN_LABELS:
        options = allowed_next(a)
        if len(options) < 2:
            continue
        total = sum(pair_counts.get((a, b), 0) for b in options)
        for b in options:
            count = pair_counts.get((a, b), 0)
            branches.append(BranchPrior(a, b, count, (count + 0.5) / (total + 0.5 * len(options))))

    prior = LabellingPrior(
        steps=tuple(StepPrior(a, b, int(counts[k]), float(log_mean[k]), float(log_sd[k]))
                    for k, (a, b) in enumerate(steps)),
        branches=tuple(branches),
        scale_log_sd=scale_log_sd,
        chord_ratio=(float(np.mean(chords[2])) if chords[2] else 1.0,
                     float(np.mean(chords[3])) if chords[3] else 1.0),
        direction_sd_rad=float(np.sqrt(np.mean(np.square(angles)))) if angles else 0.2,
        scans=len(landmarks_mm),
        source=source,
        first_probability=_jeffreys(first_counts),
        last_probability=_jeffreys(last_counts),
    )
    _check_prior(prior)
    return prior


def _jeffreys(counts: np.ndarray) -> tuple[float, ...]:
    """``(count + 0.5) / (total + 0.5 K)`` over K outcomes."""
    return tuple(float(p) for p in (counts + 0.5) / (counts.sum() + 0.5 * len(counts)))


def vid_landmarks(scans: Sequence[VidScan]) -> tuple[np.ndarray, np.ndarray]:
    """VID ground truth as landmarks: (S, 26, 3) body centroids (world mm, LPS, z superior) in
    ``LOCATE_CHANNELS`` order, nan where absent, and (S,) ``sacrum_below`` (last label L4, L5 or L6;
    see the module docstring)."""
    column = {label: k for k, label in enumerate(LOCATE_CHANNELS)}
    out = np.full((len(scans), len(LOCATE_CHANNELS), 3), np.nan)
    sacrum = np.zeros(len(scans), dtype=bool)
    for s, scan in enumerate(scans):
        for label, point in zip(scan.truth_labels, scan.truth_mm, strict=True):
            out[s, column[int(label)]] = point
        present = _present_chain(out[s])
        sacrum[s] = bool(present) and present[-1] in (23, 24, 25)
    return out, sacrum


def load_default() -> LabellingPrior:
    """The prior shipped beside this module (``labelling_prior.json``)."""
    return LabellingPrior.load(DEFAULT_PRIOR_PATH)


def sacrum_room(landmarks_mm: np.ndarray) -> np.ndarray:
    """(S,) height (mm) of each spine's last annotated vertebra over the scan's lower edge (RAI frame)."""
    column = {label: k for k, label in enumerate(LOCATE_CHANNELS)}
    out = np.zeros(len(landmarks_mm))
    for s, spine in enumerate(landmarks_mm):
        chain = _present_chain(spine)
        out[s] = spine[column[chain[-1]], 2] if chain else 0.0
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m algorithm.labelling_prior --landmarks CSV --out JSON``."""
    parser = argparse.ArgumentParser(description="Fit the vertebra-chain prior on annotated centroids.")
    parser.add_argument("--landmarks", type=Path, required=True,
                        help="landmarks.csv: id, then 26 x,y,z in mm (C1-C7, T1-T12, L1-L6, T13)")
    parser.add_argument("--vid", type=Path, default=None,
                        help="VID dataset folder (GroundTruth/*.json): its spines join the fit")
    parser.add_argument("--out", type=Path, default=DEFAULT_PRIOR_PATH, help="JSON file to write")
    parser.add_argument("--shrinkage", type=float, default=5.0, help="pseudo-count for rare steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.landmarks.is_file():
        parser.error(f"no such file: {args.landmarks}")
    if args.vid is not None and not (args.vid / "GroundTruth").is_dir():
        parser.error(f"no GroundTruth folder in {args.vid}")
    _, landmarks = read_landmarks(args.landmarks)
    sacrum_below, source = None, args.landmarks.name
    if args.vid is not None:
        verse_sacrum = sacrum_room(landmarks) >= 40.0
        vid, vid_sacrum = vid_landmarks([read_scan(args.vid, scan) for scan in scan_ids(args.vid)])
        landmarks = np.concatenate([landmarks, vid])
        sacrum_below = np.concatenate([verse_sacrum, vid_sacrum])
        source += f" + VID ground truth ({len(vid)} scans)"
    prior = fit(landmarks, source=source, shrinkage=args.shrinkage, sacrum_below=sacrum_below)
    prior.save(args.out)
    log.info("fitted on %d scans; wrote %s", prior.scans, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

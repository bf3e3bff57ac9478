"""What a user knows about a spine, as hard constraints on the chain decoder.

Two kinds of facts (:class:`Constraints`):

- **fixes**: "the candidate nearest this world point (LPS mm) is vertebra l" (``--fix L5=x,y,z``);
- **spine-level facts**: the number of lumbar (4, 5, 6) and thoracic (11, 12, 13) vertebrae
  (``--lumbar``, ``--thoracic``).

The decoder returns the best labelling consistent with all of them, exactly: they enter the
model, not a relabelling afterwards (:mod:`algorithm.labelling`, item 8):

- a fixed candidate can take only its label, and the chain must run through it: no step passes
  over it, no chain starts below it or ends above it, and rejecting every candidate is no
  longer a labelling;
- a spine-level fact decides the variant branches (T11 -> T12 or L1, T12 -> T13 or L1, L4 -> L5
  or the sacrum, L5 -> L6 or the sacrum): the label paths it rules out are removed and the one
  it leaves gets probability 1, the prior's variant frequencies conditioned on the fact; labels
  the spine does not have (T13 of a 12-thoracic spine, L6 of a 5-lumbar one) are impossible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spine.labels import EVALUATED, label_of, name_of

__all__ = ["FIX_REACH_MM", "Constraints", "Fix", "FarFix", "changes", "parse_fix"]

_T11, _T12, _T13, _L1, _L4, _L5, _L6, _SACRUM = 18, 19, 28, 20, 23, 24, 25, 26
FIX_REACH_MM = 20.0
"""Farthest a fix may lie from its candidate. A click inside a vertebral body lies within its half height and
depth of the body's centre (lumbar bodies ~30 mm high and deep, so <= ~15-20 mm from any point of the body); the
next candidate is a whole level away (15-38 mm). A point beyond 20 mm of every candidate is almost always a
coordinate mix-up (RAS given for LPS, a point from another scan), and snapping it to the nearest candidate would
relabel the whole spine around a vertebra the user never meant."""
LUMBAR_COUNTS = (4, 5, 6)
THORACIC_COUNTS = (11, 12, 13)


@dataclass(frozen=True)
class Fix:
    """The candidate nearest ``point_mm`` (LPS mm) is vertebra ``label`` (a VerSe id)."""

    label: int
    point_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "point_mm", tuple(float(c) for c in self.point_mm))
        if int(self.label) not in EVALUATED:
            raise ValueError(f"cannot fix {self.label!r}: not one of C1..L6, T13")
        if len(self.point_mm) != 3 or not all(math.isfinite(c) for c in self.point_mm):
            raise ValueError(f"fix {name_of(self.label)}: the point needs three finite coordinates")

    def __str__(self) -> str:
        return f"{name_of(self.label)}=" + ",".join(f"{c:g}" for c in self.point_mm)


def parse_fix(text: str) -> Fix:
    """``"L5=12.5,-30,401"`` -> :class:`Fix`; ValueError saying what is wrong."""
    match = re.fullmatch(r"\s*([A-Za-z0-9]+)\s*=\s*([^,]+),([^,]+),([^,]+)\s*", text)
    if match is None:
        raise ValueError(f"{text!r}: expected LABEL=x,y,z (LPS mm), e.g. L5=12.5,-30,401")
    try:
        label = label_of(match.group(1))
        point = tuple(float(match.group(k)) for k in (2, 3, 4))
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    return Fix(label, point)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FarFix:
    """A fix farther than :data:`FIX_REACH_MM` from every candidate: the nearest candidate and its distance, and
    the distance from the point read as RAS (x and y negated) to its own nearest candidate."""

    fix: Fix
    candidate: int
    distance_mm: float
    candidate_mm: tuple[float, float, float]
    as_ras_distance_mm: float

    def likely_cause(self) -> str:
        """RAS given for LPS when the point with x and y negated lands on a candidate, else another scan's point."""
        if self.as_ras_distance_mm <= FIX_REACH_MM:
            x, y, z = self.fix.point_mm
            return (f"RAS given for LPS? negated (--fix {name_of(self.fix.label)}={-x:g},{-y:g},{z:g}) it lies "
                    f"{self.as_ras_distance_mm:.1f} mm from a candidate")
        return "a point from another scan or another coordinate system? (LPS mm of this CT expected)"


@dataclass(frozen=True)
class Constraints:
    """Facts the labelling must respect (module docstring); the empty default constrains nothing."""

    fixes: tuple[Fix, ...] = ()
    lumbar: int | None = None
    thoracic: int | None = None

    def __post_init__(self) -> None:
        if self.lumbar is not None and self.lumbar not in LUMBAR_COUNTS:
            raise ValueError(f"lumbar count must be one of {LUMBAR_COUNTS}, got {self.lumbar}")
        if self.thoracic is not None and self.thoracic not in THORACIC_COUNTS:
            raise ValueError(f"thoracic count must be one of {THORACIC_COUNTS}, got {self.thoracic}")
        for fix in self.fixes:
            if fix.label in self.forbidden_labels:
                raise ValueError(f"--fix {fix} contradicts {self._facts_text()}: that spine has no "
                                 f"{name_of(fix.label)}")

    def __bool__(self) -> bool:
        return bool(self.fixes) or self.lumbar is not None or self.thoracic is not None

    @property
    def spine_facts(self) -> tuple[int | None, int | None]:
        """(lumbar, thoracic): the part that shapes the label paths (a cache key)."""
        return self.lumbar, self.thoracic

    def _facts_text(self) -> str:
        parts = ([f"--lumbar {self.lumbar}"] if self.lumbar else []) + \
                ([f"--thoracic {self.thoracic}"] if self.thoracic else [])
        return " ".join(parts)

    @property
    def successors(self) -> dict[int, int]:
        """The variant branches the facts decide: label -> the label that must follow it."""
        out: dict[int, int] = {}
        if self.thoracic is not None:
            out[_T11] = _L1 if self.thoracic == 11 else _T12
            if self.thoracic != 11:
                out[_T12] = _T13 if self.thoracic == 13 else _L1
        if self.lumbar is not None:
            out[_L4] = _SACRUM if self.lumbar == 4 else _L5
            if self.lumbar != 4:
                out[_L5] = _L6 if self.lumbar == 6 else _SACRUM
        return out

    @property
    def forbidden_labels(self) -> frozenset[int]:
        """Labels the stated spine does not have."""
        out = set()
        if self.thoracic == 11:
            out |= {_T12, _T13}
        elif self.thoracic == 12:
            out.add(_T13)
        if self.lumbar == 4:
            out |= {_L5, _L6}
        elif self.lumbar == 5:
            out.add(_L6)
        return frozenset(out)

    def allows_step(self, source: int, target: int) -> bool:
        """Whether one anatomical step ``source -> target`` is possible in the stated spine."""
        decided = self.successors.get(source)
        return target not in self.forbidden_labels and (decided is None or decided == target)

    def branch_log_probability(self, source: int, target: int, prior_probability: float) -> float:
        """``log P(target follows source | facts)``: 0 where the facts decide the branch, else the prior's."""
        if not self.allows_step(source, target):
            return -math.inf
        return 0.0 if source in self.successors else math.log(prior_probability)

    def fixed_candidates(self, positions_mm: np.ndarray) -> dict[int, int]:
        """{candidate index: label} of the fixes, each on the candidate nearest its point.

        ValueError when two fixes fall on one candidate with different labels, or one label is
        fixed on two candidates.
        """
        out: dict[int, int] = {}
        positions = np.asarray(positions_mm, dtype=float).reshape(-1, 3)
        for fix in self.fixes:
            if not len(positions):
                raise ValueError(f"--fix {fix}: there is no candidate to fix")
            k = int(np.argmin(np.linalg.norm(positions - np.asarray(fix.point_mm), axis=1)))
            if out.get(k, fix.label) != fix.label:
                raise ValueError(f"--fix {fix} and --fix {name_of(out[k])}=... fall on the same candidate "
                                 f"at {np.round(positions[k], 1).tolist()}")
            out[k] = fix.label
        labels = list(out.values())
        repeated = sorted({v for v in labels if labels.count(v) > 1})
        if repeated:
            raise ValueError(f"{name_of(repeated[0])} is fixed on two different candidates")
        return out

    def far_fixes(self, positions_mm: np.ndarray, reach_mm: float = FIX_REACH_MM) -> list[FarFix]:
        """The fixes whose point lies farther than ``reach_mm`` from every candidate (``positions_mm`` (N, 3) LPS).

        Distance is Euclidean, ``d = min_k |p - c_k|``; the RAS reading negates the point's x and y
        (``(-x, -y, z)``), which is what a coordinate copied from 3D Slicer's RAS readout needs.
        """
        positions = np.asarray(positions_mm, dtype=float).reshape(-1, 3)
        if not len(positions):
            return []
        out = []
        for fix in self.fixes:
            point = np.asarray(fix.point_mm)
            distance = np.linalg.norm(positions - point, axis=1)
            k = int(np.argmin(distance))
            if distance[k] > reach_mm:
                as_ras = float(np.linalg.norm(positions - point * np.array([-1.0, -1.0, 1.0]), axis=1).min())
                out.append(FarFix(fix, k, float(distance[k]), tuple(float(c) for c in positions[k]),  # type: ignore[arg-type]
                                  as_ras))
        return out

    def describe(self, positions_mm: np.ndarray | None = None) -> dict[str, Any]:
        """The constraints as the run report lists them (with each fix's candidate and distance)."""
        out: dict[str, Any] = {}
        if self.lumbar is not None:
            out["lumbar"] = self.lumbar
        if self.thoracic is not None:
            out["thoracic"] = self.thoracic
        if self.fixes:
            fixes = []
            for fix in self.fixes:
                entry: dict[str, Any] = {"label": name_of(fix.label), "point_mm": list(fix.point_mm)}
                if positions_mm is not None and len(positions_mm):
                    distance = np.linalg.norm(np.asarray(positions_mm) - np.asarray(fix.point_mm), axis=1)
                    k = int(np.argmin(distance))
                    entry |= {"candidate_mm": [round(float(c), 2) for c in positions_mm[k]],
                              "distance_mm": round(float(distance[k]), 2)}
                fixes.append(entry)
            out["fix"] = fixes
        return out


def changes(positions_mm: np.ndarray, free: Sequence[int], constrained: Sequence[int]) -> list[dict[str, Any]]:
    """The candidates whose label the constraints changed, head to foot: position, label without and with."""
    def name(label: int) -> str:
        return name_of(label) if label else "rejected"

    rows = [(float(p[2]), {"position_mm": [round(float(c), 2) for c in p], "from": name(int(a)), "to": name(int(b))})
            for p, a, b in zip(np.asarray(positions_mm), free, constrained, strict=True) if int(a) != int(b)]
    return [row for _, row in sorted(rows, key=lambda r: -r[0])]

"""The levels a labelled chain passes over, and where they lie.

The decoder (:mod:`algorithm.labelling`, item 3) may join two consecutive chain members by a label path of
``k > 1`` anatomical steps: ``k - 1`` vertebrae it judges to be there, between the two, with no candidate of
their own (a body the locate stage did not find, or two outlines merged). Their names are then right and
their points missing: every one counts as a miss in the identification rate and in Dice, although the chain
itself says where it is. Walking the spine one vertebra at a time (Lessmann et al., Medical Image Analysis
2019) finds such a vertebra by stepping one body along the chain; here the step is the prior's own.

For consecutive labelled members ``a`` (head end, at ``x_a``) and ``b`` (at ``x_b``) where ``b`` cannot
directly follow ``a`` (:func:`spine.labels.allowed_next`), the levels passed over are the most probable
label path from ``a`` to ``b`` under the prior's variant branches (normal anatomy: the plain sequence; the
11-thoracic step T11 -> L1 and the T12 -> L1 step are direct and pass over nothing), and the ``j``-th of
them lies at

    x_a + (m_1 + ... + m_j) / (m_1 + ... + m_k) (x_b - x_a)

with ``m_i`` the prior's median length of the path's ``i``-th step: on the straight line between the two,
spaced as a spine of the average proportions is (C2-C3 longer than C3-C4, the thoracic steps growing).

A vertebra needs room: nothing is placed where the gap ``|x_b - x_a|`` is shorter than :data:`MIN_ROOM` (1.2)
times ``s`` times the path's length without its shortest step (for one level passed over: its longer step), with
``s`` this spine's own size (the median, over the chain's direct steps, of each step's length over the prior's
median; 1 without any). A shorter gap holds no more steps than members: the decoder took a skip there for the
evidence (names pulled apart by the network's level scores), not for room.
Measured after the fact, not chosen by it: on the VID detections with one body removed per scan every right
placement had a gap of at least 1.52 such steps, and on the real necks of OpenKBP ``dev`` and ``fit`` 1.32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np

from algorithm.labelling.chain import label_paths
from algorithm.labelling_prior import LabellingPrior
from spine.labels import allowed_next, name_of

__all__ = ["MAX_PASSED", "MIN_ROOM", "Skipped", "passed_over", "size_factor", "skipped_levels"]

MAX_PASSED = 3
"""At most this many levels between two members are placed (the decoder's own ``max_skips`` default is 2)."""
MIN_ROOM = 1.2
"""A gap must be this many times its expected length without its shortest step to hold the levels it passes over
(module docstring), fixed a priori: a step's length varies by 3-8 % within a spine (the prior's log sd), the
spine's size by more, and 20 % over what one step fewer would need leaves a gap that holds the steps."""


@dataclass(frozen=True)
class Skipped:
    """One level the chain passes over: its VerSe label, its estimated position (LPS mm), and the labels of the
    two members it lies between."""

    label: int
    position_mm: np.ndarray
    between: tuple[int, int]

    def __str__(self) -> str:
        return f"{name_of(self.label)} (between {name_of(self.between[0])} and {name_of(self.between[1])})"


def passed_over(source: int, target: int, prior: LabellingPrior, *, max_passed: int = MAX_PASSED) -> tuple[int, ...]:
    """The labels strictly between ``source`` and ``target`` on the most probable of the decoder's own label paths
    (:func:`algorithm.labelling.chain.label_paths`, weighted by the prior's variant branches; module docstring);
    () where ``target`` may directly follow ``source``, no path of at most ``max_passed`` levels joins them, or
    either is the sacrum or coccyx (not a level the chain places)."""
    if target in allowed_next(source):
        return ()
    joining = [path for path in _paths(max_passed + 1) if path[0] == source and path[-1] == target]
    if not joining:
        return ()
    best = max(joining, key=lambda path: math.prod(prior.branch_probability(a, b) for a, b in pairwise(path)))
    return best[1:-1]


@lru_cache(maxsize=4)
def _paths(max_steps: int) -> tuple[tuple[int, ...], ...]:
    """The decoder's label paths of 2..max_steps steps between evaluated vertebrae."""
    return tuple(path for path in label_paths(max_steps) if len(path) > 2)


def size_factor(labels: Sequence[int], positions_mm: np.ndarray, prior: LabellingPrior) -> float:
    """This spine's size against the prior's: the median over the chain's direct steps (``b`` may follow ``a``) of
    the step's length over the prior's median; 1 without a direct step."""
    ratios = [float(np.linalg.norm(xb - xa)) / prior.step(int(a), int(b)).median_mm
              for (a, xa), (b, xb) in pairwise(zip(labels, np.asarray(positions_mm, dtype=np.float64), strict=True))
              if int(b) in allowed_next(int(a)) and int(b) not in (26, 27)]
    return float(np.median(ratios)) if ratios else 1.0


def skipped_levels(labels: Sequence[int], positions_mm: np.ndarray, prior: LabellingPrior, *,
                   max_passed: int = MAX_PASSED, min_room: float = MIN_ROOM) -> list[Skipped]:
    """The levels passed over between consecutive members of a labelled chain (module docstring), where the gap
    has room for them.

    ``labels``: the accepted members' VerSe labels in chain order (head to foot); ``positions_mm``: their
    (N, 3) LPS positions in the same order. Returns the skipped levels head to foot.
    """
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    if len(labels) != len(positions):
        raise ValueError(f"{len(labels)} labels for {len(positions)} positions")
    size = size_factor(labels, positions, prior)
    out = []
    for (a, xa), (b, xb) in pairwise(zip(labels, positions, strict=True)):
        between = passed_over(int(a), int(b), prior, max_passed=max_passed)
        if not between:
            continue
        path = (int(a), *between, int(b))
        lengths = np.array([prior.step(s, t).median_mm for s, t in pairwise(path)])
        if float(np.linalg.norm(xb - xa)) < min_room * size * float(lengths.sum() - lengths.min()):
            continue
        fractions = np.cumsum(lengths)[:-1] / lengths.sum()
        out.extend(Skipped(label, xa + f * (xb - xa), (int(a), int(b)))
                   for label, f in zip(between, fractions, strict=True))
    return out

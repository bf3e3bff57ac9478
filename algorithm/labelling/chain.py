"""The chain model's tables: label paths between consecutive members and the feasible steps of a case.

See :mod:`algorithm.labelling` (item 3) for the step model. Labels are chain ranks
(``CHAIN_LABELS`` order, C1..T12, T13, L1..L6).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from algorithm.labelling.constraints import Constraints
from algorithm.labelling_prior import CHAIN_LABELS, LabellingPrior
from spine.labels import EVALUATED, allowed_next

__all__ = ["IMPOSSIBLE", "N_LABELS", "Edges", "Sweep", "Tables", "build_edges", "label_paths", "logsumexp", "pairs",
           "sweep", "visit_log_probability"]

N_LABELS = len(CHAIN_LABELS)

@dataclass(frozen=True)
class Edges:
    """Label paths joining two consecutive chain members; arrays of length E, labels as chain ranks.

    ``log_mean``: log of the path's mean length (mm); ``inv_tau``: 1 / its log-length sd;
    ``log_norm``: ``log_prior - log(tau sqrt(2 pi))``, the path's score at its mean length.
    """

    source: np.ndarray
    target: np.ndarray
    log_mean: np.ndarray
    inv_tau: np.ndarray
    log_norm: np.ndarray


def label_paths(max_steps: int) -> list[tuple[int, ...]]:
    """All label paths of 1..max_steps allowed steps between evaluated vertebrae."""
    paths: list[tuple[int, ...]] = []
    frontier = [(label,) for label in CHAIN_LABELS]
    for _ in range(max_steps):
        frontier = [(*path, nxt) for path in frontier for nxt in allowed_next(path[-1]) if nxt in EVALUATED]
        paths.extend(frontier)
    return paths


def build_edges(prior: LabellingPrior, *, max_skips: int, miss_probability: float,
                 position_sd_mm: float, size_var: float, constraints: Constraints | None = None) -> Edges:
    """Turn the prior into one edge per label path (see the module docstring, item 3).

    With ``constraints``, only the paths the stated spine allows, their variant branches
    conditioned on its facts (:mod:`algorithm.labelling.constraints`).
    """
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    rows = []
    for path in label_paths(max_skips + 1):
        if constraints is not None and not all(constraints.allows_step(a, b) for a, b in itertools.pairwise(path)):
            continue
        n_steps = len(path) - 1
        steps = [prior.step(a, b) for a, b in itertools.pairwise(path)]
        medians = np.array([s.median_mm for s in steps])
        sds = np.array([s.log_sd for s in steps])
        chord = 1.0 if n_steps == 1 else prior.chord_ratio[min(n_steps, 3) - 2]
        mean_mm = chord * medians.sum()
        tau2 = (float((medians**2 * sds**2).sum() / medians.sum() ** 2) + size_var
                + 2 * position_sd_mm**2 / mean_mm**2)
        log_prior = (sum(math.log(prior.branch_probability(a, b)) if constraints is None
                         else constraints.branch_log_probability(a, b, prior.branch_probability(a, b))
                         for a, b in itertools.pairwise(path))
                     + (n_steps - 1) * math.log(miss_probability) + math.log1p(-miss_probability))
        rows.append((rank[path[0]], rank[path[-1]], log_prior, math.log(mean_mm), math.sqrt(tau2)))
    source, target, log_prior, log_mean, tau = (np.array(c) for c in zip(*rows, strict=True))
    return Edges(source.astype(np.intp), target.astype(np.intp), log_mean, 1.0 / tau,
                  log_prior - np.log(tau * math.sqrt(2 * math.pi)))


def visit_log_probability(prior: LabellingPrior, constraints: Constraints | None = None) -> np.ndarray:
    """(L,) ``log P(the spine has label l)`` in chain order: what a chain's first member pays for its variant.

    The variants are a Markov chain over the labels, head to foot, with the prior's branch
    probabilities (``P(C1) = 1``, ``P(b) = sum over a -> b of P(a) P(b | a)``; conditioned on the
    stated spine's facts with ``constraints``). A chain whose steps run through a branch pays it on
    the step (:func:`build_edges`); a chain that starts on a variant label (T13, L6) or a label only
    some spines have (T12, L5) pays it here, so that a lone T13 costs what T12 -> T13 costs. What
    follows the chain's last member is out of view, summed over: the end pays nothing. ``IMPOSSIBLE``
    for a label the stated spine does not have.
    """
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    visit = np.zeros(N_LABELS)
    visit[0] = 1.0
    for a in CHAIN_LABELS:  # chain order is a topological order of the steps
        for b in allowed_next(a):
            if b not in rank:
                continue
            p = prior.branch_probability(a, b)
            if constraints is not None:
                p = math.exp(constraints.branch_log_probability(a, b, p))
            visit[rank[b]] += visit[rank[a]] * p
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(np.minimum(visit, 1.0)), IMPOSSIBLE)


@lru_cache(maxsize=64)
def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (j, i), j < i, of n ordered candidates (cached, read-only: the same n recurs)."""
    j, i = np.triu_indices(n, 1)
    j.flags.writeable = i.flags.writeable = False
    return j, i


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``; -inf where every term is -inf."""
    peak = np.max(x, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - safe), axis=axis, keepdims=True)) + safe
    return np.squeeze(out, axis=axis)


IMPOSSIBLE = -1.0e4
"""Log score of an impossible step: finite so the passes need no inf guards, yet far below any
chain's total (bounded by a few hundred nats), so it never wins and its exp is exactly 0."""


@dataclass(frozen=True)
class Sweep:
    """The feasible steps sorted for one pass, grouped by the candidate being updated.

    Forward pass: steps sorted by (i, target label), ``other`` = flat state index
    ``j * L + source`` of the predecessor. Backward pass: sorted by (j, source label),
    ``other`` = ``i * L + target``. For candidate k, its steps are
    ``bounds[k]:bounds[k + 1]``; its label segments are ``segment_bounds[k]:segment_bounds[k + 1]``
    of ``starts`` (relative to the candidate's first step) and ``labels``.
    """

    order: np.ndarray
    other: np.ndarray
    bounds: list[int]
    starts: np.ndarray
    labels: np.ndarray
    segment_bounds: list[int]


def sweep(node: np.ndarray, label: np.ndarray, other: np.ndarray, n: int) -> Sweep:
    """Sort steps by (node, label) and find the segments of equal (node, label)."""
    key = node * N_LABELS + label
    small = n * N_LABELS <= np.iinfo(np.int16).max  # 16-bit keys sort by radix, in linear time
    order = np.argsort(key.astype(np.int16) if small else key, kind="stable")
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=np.intp)
    bounds = np.searchsorted(key, np.arange(n + 1) * N_LABELS)
    segment_node = key[first] // N_LABELS
    segment_bounds = np.searchsorted(segment_node, np.arange(n + 1))
    starts = first - bounds[segment_node]
    return Sweep(order, other[order], bounds.tolist(), starts, key[first] % N_LABELS, segment_bounds.tolist())


@dataclass(frozen=True)
class Tables:
    """Per-case DP tables on the ordered candidates (H = offsets x scales hypotheses, N candidates,
    L labels, F steps).

    A step is a triple (j, i, edge), j < i, whose distance lies within ``max_z`` standard
    deviations of the edge's mean at some scale. ``emission`` (H, N, L) is in chain-rank
    order; ``step`` and ``forward_step`` / ``backward_step`` (H, F) hold the steps' log scores in each
    sweep's order (``IMPOSSIBLE`` at scales outside ``max_z``). ``start`` and ``end`` (N, L): the log
    odds of a chain starting / ending on each state (the prior's chain ends, zeros = none; ``IMPOSSIBLE``
    where a constraint forbids it). ``required``: some candidate must be in the chain (a fixed one), so
    rejecting them all is not a labelling.
    """

    emission: np.ndarray
    j: np.ndarray
    i: np.ndarray
    source: np.ndarray
    target: np.ndarray
    step: np.ndarray
    forward: Sweep
    forward_step: np.ndarray
    backward: Sweep
    backward_step: np.ndarray
    start: np.ndarray
    end: np.ndarray
    required: bool = False


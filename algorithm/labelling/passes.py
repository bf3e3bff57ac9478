"""Inference on the chain tables: Viterbi and sum-product passes, and the Viterbi back-track.

Every pass runs over H hypotheses (lost-count offset x spine size) at once; arrays are
(H, N, L) over hypotheses, ordered candidates and chain-rank labels.
"""

from __future__ import annotations

import numpy as np

from algorithm.labelling.chain import N_LABELS as _N_LABELS
from algorithm.labelling.chain import Tables

__all__ = ["backward", "forward", "trace"]


def forward(t: Tables, *, posterior: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Viterbi scores V and sum-product alpha A, both (H, N, L): best / all chains ending at (i, l).

    ``V[i, b] = w[i, b] + max(start[b], max over steps (j, a) -> (i, b) of V[j, a] + step)`` and
    ``A[i, b] = w[i, b] + log(exp(start[b]) + sum over the same steps of exp(A[j, a] + step))``;
    ``start[i, b]`` is the chain starting at (i, b). Both are computed in one stacked array;
    A only with ``posterior``.
    """
    n_scales, n = t.emission.shape[:2]  # n_scales: the hypotheses (offset, scale)
    rows = 2 * n_scales if posterior else n_scales
    started = t.emission + t.start  # every state first holds its chain starting there
    state = np.concatenate([started, started]) if posterior else started  # [V; A]
    flat = state.reshape(rows, n * _N_LABELS)
    sweep = t.forward
    step = np.concatenate([t.forward_step, t.forward_step]) if posterior else t.forward_step
    for i in range(1, n):
        lo, hi = sweep.bounds[i], sweep.bounds[i + 1]
        if lo == hi:
            continue
        segments = slice(sweep.segment_bounds[i], sweep.segment_bounds[i + 1])
        starts, labels = sweep.starts[segments], sweep.labels[segments]
        via = flat.take(sweep.other[lo:hi], axis=1) + step[:, lo:hi]  # (rows, F_i)
        start = t.start[i, labels]
        best = np.maximum(np.maximum.reduceat(via[:n_scales], starts, axis=1) - start, 0.0)
        if not posterior:
            state[:, i, labels] += best
            continue
        peak = via[n_scales:].max(axis=1, keepdims=True)
        total = np.log(np.add.reduceat(np.exp(via[n_scales:] - peak), starts, axis=1)) + peak
        state[:, i, labels] += np.concatenate([best, np.logaddexp(total - start, 0.0)])
    return state[:n_scales], (state[n_scales:] if posterior else None)


def backward(t: Tables) -> np.ndarray:
    """Sum-product beta (H, N, L): all continuations after (j, a), the chain ending there included.

    ``beta[j, a] = log(exp(end[j, a]) + sum over steps (j, a) -> (i, b) of exp(step + w[i, b] + beta[i, b]))``.
    """
    n_scales, n = t.emission.shape[:2]  # n_scales: the hypotheses (offset, scale)
    beta = np.broadcast_to(t.end, (n_scales, n, _N_LABELS)).copy()
    onward_flat = (t.emission + beta).reshape(n_scales, n * _N_LABELS)  # w + beta, updated as we go
    sweep, step = t.backward, t.backward_step
    for j in range(n - 2, -1, -1):
        lo, hi = sweep.bounds[j], sweep.bounds[j + 1]
        if lo == hi:
            continue
        segments = slice(sweep.segment_bounds[j], sweep.segment_bounds[j + 1])
        starts, labels = sweep.starts[segments], sweep.labels[segments]
        onward = onward_flat.take(sweep.other[lo:hi], axis=1) + step[:, lo:hi]
        peak = onward.max(axis=1, keepdims=True)
        total = np.log(np.add.reduceat(np.exp(onward - peak), starts, axis=1)) + peak
        ended = t.end[j, labels]
        beta[:, j, labels] = np.logaddexp(total, ended)
        onward_flat[:, j * _N_LABELS + labels] += beta[:, j, labels] - ended
    return beta


def trace(t: Tables, best: np.ndarray, s: int, i: int, label: int) -> list[tuple[int, int]]:
    """Back-track the Viterbi chain ending at (i, label) at hypothesis s; (candidate, rank) head first."""
    sweep = t.forward
    chain = [(i, label)]
    while True:
        lo, hi = sweep.segment_bounds[i], sweep.segment_bounds[i + 1]
        k = lo + int(np.searchsorted(sweep.labels[lo:hi], label))
        if k == hi or sweep.labels[k] != label:
            break  # no step into (i, label): the chain starts here
        first = sweep.bounds[i] + int(sweep.starts[k])
        last = sweep.bounds[i] + (int(sweep.starts[k + 1]) if k + 1 < hi else sweep.bounds[i + 1] - sweep.bounds[i])
        steps = sweep.order[first:last]
        via = best[s, t.j[steps], t.source[steps]] + t.step[s, steps]
        if via.max() <= t.start[i, label]:  # the forward pass preferred starting the chain here
            break
        step = steps[int(np.argmax(via))]
        i, label = int(t.j[step]), int(t.source[step])
        chain.append((i, label))
    return chain[::-1]

"""What a detector says about each candidate, checked and put in chain order.

Two kinds of evidence, either or both per case:

* **per-level scores** (N, 26) in ``spine.labels.LOCATE_CHANNELS`` order: heatmap peaks or
  probabilities in [0, 1], one per level (a locate network's output);
* **region probabilities** (N, 3): the candidate's probabilities of being cervical,
  thoracic, lumbar, each in [0, 1] (a detector's segment head, e.g. the VID U-Net's
  ``spine_segment_probabilities``; they need not sum to 1). T13 counts as thoracic and L6 as
  lumbar, as the anatomy does.
"""

from __future__ import annotations

import numpy as np

from algorithm.labelling_prior import CHAIN_LABELS
from spine.labels import LOCATE_CHANNELS, allowed_next, anatomical_rank, region_of

__all__ = ["OFFSET_NEIGHBOURS", "RANK_TO_COLUMN", "REGION_OF_RANK", "validate"]

_SCORE_TOLERANCE = 0.1  # scores outside [-0.1, 1.1] are not evidence (logits?): refused
RANK_TO_COLUMN = np.array([LOCATE_CHANNELS.index(label) for label in CHAIN_LABELS])
"""Column of ``LOCATE_CHANNELS`` read by each chain rank."""
REGION_OF_RANK = np.array(["CTL".index(region_of(label).value[0].upper()) for label in CHAIN_LABELS])
"""Region column (0 cervical, 1 thoracic, 2 lumbar) of each chain rank."""


def _offset_neighbours() -> dict[int, np.ndarray]:
    """(L, L) boolean masks in chain-rank order: ``mask[o][r, m]`` when, under offset o, label r reads
    the evidence of label m (:mod:`algorithm.labelling`, item 5)."""
    rank = {label: k for k, label in enumerate(CHAIN_LABELS)}
    n = len(CHAIN_LABELS)
    after = np.zeros((n, n), dtype=bool)
    for label in CHAIN_LABELS:
        for nxt in allowed_next(label):
            if nxt in rank and anatomical_rank(nxt) - anatomical_rank(label) <= 1:
                after[rank[label], rank[nxt]] = True
    return {-1: after.T.copy(), 0: np.eye(n, dtype=bool), 1: after}


OFFSET_NEIGHBOURS = _offset_neighbours()


def _probabilities(values: object, name: str, columns: int, rows: int) -> np.ndarray:
    """(rows, columns) finite values within 0.1 of [0, 1], clipped to it; ValueError naming ``name``
    (plural: "scores", "regions")."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 2 or array.shape[1] != columns:
        raise ValueError(f"{name} must have shape (N, {columns}), got {array.shape}")
    if array.shape[0] != rows:
        raise ValueError(f"{rows} positions but {array.shape[0]} {name[:-1]} rows")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} hold nan or inf")
    if array.size and (array.min() < -_SCORE_TOLERANCE or array.max() > 1 + _SCORE_TOLERANCE):
        raise ValueError(f"{name} must be evidence in [0, 1] (heatmap peaks or probabilities, not logits); "
                         f"got values in [{array.min():.3g}, {array.max():.3g}]")
    return np.clip(array, 0.0, 1.0)


def validate(positions_mm: object, scores: object | None, regions: object | None
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Positions (N, 3), scores (N, 26) in ``LOCATE_CHANNELS`` order and/or regions (N, 3) C/T/L, checked.

    At least one of scores and regions is needed. ValueError with the reason.
    """
    positions = np.asarray(positions_mm, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions_mm must have shape (N, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions_mm holds nan or inf")
    if scores is None and regions is None:
        raise ValueError("need evidence: per-level scores, region probabilities, or both")
    n = len(positions)
    return (positions,
            None if scores is None else _probabilities(scores, "scores", len(LOCATE_CHANNELS), n),
            None if regions is None else _probabilities(regions, "regions", 3, n))

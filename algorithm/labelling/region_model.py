"""A detector's region (C/T/L) probabilities read as likelihood ratios, fitted on annotated detections.

The decoder's default reads a region probability ``p`` as evidence ``log(max(p, floor)) -
log(reject_evidence)`` (:mod:`algorithm.labelling`, item 2): the same for every level of a region,
and the same ``reject_evidence`` for a false detection whatever its probabilities. A real
detector's probabilities say more: a false detection has all three low (the VID U-Net's median
0.03 / 0.04 / 0.06), T12 often carries some lumbar probability and T1 some cervical. A
:class:`RegionModel` learns that from detections whose truth is known:

* classes: groups of chain ranks (:func:`class_groups`: the regions C, T, L; every level; or the
  levels next to a region boundary on their own) and "false detection" (a candidate with no
  annotated body within 20 mm);
* features ``phi(x) = (1, log p_C, log p_T, log p_L, log(1 - p_C), log(1 - p_T), log(1 - p_L))``
  (``p`` clipped to [1e-4, 1 - 1e-4]);
* a multinomial logistic regression ``P(k | x) = softmax(W phi(x))_k`` fitted by L-BFGS, L2
  penalty ``l2`` on the non-constant weights (pooled over classes, so a rare level's weights
  stay near its region's);
* the evidence of label ``l`` (class ``k(l)``) is the likelihood ratio against a false detection,
  by Bayes: ``log p(x | k) / p(x | false) = log P(k | x) - log P(k) - log P(false | x) + log P(false)``
  with ``P(k)`` the training class frequencies; every label of a group reads its group's ratio.

The decoder adds ``region_weight`` times this ratio (a weight of 1 reads it as the exact
likelihood ratio; neighbouring detections' errors are not independent, so the weight is chosen
by cross-validation, ``bench/labelling_real.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from algorithm.labelling.evidence import REGION_OF_RANK
from algorithm.labelling_prior import CHAIN_LABELS

__all__ = ["FALSE_CLASS", "RegionModel", "features", "class_groups", "fit_region_model", "training_ranks"]

FALSE_CLASS = -1
"""Training target of a false detection (chain ranks are 0..25)."""
_CLIP = 1e-4
_N_RANKS = len(REGION_OF_RANK)


def features(regions: np.ndarray) -> np.ndarray:
    """(N, 7) ``phi(x)`` of (N, 3) region probabilities (module docstring)."""
    p = np.clip(np.asarray(regions, dtype=float), _CLIP, 1.0 - _CLIP)
    return np.concatenate([np.ones((len(p), 1)), np.log(p), np.log1p(-p)], axis=1)


@dataclass(frozen=True)
class RegionModel:
    """Fitted multinomial logistic regression (module docstring).

    ``weights`` (K + 1, 7): one row per class, the last one "false detection"; ``log_class_prior``
    (K + 1,) the training class log frequencies; ``class_of_rank`` (26,): the class of each chain
    rank (the rank itself by level, its region 0/1/2 by region).
    """

    weights: np.ndarray
    log_class_prior: np.ndarray
    class_of_rank: np.ndarray

    def log_ratio(self, regions: np.ndarray) -> np.ndarray:
        """(N, 26) ``log p(x | label) - log p(x | false detection)`` in chain-rank order."""
        logits = features(regions) @ self.weights.T  # (N, K + 1)
        log_posterior = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        log_odds = log_posterior - self.log_class_prior  # log p(x | k) - log p(x), per class
        return log_odds[:, self.class_of_rank] - log_odds[:, -1:]


def class_groups(kind: str) -> np.ndarray:
    """(26,) class of each chain rank: ``"region"`` C/T/L; ``"level"`` one class a level; ``"junction"`` a
    class for each level next to a region boundary (C7, T1, T11, T12, T13, L1) and the regions' other
    levels pooled (C1-C6, T2-T10, L2-L6)."""
    if kind == "region":
        return REGION_OF_RANK.astype(np.intp)
    if kind == "level":
        return np.arange(_N_RANKS)
    if kind != "junction":
        raise ValueError(f"class groups must be region, level or junction, got {kind!r}")
    own = {label: 3 + k for k, label in enumerate((7, 8, 18, 19, 28, 20))}
    return np.array([own.get(label, int(REGION_OF_RANK[r])) for r, label in enumerate(CHAIN_LABELS)], dtype=np.intp)


def fit_region_model(regions: np.ndarray, ranks: np.ndarray, *, groups: str = "region",
                     l2: float = 1.0) -> RegionModel:
    """Fit :class:`RegionModel` on (N, 3) region probabilities of detections and their truth ``ranks``
    (N,): the chain rank of the annotated body each sits on, or ``FALSE_CLASS``.

    Minimises the mean cross-entropy plus ``l2 / N`` times the squared non-constant weights.
    Every class gets one pseudo-count in its prior, so a level absent from the training set
    reads its region's ratio shrunk by the penalty, not -inf.
    """
    ranks = np.asarray(ranks, dtype=np.intp)
    if len(regions) != len(ranks) or not len(ranks):
        raise ValueError("need one truth rank per detection, and at least one detection")
    class_of_rank = class_groups(groups)
    n_classes = int(class_of_rank.max()) + 2
    target = np.where(ranks == FALSE_CLASS, n_classes - 1, class_of_rank[np.maximum(ranks, 0)])
    x = features(regions)
    onehot = np.zeros((len(x), n_classes))
    onehot[np.arange(len(x)), target] = 1.0
    penalty = np.ones((n_classes, x.shape[1]))
    penalty[:, 0] = 0.0  # the constant is not shrunk
    scale = l2 / len(x)

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = flat.reshape(n_classes, -1)
        logits = x @ w.T
        log_z = np.logaddexp.reduce(logits, axis=1, keepdims=True)
        value = float(np.mean(log_z[:, 0] - (logits * onehot).sum(axis=1))) + scale * float((penalty * w**2).sum())
        gradient = (np.exp(logits - log_z) - onehot).T @ x / len(x) + 2 * scale * penalty * w
        return value, gradient.ravel()

    result = minimize(loss, np.zeros(n_classes * x.shape[1]), jac=True, method="L-BFGS-B",
                      options={"maxiter": 500})
    counts = np.bincount(target, minlength=n_classes) + 1.0
    return RegionModel(result.x.reshape(n_classes, -1), np.log(counts / counts.sum()), class_of_rank)


def training_ranks(detections_mm: np.ndarray, truth_mm: np.ndarray, truth_ranks: np.ndarray,
                   hit_mm: float = 20.0) -> np.ndarray:
    """(N,) truth rank of each detection: the nearest annotated body's within ``hit_mm``, else
    ``FALSE_CLASS``."""
    if not len(truth_mm):
        return np.full(len(detections_mm), FALSE_CLASS, dtype=np.intp)
    distance = np.linalg.norm(detections_mm[:, None, :] - truth_mm[None, :, :], axis=2)
    nearest = np.argmin(distance, axis=1)
    return np.where(distance[np.arange(len(detections_mm)), nearest] <= hit_mm,
                    np.asarray(truth_ranks)[nearest], FALSE_CLASS)


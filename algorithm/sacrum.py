"""The sacrum at the foot of the chain: a second segment-stage model's opinion on the lowest candidates.

The outline model (:attr:`algorithm.models.Models.outliner`, here "the segment model": the bundled
``outline.onnx``, the segment stage's round 5, which the sacrum model was fine-tuned from) outlines whatever
vertebra-like bone its heatmap sits on, the sacrum's first segment
(S1) included, and the decoder then labels S1 as an L6 (``bench/real.py``: the bundled example and
verse014, at confidence 1.0). A second segment-stage model, fine-tuned with sacrum negatives (a heatmap
on S1 and an empty target: ``export train --sacrum-p``; ``sacrum.onnx`` beside the stage models),
outlines a true vertebra about as the first does and S1 much smaller or not at all. At the lowest four
candidates of the four real CTs and three synthetic validation phantoms at hand, its outline volume over
the segment model's was 0.90-1.05 on true vertebrae (a true L6 included) and 0, 0, 0.33, 0.47 on the
four S1s.

So, along the chain (head to feet), among the lowest :data:`LOWEST` candidates the highest whose ratio
is below :data:`SACRUM_RATIO`, with an outline of at least :data:`MIN_BODY_ML` by the segment model
(a body, not a sacral fragment), is S1: it and every candidate below it leave the chain. The chain's
top candidate is never S1, nor is a candidate with a vertebra below it (an outline of at least
:data:`MIN_BODY_ML` with a ratio of :data:`VERTEBRA_RATIO` or more): on a sagittal slab of the bundled
example an outline of L5's posterior elements, 20 mm behind its body, had a ratio of 0.42, and took the
true L5 (0.99) out of the chain with it.

Where S1 lies right below the lowest candidate left, within :data:`REST_FACTOR` times the chain's median
step (no room for a missed vertebra), the chain *rests on the sacrum* (:func:`rests_on_sacrum`): its last
vertebra is the last lumbar one, which the decoder weighs (:mod:`algorithm.labelling`, item 10). Without it
a lumbar chain whose top the scan cuts has nothing to count from (verse014 with its top cropped: L3-L5 over
the sacrum labelled L2-L4).
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from algorithm.models import StageModel
from algorithm.recentre import outline_vertebrae

__all__ = ["LOWEST", "MIN_BODY_ML", "REST_FACTOR", "SACRUM_RATIO", "VERTEBRA_RATIO", "rests_on_sacrum", "sacral",
           "volume_ratios"]

log = logging.getLogger(__name__)

LOWEST = 4
"""How many candidates at the foot of the chain are asked (S1 lies below every lumbar vertebra)."""
SACRUM_RATIO = 0.6
"""Largest outline volume ratio (sacrum model over segment model) of S1: 0-0.47 on the four S1s at hand,
0.90-1.05 on the true vertebrae at the foot of the same chains."""
VERTEBRA_RATIO = 0.85
"""Least ratio of a true vertebra (0.90-1.05 at the feet of the real chains at hand; S1: 0-0.47)."""
MIN_BODY_ML = 20.0
"""Smallest segment-model outline taken for S1's body (the sacral segments below it outline 5-18 ml)."""
REST_FACTOR = 1.5
"""S1 within this many median steps of the chain below its lowest vertebra: no vertebra fits between (a
missed one leaves about two steps)."""


def volume_ratios(image: sitk.Image, positions_mm: np.ndarray, segment: StageModel,
                  sacrum: StageModel) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: the segment model's outline volume (ml) and the sacrum model's over it (0 where the
    sacrum model outlines nothing; 1 where the segment model outlines nothing)."""
    seeds = [np.asarray(p, dtype=np.float64) for p in np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)]
    plain = outline_vertebrae(image, segment, seeds)
    checked = outline_vertebrae(image, sacrum, seeds)
    volume = np.array([o.volume_ml if o is not None else 0.0 for o in plain])
    other = np.array([o.volume_ml if o is not None else 0.0 for o in checked])
    ratio = np.where(volume > 0, other / np.maximum(volume, 1e-9), 1.0)
    return volume, ratio


def sacral(image: sitk.Image, positions_mm: np.ndarray, segment: StageModel, sacrum: StageModel, *,
           lowest: int = LOWEST, ratio: float = SACRUM_RATIO, min_body_ml: float = MIN_BODY_ML) -> np.ndarray:
    """``(N,)`` bool: the candidates that are the sacrum (module docstring), in input order."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(len(positions), dtype=bool)
    if len(positions) < 2:
        return out
    foot = np.argsort(positions[:, 2], kind="stable")[:lowest]  # LPS: +z is the head; the lowest first
    volume, ratios = volume_ratios(image, positions[foot], segment, sacrum)
    # S1 lies below the lumbar spine: the chain's top candidate is never it (a chain is never dropped whole).
    vertebra = (ratios >= VERTEBRA_RATIO) & (volume >= min_body_ml)
    flagged = [k for k in range(len(foot)) if ratios[k] < ratio and volume[k] >= min_body_ml
               and foot[k] != int(np.argmax(positions[:, 2])) and not vertebra[:k].any()]
    if not flagged:
        return out
    top = max(flagged)  # the highest flagged of the lowest ones: S1
    out[foot[:top + 1]] = True
    log.info("sacrum: the candidate %.0f mm high is S1 (outline ratio %.2f of %.0f ml); %d candidate(s) at and "
             "below it leave the chain", positions[foot[top], 2], ratios[top], volume[top], top + 1)
    return out


def rests_on_sacrum(positions_mm: np.ndarray, sacrum: np.ndarray, *, factor: float = REST_FACTOR) -> bool:
    """Whether the candidates not flagged in ``sacrum`` (:func:`sacral`) rest on the sacrum: S1, the highest
    flagged, lies below the lowest of them by at most ``factor`` times their median step along z (module
    docstring). False with no S1 or fewer than two candidates left."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    flagged = np.asarray(sacrum, dtype=bool)
    chain = np.sort(positions[~flagged, 2])
    if not flagged.any() or len(chain) < 2:
        return False
    s1 = float(positions[flagged, 2].max())
    gap = chain[0] - s1
    step = float(np.median(np.diff(chain)))
    rests = 0.0 < gap <= factor * step
    log.info("sacrum: S1 lies %.0f mm below the lowest vertebra (median step %.0f mm): the chain %s on it", gap,
             step, "rests" if rests else "does not rest")
    return bool(rests)

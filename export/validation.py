"""Validation of a stage on whole volumes: Gaussian-weighted sliding windows and stage metrics.

Used by training (held-out cases) and by the model card (real CTs). A *predictor* is any
function mapping a batch ``(B, C_in, *patch)`` float32 to probabilities ``(B, C_out, *patch)``:
a torch model (:func:`torch_predictor`) or an ONNX Runtime session (:func:`onnx_predictor`),
so the same code measures both.

Metrics (distances in mm):

- detect: ``dice`` of the prediction thresholded at 0.5 against the detect target, and
  ``box_recall``: the fraction of target voxels inside the bounding box of the thresholded
  prediction (what the algorithm crops to).
- locate: for each vertebra label present in the case, the argmax voxel of its channel over
  the volume; ``distance_mm`` to the ground-truth centroid; ``id_rate``: fraction of labels whose
  peak lies within 20 mm of its own centroid and nearer to it than to any other centroid (the
  evaluator's identification rule applied to the raw channel argmax, no decoding);
  ``label_accuracy``: fraction of ground-truth centroids where the channel-argmax equals the label;
  and the peak figures of :func:`peak_metrics` (local maxima of the channel-max map, as the
  algorithm finds its candidates).
- segment: ``dice`` of each vertebra's thresholded patch prediction, the patch centred on its
  ground-truth centroid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from algorithm.locate import PEAK_THRESHOLD  # the algorithm's default candidate threshold
from spine.labels import LOCATE_CHANNELS, MAX_LABEL
from spine.modelmeta import ModelMeta
from spine.preprocess import crop_patch

from .datasets import StageVolume, segment_inputs

if TYPE_CHECKING:
    import torch

__all__ = [
    "ID_DISTANCE_MM",
    "Predictor",
    "StageMetrics",
    "detect_metrics",
    "dice",
    "locate_metrics",
    "locate_per_label",
    "peak_metrics",
    "onnx_predictor",
    "sliding_window",
    "torch_predictor",
    "validate",
]

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]
ID_DISTANCE_MM = 20.0


def torch_predictor(model: torch.nn.Module, device: str = "cpu") -> Predictor:
    """Wrap a torch model that outputs probabilities (e.g. :class:`~export.networks.ProbabilityModel`)
    as a :data:`Predictor` (eval mode, no grad)."""
    import torch

    def predict(batch: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device))
        return out.float().cpu().numpy()

    return predict


def onnx_predictor(path: str, *, threads: int = 2) -> Predictor:
    """Wrap an exported ONNX model (CPUExecutionProvider) as a :data:`Predictor`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0].astype(np.float32)

    return predict


def _starts(size: int, patch: int, overlap: float) -> list[int]:
    if size <= patch:
        return [round((size - patch) / 2.0)]
    step = max(int(patch * (1.0 - overlap)), 1)
    count = int(np.ceil((size - patch) / step)) + 1
    return sorted({round(float(v)) for v in np.linspace(0, size - patch, count)})


def _gaussian_weight(shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    axes = []
    for s in shape:
        d = np.arange(s, dtype=np.float32) - (s - 1) / 2.0
        axes.append(np.exp(-(d**2) / (2.0 * (s * sigma_scale) ** 2)))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


def sliding_window(predict: Predictor, image: np.ndarray, patch_shape: Sequence[int], *, pad_value: float,
                   overlap: float = 0.5, batch_size: int = 2) -> np.ndarray:
    """Gaussian-weighted sliding-window prediction over a whole volume.

    ``image``: ``(C_in, z, y, x)``; returns ``(C_out, z, y, x)`` float32. Volumes smaller than
    the patch are padded with ``pad_value`` (centred), as the algorithm does.
    """
    shape = image.shape[1:]
    patch = tuple(int(s) for s in patch_shape)
    starts = [(a, b, c) for a in _starts(shape[0], patch[0], overlap) for b in _starts(shape[1], patch[1], overlap)
              for c in _starts(shape[2], patch[2], overlap)]
    weight = _gaussian_weight(patch)
    total: np.ndarray | None = None
    norm = np.zeros(shape, dtype=np.float32)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        batch = []
        for start in chunk:
            centre = [s + p / 2.0 for s, p in zip(start, patch, strict=True)]
            batch.append(np.stack([crop_patch(channel, centre, patch, pad_value=pad_value)[0] for channel in image]))
        out = predict(np.stack(batch))
        if total is None:
            total = np.zeros((out.shape[1], *shape), dtype=np.float32)
        for start, prob in zip(chunk, out, strict=True):
            src, dst = [], []
            for a0, size, full in zip(start, patch, shape, strict=True):
                lo, hi = max(a0, 0), min(a0 + size, full)
                src.append(slice(lo - a0, hi - a0))
                dst.append(slice(lo, hi))
            total[(slice(None), *dst)] += prob[(slice(None), *src)] * weight[tuple(src)]
            norm[tuple(dst)] += weight[tuple(src)]
    if total is None:
        raise ValueError("empty volume")
    return total / np.maximum(norm, 1e-6)[None]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays; 1.0 when both are empty."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    denominator = int(p.sum()) + int(t.sum())
    return 1.0 if denominator == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denominator


@dataclass
class StageMetrics:
    """Aggregated validation figures; ``score`` is what "best checkpoint" maximises."""

    score: float
    values: dict[str, float]
    per_case: dict[str, dict[str, float]]

    def summary(self) -> str:
        return " ".join(f"{k}={v:.4g}" for k, v in self.values.items())


def detect_metrics(probability: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``dice`` and ``box_recall`` of a detect probability ``(z, y, x)`` against its binary target."""
    predicted = probability >= 0.5
    truth = target.astype(bool)
    if predicted.any():
        nz = np.nonzero(predicted)
        box = tuple(slice(n.min(), n.max() + 1) for n in nz)
        recall = float(truth[box].sum()) / max(int(truth.sum()), 1)
    else:
        recall = 0.0
    return {"dice": dice(predicted, truth), "box_recall": recall}


def locate_per_label(probability: np.ndarray, centroids_zyx: dict[int, np.ndarray],
                     spacing_zyx_mm: Sequence[float], channels: Sequence[int] = LOCATE_CHANNELS,
                     ) -> dict[int, dict[str, float]]:
    """Per present label: ``distance_mm`` of its channel's argmax to its centroid, ``hit`` (1/0, the
    identification rule), ``correct_label`` (1/0, channel-argmax at the centroid) and ``peak``.

    Only labels in ``channels`` whose centroid lies inside the volume count.
    """
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    shape = np.asarray(probability.shape[1:])
    present = {label: np.asarray(c) for label, c in centroids_zyx.items()
               if label in channels and np.all(c >= -0.5) and np.all(c <= shape - 0.5)}
    everything = {label: np.asarray(c) * spacing for label, c in centroids_zyx.items()}
    channel_max = probability.argmax(axis=0) if present else None
    result: dict[int, dict[str, float]] = {}
    for label, centre in sorted(present.items()):
        channel = list(channels).index(label)
        flat = int(np.argmax(probability[channel]))
        peak_mm = np.asarray(np.unravel_index(flat, probability.shape[1:]), dtype=np.float64) * spacing
        distance = float(np.linalg.norm(peak_mm - centre * spacing))
        nearest = min(everything, key=lambda other: float(np.linalg.norm(everything[other] - peak_mm)))
        voxel = tuple(int(v) for v in np.clip(np.round(centre), 0, shape - 1))
        result[label] = {
            "distance_mm": distance,
            "hit": float(distance <= ID_DISTANCE_MM and nearest == label),
            "correct_label": float(channels[int(channel_max[voxel])] == label),
            "peak": float(probability[channel].flat[flat]),
        }
    return result


def channel_max_peaks(probability: np.ndarray, threshold: float = PEAK_THRESHOLD) -> np.ndarray:
    """Local maxima (3x3x3) of the channel-max map reaching ``threshold``: ``(n, 3)`` int ``(z, y, x)``."""
    from scipy.ndimage import maximum_filter

    channel_max = probability.max(axis=0)
    return np.argwhere((channel_max >= maximum_filter(channel_max, size=3)) & (channel_max >= threshold))


def peak_metrics(probability: np.ndarray, centroids_zyx: dict[int, np.ndarray], spacing_zyx_mm: Sequence[float],
                 channels: Sequence[int] = LOCATE_CHANNELS, threshold: float = PEAK_THRESHOLD) -> dict[str, float]:
    """What a peak-finding decoder sees (the algorithm's use of the locate output, without decoding).

    Peaks are :func:`channel_max_peaks`. For each present label's centroid: ``peak_detection_rate``
    (a peak within 20 mm), ``peak_distance_mm`` (mean distance to the nearest peak, detected ones),
    ``peak_label_accuracy`` (the strongest channel at that peak is the label, detected ones);
    ``false_peaks``: peaks farther than 20 mm from every centroid (per volume).
    """
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    shape = np.asarray(probability.shape[1:])
    peaks = channel_max_peaks(probability, threshold)
    peaks_mm = peaks * spacing
    present = {label: np.asarray(c) * spacing for label, c in centroids_zyx.items()
               if label in channels and np.all(c >= -0.5) and np.all(c <= shape - 0.5)}
    everything = np.asarray([np.asarray(c) * spacing for c in centroids_zyx.values()]).reshape(-1, 3)
    false_peaks = sum(1 for p in peaks_mm
                      if not len(everything) or np.min(np.linalg.norm(everything - p, axis=1)) > ID_DISTANCE_MM)
    detected, distances, correct = 0, [], 0
    for label, centre in present.items():
        if not len(peaks):
            continue
        d = np.linalg.norm(peaks_mm - centre, axis=1)
        nearest = int(np.argmin(d))
        if d[nearest] <= ID_DISTANCE_MM:
            detected += 1
            distances.append(float(d[nearest]))
            correct += int(channels[int(np.argmax(probability[(slice(None), *peaks[nearest])]))] == label)
    n = len(present)
    return {"peak_detection_rate": detected / n if n else 1.0,
            "peak_distance_mm": float(np.mean(distances)) if distances else 0.0,
            "peak_label_accuracy": correct / detected if detected else 0.0,
            "false_peaks": float(false_peaks)}


def locate_metrics(probability: np.ndarray, centroids_zyx: dict[int, np.ndarray],
                   spacing_zyx_mm: Sequence[float], channels: Sequence[int] = LOCATE_CHANNELS) -> dict[str, float]:
    """Locate figures of a ``(len(channels), z, y, x)`` probability volume (see module docstring).

    Returns ``distance_mm`` (mean), ``id_rate``, ``label_accuracy``, ``n_labels`` and ``peak_mean``
    (mean probability at the labels' own peaks), plus :func:`peak_metrics`; NaN-free: with no
    label, distances are 0 and rates 1.
    """
    per_label = locate_per_label(probability, centroids_zyx, spacing_zyx_mm, channels)
    peaks = peak_metrics(probability, centroids_zyx, spacing_zyx_mm, channels)
    if not per_label:
        return {"distance_mm": 0.0, "id_rate": 1.0, "label_accuracy": 1.0, "n_labels": 0.0, "peak_mean": 0.0,
                **peaks}
    rows = list(per_label.values())
    return {"distance_mm": float(np.mean([r["distance_mm"] for r in rows])),
            "id_rate": float(np.mean([r["hit"] for r in rows])),
            "label_accuracy": float(np.mean([r["correct_label"] for r in rows])),
            "n_labels": float(len(rows)),
            "peak_mean": float(np.mean([r["peak"] for r in rows])),
            **peaks}


def segment_case_metrics(predict: Predictor, volume: StageVolume, meta: ModelMeta, *, batch_size: int = 4,
                         labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice per vertebra of one volume, each patch centred on that vertebra's ground-truth centroid."""
    if volume.labels is None:
        raise ValueError(f"{volume.case_id}: segment validation needs labels")
    wanted = [label for label in sorted(volume.centroids_zyx)
              if label <= MAX_LABEL and label not in (26, 27) and (labels is None or label in labels)]
    result: dict[int, float] = {}
    for first in range(0, len(wanted), batch_size):
        chunk = wanted[first:first + batch_size]
        inputs, truths = [], []
        for label in chunk:
            centre = volume.centroids_zyx[label]
            x, _ = segment_inputs(volume.image, centre, meta)
            inputs.append(x)
            truths.append(crop_patch(volume.labels, centre, meta.patch_shape_zyx, pad_value=0)[0] == label)
        out = predict(np.stack(inputs))
        for label, prob, truth in zip(chunk, out, truths, strict=True):
            if truth.any():
                result[label] = dice(prob[0] >= 0.5, truth)
    return result


def validate(predict: Predictor, volumes: Sequence[StageVolume], meta: ModelMeta, *,
             batch_size: int = 2) -> StageMetrics:
    """Stage metrics over whole validation volumes (mean over cases, or over vertebrae for segment)."""
    per_case: dict[str, dict[str, float]] = {}
    if meta.stage == "segment":
        all_dice: list[float] = []
        for volume in volumes:
            scores = segment_case_metrics(predict, volume, meta, batch_size=max(batch_size, 2))
            all_dice.extend(scores.values())
            per_case[volume.case_id] = {"dice": float(np.mean(list(scores.values()))) if scores else 0.0,
                                        "n_vertebrae": float(len(scores))}
        values = {"dice": float(np.mean(all_dice)) if all_dice else 0.0,
                  "dice_min": float(np.min(all_dice)) if all_dice else 0.0,
                  "n_vertebrae": float(len(all_dice))}
        return StageMetrics(values["dice"], values, per_case)
    for volume in volumes:
        prob = sliding_window(predict, volume.image[None], meta.patch_shape_zyx,
                              pad_value=meta.intensity.background, batch_size=batch_size)
        if meta.stage == "detect":
            if volume.target is None:
                raise ValueError(f"{volume.case_id}: detect validation needs a target")
            per_case[volume.case_id] = detect_metrics(prob[0], volume.target)
        else:
            per_case[volume.case_id] = locate_metrics(prob, volume.centroids_zyx, meta.spacing_zyx_mm,
                                                      meta.channel_labels)
    keys = next(iter(per_case.values())).keys() if per_case else []
    values = {key: float(np.mean([case[key] for case in per_case.values()])) for key in keys}
    if meta.stage == "detect":
        score = values.get("dice", 0.0)
    else:
        score = values.get("id_rate", 0.0) + 0.5 * values.get("label_accuracy", 0.0) \
            - 1e-3 * values.get("distance_mm", 0.0)
    return StageMetrics(score, values, per_case)

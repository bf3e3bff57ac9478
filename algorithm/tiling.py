"""Gaussian-weighted sliding-window inference over a volume, as small pure functions (after nnU-Net v2).

A network with a fixed patch shape is run on overlapping tiles; each tile's prediction is
weighted by a Gaussian centred on the tile (the centre of a patch has the most context) and
the weighted sum is divided by the sum of the weights. For a model that acts voxel by voxel
the result equals the model applied to the whole volume at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = ["WEIGHT_FLOOR", "gaussian_importance", "sliding_window", "tile_starts"]

WEIGHT_FLOOR = 1e-6
"""Smallest tile weight relative to its centre, so that a voxel seen only by tile corners still
gets a well-conditioned average (nnU-Net clamps zeros to the smallest non-zero weight likewise)."""


def gaussian_importance(patch_shape: Sequence[int], sigma_scale: float = 1.0 / 8.0) -> np.ndarray:
    """Tile weight map ``(pz, py, px)`` float32: a Gaussian with sigma ``sigma_scale * size`` per axis,
    centred on the patch centre, maximum 1, floored at :data:`WEIGHT_FLOOR`."""
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = np.ones((), dtype=np.float64)
    for size in patch_shape:
        size = int(size)
        d = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        axis = np.exp(-0.5 * (d / (sigma_scale * size)) ** 2)
        weights = np.multiply.outer(weights, axis)
    weights /= weights.max()
    return np.maximum(weights, WEIGHT_FLOOR).astype(np.float32)


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of tiles of length ``patch`` covering ``[0, size)`` along one axis.

    Tiles step by at most ``(1 - overlap) * patch`` and are spread evenly so that the first
    starts at 0 and the last ends at ``size`` (nnU-Net's ``compute_steps_for_sliding_window``).
    ``size < patch`` is the caller's to pad; it yields the single start 0.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [0]
    step = patch * (1.0 - overlap)
    count = int(np.ceil((size - patch) / step)) + 1
    actual = (size - patch) / (count - 1)
    return [round(actual * i) for i in range(count)]


def _batches(items: list[tuple[int, int, int]], size: int) -> Iterator[list[tuple[int, int, int]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def sliding_window(
    volume: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    patch_shape: Sequence[int],
    out_channels: int,
    *,
    overlap: float = 0.5,
    pad_value: float | Sequence[float] = 0.0,
    batch_size: int = 1,
    importance: np.ndarray | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run ``predict`` over overlapping tiles of ``volume`` and blend them with Gaussian weights.

    - ``volume``: ``(C, Z, Y, X)`` float32 network input.
    - ``predict``: ``(B, C, pz, py, px) -> (B, out_channels, pz, py, px)``.
    - ``pad_value``: network input outside the volume (one value, or one per input channel),
      used when the volume is smaller than a patch along an axis (padded evenly on both sides).
    - ``on_tile(done, total)``: progress callback.

    Returns ``(out_channels, Z, Y, X)`` float32. Memory: the output and one weight-sum volume.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, Z, Y, X), got shape {volume.shape}")
    patch = tuple(int(p) for p in patch_shape)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_shape must be three positive ints, got {patch_shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape = volume.shape[1:]
    pads = [max(p - s, 0) for p, s in zip(patch, shape, strict=True)]
    before = [p // 2 for p in pads]
    if any(pads):
        values = np.broadcast_to(np.asarray(pad_value, dtype=np.float32), (volume.shape[0],))
        padded = np.empty((volume.shape[0], *(s + p for s, p in zip(shape, pads, strict=True))), dtype=np.float32)
        for channel, value in enumerate(values):
            padded[channel] = value
        padded[(slice(None), *(slice(b, b + s) for b, s in zip(before, shape, strict=True)))] = volume
        volume = padded
    work_shape = volume.shape[1:]
    weights = gaussian_importance(patch) if importance is None else np.asarray(importance, dtype=np.float32)
    if weights.shape != patch:
        raise ValueError(f"importance map shape {weights.shape} differs from the patch shape {patch}")
    output = np.zeros((out_channels, *work_shape), dtype=np.float32)
    weight_sum = np.zeros(work_shape, dtype=np.float32)
    starts = list(itertools.product(*(tile_starts(s, p, overlap) for s, p in zip(work_shape, patch, strict=True))))
    done = 0
    for group in _batches(starts, batch_size):
        batch = np.stack([volume[(slice(None), *(slice(a, a + p) for a, p in zip(start, patch, strict=True)))]
                          for start in group])
        predicted = np.asarray(predict(batch), dtype=np.float32)
        if not (predicted.flags.owndata and predicted.flags.writeable):
            predicted = predicted.copy()  # scaled in place below: never touch the caller's memory
        expected = (len(group), out_channels, *patch)
        if predicted.shape != expected:
            raise ValueError(f"model returned shape {predicted.shape}, expected {expected}")
        predicted *= weights  # in place: no temporary per tile
        for start, tile in zip(group, predicted, strict=True):
            region = tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
            output[(slice(None), *region)] += tile
            weight_sum[region] += weights
        done += len(group)
        if on_tile is not None:
            on_tile(done, len(starts))
    output /= weight_sum
    if any(pads):
        output = np.ascontiguousarray(
            output[(slice(None), *(slice(b, b + s) for b, s in zip(before, shape, strict=True)))])
    return output

"""Body centres between the discs: a labelled chain's points moved along it onto the CT's own bodies.

At coarse pixels (the OpenKBP head-and-neck CTs: 3.5-5.4 mm) the outline model outlines a body-sized blob wherever it
is seeded along the column: seeded 10 mm above or below a candidate it comes back to it, so recentring does not pull a
point off a disc. On the 52 annotated OpenKBP ``dev`` and ``fit`` necks the points drift footwards from C4 down
(median along the spine: C4 1.1 mm, C5 5.1, C6 2.8, C7 5.6), and every wrong label of a whole neck there was a point
8-15 mm down the neck, on the disc below its body or in the next body, with every level counted right. The CT shows
the discs: along the chain, bone fills a quarter or more of a square across a body, cortex and endplates even in
elderly bone, and none across a disc. So:

1. :func:`bone_profile`: per millimetre of height, the :data:`PROFILE_PERCENTILE` th percentile of the CT over a
   square :data:`SQUARE_MM` wide, :data:`FORWARD_MM` in front of the line through the chain's points (the bodies'
   front half: behind them lie the canal and the joints), smoothed by :data:`SMOOTH_MM`. On ``fit`` pt_34 and pt_35
   its minima lie within 2 mm of the discs the annotators read (a profile of the mean over a 6 mm square put pt_35's
   minima on its bodies' cores instead).
2. :func:`disc_heights`: its minima of at least :data:`DISC_PROMINENCE_HU`.
3. :func:`between_discs`: head to feet, a point that lies clearly inside a body (at least :data:`CLEAR_FRACTION` of
   the chain's spacing from both discs around it, which lie 0.7-1.3 spacings apart) goes to the middle of the two; the
   next vertebra's body is then the one under it: the most prominent disc 0.7-1.3 spacings below, where its middle
   lies within 0.6 of a spacing of the vertebra's own point. A vertebra without one, or a level passed over between
   two, ends the walk, which starts again at the next clear point. Only the height changes; the point moves along the
   chain.

It runs on coarse CTs only (:func:`algorithm.locate.is_coarse`, where the drift was measured; at finer pixels the
outlines centre on bodies within 1-2 mm, ``bench/real.py``) and moves the points of C3 to T1 only
(:data:`MOVED_LEVELS`: the square fits a neck's bodies; C1 has no body; C2's point is its body and dens,
:func:`spine.body.c2_centroid`). The pipeline moves the points before it segments, so that each mask is seeded at its
moved point. Chosen on the ``dev`` and ``fit`` necks, looking at pt_34 and pt_35 (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter1d, map_coordinates
from scipy.signal import find_peaks

from spine.image import Geometry

__all__ = ["BODY_STEPS", "CLEAR_FRACTION", "DISC_PROMINENCE_HU", "FORWARD_MM", "MOVED_LEVELS", "PROFILE_PERCENTILE",
           "REACH_FRACTION", "SAMPLE_MM", "SMOOTH_MM", "SQUARE_MM", "STEP_MM", "between_discs", "bone_profile",
           "disc_heights", "heights_between_discs"]

PROFILE_PERCENTILE = 75.0
"""Bone fills at least a quarter of a square across a body (its cortex, endplates and cancellous core), and none of one
across a disc."""
SQUARE_MM = 16.0
"""Width of the square sampled at each height: a cervical body is 15-20 mm wide and 15 mm deep."""
FORWARD_MM = 3.0
"""The square's centre lies this far in front of the chain's line (LPS -y): the points sit on the bodies' back half
or behind them where they drift."""
STEP_MM = 1.0
"""Height step of the profile."""
SAMPLE_MM = 1.5
"""Spacing of the samples across the square."""
SMOOTH_MM = 1.5
"""Gaussian sigma of the profile's smoothing (the CTs' 2-3 mm slices)."""
DISC_PROMINENCE_HU = 20.0
"""Least prominence of a disc's minimum in the profile."""
CLEAR_FRACTION = 0.3
"""A point this fraction of the chain's spacing or more from both discs around it lies clearly inside its body, and
starts a walk (in a prototype, 0.2 and 0.25 also moved ``dev`` pt_15's C6 onto the wrong body)."""
BODY_STEPS = (0.7, 1.3)
"""A body's two discs lie this many of the chain's spacings apart."""
REACH_FRACTION = 0.6
"""A body found by the walk is taken only where its middle lies within this fraction of a spacing of the point."""
MOVED_LEVELS = (3, 8)
"""The walk moves the points of C3 to T1 (VerSe ids, inclusive); it walks the whole chain below C2. The square is sized
for cervical bodies: a thoracic or lumbar body is 25-50 mm wide, and the square inside it reads its cancellous core.
On the 51 ``dev`` and ``fit`` necks where it ran, it moved 18 points of T1-T5, and only one has an annotation to judge
by (the annotations stop above the rest): ``dev`` pt_15's T1, 14.1 -> 8.7 mm. On the one thoracic chain at hand, the
aorta crop at 4 mm pixels (``bench/real.py``'s reformat), it moved T5 and T8-T11 by 4-10 mm, T8 and T9 towards their
neighbours' bodies and T11 from 1.0 to 5.0 mm off its place at 1.5 mm pixels."""


def bone_profile(image: sitk.Image, chain_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(heights, values)``: LPS z (mm, ascending) from 10 mm below the chain's lowest point to 10 mm above its
    highest, every :data:`STEP_MM`, and the smoothed :data:`PROFILE_PERCENTILE` th percentile HU of the square across
    the chain's line there (module docstring, item 1). The line's x and y follow the points, by height."""
    chain = np.asarray(chain_mm, dtype=np.float64).reshape(-1, 3)
    chain = chain[np.argsort(chain[:, 2])]
    heights = np.arange(chain[0, 2] - 10.0, chain[-1, 2] + 10.0 + STEP_MM / 2, STEP_MM)
    x = np.interp(heights, chain[:, 2], chain[:, 0])
    y = np.interp(heights, chain[:, 2], chain[:, 1]) - FORWARD_MM
    across = np.arange(-SQUARE_MM / 2, SQUARE_MM / 2 + SAMPLE_MM / 2, SAMPLE_MM)
    dx, dy = (a.ravel() for a in np.meshgrid(across, across, indexing="ij"))
    points = np.stack([(x[:, None] + dx).ravel(), (y[:, None] + dy).ravel(),
                       np.repeat(heights, len(dx))], axis=1)
    geometry = Geometry.of(image)
    index = geometry.world_to_index(points)  # (i, j, k) continuous
    array = sitk.GetArrayViewFromImage(image)
    hu = map_coordinates(np.asarray(array, dtype=np.float32), index[:, ::-1].T, order=1, cval=-1024.0)
    values = np.percentile(hu.reshape(len(heights), len(dx)), PROFILE_PERCENTILE, axis=1)
    return heights, gaussian_filter1d(values, SMOOTH_MM / STEP_MM)


def disc_heights(heights: np.ndarray, values: np.ndarray, *, prominence: float = DISC_PROMINENCE_HU
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(depths, prominences)`` of the profile's minima (discs): depth is ``-height`` (growing towards the feet),
    ascending."""
    minima, found = find_peaks(-np.asarray(values, dtype=np.float64), prominence=prominence)
    depths = -np.asarray(heights, dtype=np.float64)[minima]
    order = np.argsort(depths)
    return depths[order], np.asarray(found["prominences"], dtype=np.float64)[order]


def between_discs(depths: Sequence[float], labels: Sequence[int], discs: np.ndarray, prominences: np.ndarray,
                  spacing: float) -> np.ndarray:
    """New depths (``-height``, mm) of a head-to-feet chain's points, NaN where a point stays (module docstring, item
    3). ``labels``: their VerSe ids (a step of more than one level ends a walk); ``discs``, ``prominences``:
    :func:`disc_heights`; ``spacing``: the chain's step between adjacent bodies."""
    low, high = BODY_STEPS[0] * spacing, BODY_STEPS[1] * spacing
    moved = np.full(len(depths), np.nan)
    under: float | None = None  # the disc under the last body found
    for k, depth in enumerate(depths):
        if under is not None and k > 0 and labels[k] - labels[k - 1] != 1:
            under = None
        if under is None:
            above, below = discs[discs <= depth], discs[discs > depth]
            if not len(above) or not len(below):
                continue
            top, bottom = float(above.max()), float(below.min())
            clear = min(depth - top, bottom - depth) >= CLEAR_FRACTION * spacing
            if clear and low <= bottom - top <= high:
                moved[k], under = (top + bottom) / 2.0, bottom
            continue
        window = (discs >= under + low) & (discs <= under + high)
        if not window.any():
            under = None
            continue
        bottom = float(discs[window][np.argmax(prominences[window])])
        middle = (under + bottom) / 2.0
        if abs(middle - depth) > REACH_FRACTION * spacing:
            under = None
            continue
        moved[k], under = middle, bottom
    return moved


def heights_between_discs(image: sitk.Image, labels: Sequence[int], positions_mm: np.ndarray) -> np.ndarray:
    """``positions_mm`` (N, 3) of the labelled vertebrae ``labels`` with those of :data:`MOVED_LEVELS` moved along the
    chain to the middle of their bodies' discs where the CT shows them (module docstring); the others as they are.
    Fewer than three vertebrae below C2: all as they are."""
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3).copy()
    below_c2 = sorted((i for i in range(len(positions)) if labels[i] >= 3), key=lambda i: labels[i])
    if len(below_c2) < 3:
        return positions
    chain = positions[below_c2]
    spacing = float(np.median(-np.diff(chain[:, 2])))  # the walk runs in height
    if spacing <= 0.0:
        return positions
    heights, values = bone_profile(image, positions)
    discs, prominences = disc_heights(heights, values)
    moved = between_discs(-chain[:, 2], [labels[i] for i in below_c2], discs, prominences, spacing)
    line = positions[np.argsort(positions[:, 2])]
    for i, depth in zip(below_c2, moved, strict=True):
        if np.isfinite(depth) and MOVED_LEVELS[0] <= labels[i] <= MOVED_LEVELS[1]:
            positions[i] = [np.interp(-depth, line[:, 2], line[:, axis]) for axis in range(3)]
    return positions

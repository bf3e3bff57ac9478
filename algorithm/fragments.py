"""Fragments at the field of view's ends: the neighbour beyond a vertebra the scan cuts.

A scan that ends inside a vertebra shows the vertebra beyond it as a sliver only: at the top, the
laminae and spinous process of the vertebra above, which hang down behind the cut vertebra's
upper body (the bundled example's T11: 2.2 ml in its top three 3 mm slices, 41 mm behind T12's
body centre); at the bottom, the articular processes of the vertebra below, which rise behind the
cut vertebra's lower body. Locate and the segment model, both built around a vertebral body, do not
see it; annotators label it (the example's ground truth does), and
the evaluator counts it as missed when nothing carries its label.

At each end of the labelled chain whose vertebra reaches the field of view's end (a mask voxel within
:data:`algorithm.recentre.CUT_REACH_VOXELS` of it, as an outline is cut), bone (at least :data:`BONE_HU`)
that no vertebra's mask claims,
within :data:`EDGE_MM` of that end, behind the cut vertebra's centroid and within :data:`LATERAL_MM`
to either side of it, is the neighbour's fragment when its 26-connected parts that reach the view's
end, of at least :data:`MIN_PART_ML`, centred (in the spine's frame at that end: its axis from the next
vertebra in, the back, the side) at least :data:`BEYOND_MM` beyond the cut vertebra's centroid, within
:data:`MIDLINE_MM` of the midline and :data:`POSTERIOR_MM` behind the centroid, add up to
:data:`MIN_ML`-:data:`MAX_ML` (more would be a whole vertebra that locate missed, which a fragment's
centroid would misplace). It takes the next label beyond the end (none beyond C1, and none below
L5: that bone is the sacrum) and its centroid is the fragment's centre of mass, as annotators place a
sliver's centroid.

A fragment takes only voxels no vertebra claims, or claims by the segment stage's bone floor alone
(:data:`algorithm.segment.BONE_FLOOR`: the fragment's bone is plain, the neighbour's claim doubtful).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cc3d
import numpy as np
import SimpleITK as sitk

from algorithm.detect import resample_ct, sub_grid
from algorithm.recentre import CUT_REACH_VOXELS, cut_ends, outside_view
from algorithm.segment import Segmentation
from spine.image import Geometry
from spine.labels import name_of
from spine.preprocess import world_to_zyx

__all__ = ["BEYOND_MM", "BONE_HU", "EDGE_MM", "LATERAL_MM", "MAX_ML", "MIDLINE_MM", "MIN_ML", "MIN_PART_ML",
           "POSTERIOR_MM", "Fragment", "edge_fragments", "write_fragments"]

log = logging.getLogger(__name__)

EDGE_MM = 12.0
"""How far inside the view's end a fragment lies: a sliver, not a body (the example's T11 spans 9 mm)."""
BONE_HU = 150.0
"""Bone at a sliver's partial volume: the example's T11 fragment has median 273 HU, 10th percentile 129 HU at
3 mm slices; muscle and fat stay below 100 HU."""
LATERAL_MM = 20.0
"""Half width of the column searched beside the cut vertebra's centroid: the laminae and spinous process (ribs
and transverse processes lie further out)."""
MIDLINE_MM = 12.0
"""A fragment's part is centred this close to the cut vertebra's centroid, side to side: an arch is symmetric,
a rib head or a contrast-filled aorta beside the body is not."""
POSTERIOR_MM = (15.0, 80.0)
"""Where a fragment lies behind the cut vertebra's centroid (mm, along the back of the spine's frame at that
end): the neighbour's arch (laminae, articular and spinous processes), behind the canal. When a vertebra's
body reaches the view's end, the neighbour's body lies beyond it; only the arch, which hangs below its own
body and rises above it at the facets, overlaps."""
BEYOND_MM = 4.0
"""A fragment's part is centred at least this far beyond the cut vertebra's centroid, towards the view's end: at
the body's own mid-height the bone behind the canal is the vertebra's own arch (its pedicles and laminae), the
neighbour's arch overlaps only the body's far part (the example's T11: 8 mm above T12's centroid; a synthetic
phantom's own arch, cut level with its body's centre: 1 mm)."""
MIN_PART_ML = 0.1
"""Parts smaller than this are noise (trabecular speckle, calcified vessel wall)."""
MIN_ML = 1.0
MAX_ML = 15.0
"""A fragment's volume: at least a lamina's worth, less than a third of a lumbar vertebra."""


@dataclass(frozen=True)
class Fragment:
    """The sliver of the vertebra beyond a cut end of the chain: its label, which end, centre of mass (LPS mm),
    volume, and its voxels on the segmentation grid (flat indices into the label map given)."""

    label: int
    end: str
    position_mm: tuple[float, float, float]
    volume_ml: float
    indices: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        return name_of(self.label)

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "name": self.name, "end": self.end, "volume_ml": round(self.volume_ml, 2),
                "position_mm": [round(c, 2) for c in self.position_mm]}


def _beyond(label: int, end: str) -> int | None:
    """The label of the vertebra beyond ``label`` at ``end`` in the common spine (12 thoracic, 5 lumbar): none
    above C1, none below L5 or L6 (the sacrum)."""
    if end == "top":
        return {28: 19, 20: 19}.get(label, label - 1) if 1 < label < 26 or label == 28 else None
    if label in (24, 25, 26, 27):
        return None
    return 20 if label in (19, 28) else label + 1


def _near_end(outside: np.ndarray, end: str, steps: int) -> np.ndarray:
    """Voxels inside the view with its end within ``steps`` voxels towards ``end`` along array axis 0."""
    near = np.zeros_like(outside)
    for step in range(1, steps + 1):
        if end == "top":
            near[:-step] |= outside[step:]
        else:
            near[step:] |= outside[:-step]
    return near & ~outside


def edge_fragments(image: sitk.Image, labels: np.ndarray, grid: Geometry,
                   vertebrae: list[tuple[int, np.ndarray]], held_by_bone: np.ndarray | None = None) -> list[Fragment]:
    """The fragments beyond the chain's cut ends (module docstring).

    ``labels``: the merged label map ``(z, y, x)`` on the identity-direction ``grid`` (the segment stage's);
    ``vertebrae``: ``(label, centroid LPS mm)`` of the labelled chain; ``held_by_bone``: voxels a vertebra holds by
    the segment stage's bone floor alone (:data:`algorithm.segment.BONE_FLOOR`), which a fragment may take: its
    bone is plain, the neighbour's claim doubtful. Returns at most one fragment per end.
    """
    if held_by_bone is not None:
        labels = np.where(held_by_bone, np.uint8(0), labels)
    if not vertebrae:
        return []
    spacing_zyx = np.asarray(grid.spacing_mm, dtype=np.float64)[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    present = {label for label, _ in vertebrae}
    geometry = Geometry.of(image)
    ordered = sorted(vertebrae, key=lambda v: -float(np.asarray(v[1])[2]))
    points = [np.asarray(c, dtype=np.float64) for _, c in ordered]
    fragments = []
    for end, (label, centroid), inner in (("top", ordered[0], points[1:2]), ("bottom", ordered[-1], points[-2:-1])):
        beyond = _beyond(label, end)
        if beyond is None or beyond in present:
            continue
        frame = _end_frame(np.asarray(centroid, dtype=np.float64), inner[0] if inner else None, end)
        fragment = _fragment(image, geometry, labels, grid, label, np.asarray(centroid, dtype=np.float64), end,
                             beyond, frame, spacing_zyx, voxel_ml)
        if fragment is not None:
            fragments.append(fragment)
    return fragments


def _end_frame(centroid: np.ndarray, inner: np.ndarray | None, end: str) -> np.ndarray:
    """``(3, 3)`` rows: the spine's outward axis at a chain end (from the next vertebra in, or world +-z for a
    chain of one), then the patient's left and back made perpendicular to it. The arch's place is judged in this
    frame: a tilted neck or a kyphotic back turns world height and depth into each other."""
    outward = np.array([0.0, 0.0, 1.0 if end == "top" else -1.0])
    if inner is not None and np.linalg.norm(centroid - inner) > 1e-6:
        outward = (centroid - inner) / np.linalg.norm(centroid - inner)
    back = np.array([0.0, 1.0, 0.0]) - outward[1] * outward
    back /= max(float(np.linalg.norm(back)), 1e-9)
    left = np.cross(back, outward) if end == "top" else np.cross(outward, back)
    return np.stack([outward, left / max(float(np.linalg.norm(left)), 1e-9), back])


def _fragment(image: sitk.Image, geometry: Geometry, labels: np.ndarray, grid: Geometry, label: int,
              centroid: np.ndarray, end: str, beyond: int, frame: np.ndarray, spacing_zyx: np.ndarray,
              voxel_ml: float) -> Fragment | None:
    # The cut vertebra's column on the label map's grid, LPS-aligned: its centroid's level to a few voxels past the
    # view's end (the map may stop at the view's end, and the end must be seen to be found).
    centre = world_to_zyx(grid, centroid)
    half = np.array([0.0, max(POSTERIOR_MM), max(LATERAL_MM, MIDLINE_MM)]) / spacing_zyx
    edge = max(round(float(EDGE_MM / spacing_zyx[0])), 1)
    low = np.maximum(np.floor(centre - half).astype(np.int64), 0)
    high = np.minimum(np.ceil(centre + half).astype(np.int64) + 1, labels.shape)
    if end == "top":
        low[0], high[0] = max(int(np.floor(centre[0])), 0), labels.shape[0] + edge
    else:
        low[0], high[0] = -edge, min(int(np.ceil(centre[0])) + 1, labels.shape[0])
    if np.any(high - low < 2):
        return None
    column = sub_grid(grid, tuple(int(a) for a in low), tuple(int(n) for n in high - low))
    outside = outside_view(geometry, column)
    owned = np.zeros(outside.shape, dtype=labels.dtype)  # past the map's end: nobody's
    in_map = np.zeros(outside.shape, dtype=bool)  # a fragment is written into the map, so it lies in it
    z0, z1 = max(int(low[0]), 0), min(int(high[0]), labels.shape[0])
    if z1 <= z0:  # the centroid lies past the map's end: nothing of the map beside it
        return None
    owned[z0 - low[0]:z1 - low[0]] = labels[z0:z1, low[1]:high[1], low[2]:high[2]]
    in_map[z0 - low[0]:z1 - low[0]] = True
    if not cut_ends(owned == label, outside)[0 if end == "top" else 1]:
        return None
    hu = resample_ct(image, column)
    # Nothing in front of the body's centre (LPS y grows to the back): keeps the body's rim and the great vessels
    # from joining an arch's part; the part's place is then judged in the end's frame.
    behind = ((np.arange(low[1], high[1]) - centre[1]) * spacing_zyx[1] >= -5.0)[None, :, None]
    candidate = (hu >= BONE_HU) & (owned == 0) & in_map & behind & _near_end(outside, end, edge)
    if not candidate.any():
        return None
    parts = cc3d.connected_components(candidate, connectivity=26)
    stats = cc3d.statistics(parts)
    touching = np.unique(parts[_near_end(outside, end, CUT_REACH_VOXELS) & (parts > 0)])
    kept = []
    for part in range(1, len(stats["voxel_counts"])):
        volume = float(stats["voxel_counts"][part]) * voxel_ml
        # In the end's frame: how far beyond the centroid, to the side and behind it.
        beyond_mm, side_mm, back_mm = frame @ (grid.index_to_world((np.asarray(stats["centroids"][part])
                                                                    + low)[::-1]) - centroid)
        log.debug("fragments: %s end beside %s: part of %.2f ml %+.0f mm beyond, %+.0f mm aside, %+.0f mm behind, "
                  "%s the end", end, name_of(label), volume, beyond_mm, side_mm, back_mm,
                  "reaching" if part in touching else "short of")
        if (volume >= MIN_PART_ML and part in touching and abs(side_mm) <= MIDLINE_MM and beyond_mm >= BEYOND_MM
                and POSTERIOR_MM[0] <= back_mm <= POSTERIOR_MM[1]):
            kept.append(part)
    fragment = np.isin(parts, kept)
    volume = float(fragment.sum()) * voxel_ml
    if not MIN_ML <= volume <= MAX_ML:
        if volume > 0:
            log.debug("fragments: %.1f ml of unclaimed bone at the %s end beside %s: not a fragment", volume,
                      end, name_of(label))
        return None
    local = np.argwhere(fragment) + low
    position = grid.index_to_world(local.mean(axis=0)[::-1])
    indices = np.ravel_multi_index(tuple(local.T), labels.shape)
    log.info("fragments: %.1f ml of bone beyond %s at the field of view's %s is %s's fragment", volume,
             name_of(label), end, name_of(beyond))
    return Fragment(beyond, end, tuple(float(c) for c in position), volume, indices)  # type: ignore[arg-type]


def write_fragments(segmentation: Segmentation, fragments: list[Fragment]) -> None:
    """Write ``fragments`` into ``segmentation`` (in place): their voxels take their labels, and the voxel counts
    and ``held_by_bone`` follow (a voxel a neighbour held by the bone floor alone is the fragment's now)."""
    for fragment in fragments:
        taken = segmentation.labels.flat[fragment.indices]
        for label, count in zip(*np.unique(taken[taken > 0], return_counts=True), strict=True):
            segmentation.voxels[int(label)] -= int(count)
        segmentation.labels.flat[fragment.indices] = fragment.label
        segmentation.voxels[fragment.label] = int(fragment.indices.size)
        if segmentation.held_by_bone is not None:
            segmentation.held_by_bone.flat[fragment.indices] = False

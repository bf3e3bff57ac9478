"""The segment stage's bone floor (algorithm.segment): a voxel the model is doubtful about (probability between
the bone floor and the floor) stays only where the CT shows bone and only when it joins its vertebra's main part.

The model here is the heatmap channel itself (a real ONNX session): the probability of a voxel is
exp(-r^2 / 2 sigma^2) at r mm from the centroid, so the floor (0.5) keeps a ball of 1.18 sigma and the bone floor
(0.2) reaches out to 1.79 sigma."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from algorithm_fixtures import export_module, segment_meta

from algorithm.models import load_stage
from algorithm.segment import BONE_HU, segment_vertebrae

SIGMA = 6.0
FLOOR_R, BONE_FLOOR_R = SIGMA * np.sqrt(2 * np.log(2.0)), SIGMA * np.sqrt(2 * np.log(5.0))  # p = 0.5, p = 0.2
L1 = 20


@pytest.fixture(scope="module")
def heatmap_model(tmp_path_factory: pytest.TempPathFactory):
    import torch

    class Heatmap(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 1:2]

    meta = segment_meta(heatmap_sigma_mm=SIGMA)
    path = export_module(Heatmap(), meta, tmp_path_factory.mktemp("heatmap") / "segment.onnx")
    return load_stage("segment", path, ["CPUExecutionProvider"])


def _ct(bone: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.where(bone, 700.0, 40.0).astype(np.float32))
    image.SetOrigin((-32.0, -32.0, -32.0))  # 1 mm voxels, index 32 at the origin (0, 0, 0)
    return image


def _grid() -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.arange(64) - 32.0,) * 3, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2), x


def _radii(segmentation, label: int = L1) -> np.ndarray:
    zyx = np.argwhere(segmentation.labels == label)
    world = np.array([segmentation.grid.index_to_world(p[::-1].astype(float)) for p in zyx])
    return np.linalg.norm(world, axis=1)


def test_doubtful_voxels_stay_on_bone_only(heatmap_model) -> None:
    _, x = _grid()
    image = _ct(x >= 0.0)  # bone on the patient's left half
    plain = segment_vertebrae(image, [(L1, np.zeros(3))], heatmap_model, bone_floor=None)
    assert plain.held_by_bone is None
    assert _radii(plain).max() <= FLOOR_R + 0.01
    kept = segment_vertebrae(image, [(L1, np.zeros(3))], heatmap_model, bone_floor=0.2)
    radii = _radii(kept)
    assert FLOOR_R + 2.0 < radii.max() <= BONE_FLOOR_R + 0.01
    zyx = np.argwhere(kept.labels == L1)
    world_x = np.array([kept.grid.index_to_world(p[::-1].astype(float))[0] for p in zyx])
    assert np.all(world_x[radii > FLOOR_R + 0.01] >= 0.0)  # beyond the floor's ball: bone only
    assert kept.voxels[L1] == len(radii) > plain.voxels[L1]
    assert np.array_equal(kept.held_by_bone, (kept.labels == L1) & (plain_labels(plain, kept) == 0))


def plain_labels(plain, kept) -> np.ndarray:
    """``plain``'s label map on ``kept``'s grid (the two grids are the same patch)."""
    assert plain.grid.same_as(kept.grid)
    return plain.labels


def test_doubtful_bone_that_does_not_join_its_vertebra_is_dropped(heatmap_model) -> None:
    """A bone shell between the two balls, parted from the floor's ball by soft tissue: an island."""
    r, _ = _grid()
    image = _ct((r >= FLOOR_R + 2.0) & (r <= BONE_FLOOR_R))
    kept = segment_vertebrae(image, [(L1, np.zeros(3))], heatmap_model, bone_floor=0.2)
    assert _radii(kept).max() <= FLOOR_R + 0.01
    assert not kept.held_by_bone.any()


@pytest.mark.parametrize(("value", "bone"), [(40.0, False), (BONE_HU - 1.0, False), (BONE_HU, True)])
def test_what_counts_as_bone(heatmap_model, value: float, bone: bool) -> None:
    """Soft tissue and bone just below BONE_HU change nothing; from BONE_HU on the bone floor holds."""
    r, _ = _grid()
    image = sitk.GetImageFromArray(np.full(r.shape, value, np.float32))
    image.SetOrigin((-32.0, -32.0, -32.0))
    kept = segment_vertebrae(image, [(L1, np.zeros(3))], heatmap_model, bone_floor=0.2)
    plain = segment_vertebrae(image, [(L1, np.zeros(3))], heatmap_model, bone_floor=None)
    assert np.array_equal(kept.labels, plain.labels) is not bone
    assert bool(kept.held_by_bone.any()) is bone


def test_join_doubtful_joins_a_label_to_its_own_part_only() -> None:
    from algorithm.segment import join_doubtful

    labels = np.zeros((1, 1, 9), np.uint8)
    labels[0, 0, 0:2], labels[0, 0, 7:9] = 20, 21
    doubtful = np.zeros_like(labels)
    doubtful[0, 0, 2:4] = 20  # touches L1's part: joins
    doubtful[0, 0, 5:7] = 20  # touches L2's part only, and not L1's through L1's doubtful voxels: stays out
    assert np.flatnonzero(join_doubtful(labels, doubtful)[0, 0]).tolist() == [2, 3]
    doubtful[0, 0, 4] = 20  # now a chain of L1's doubtful voxels reaches it
    assert np.flatnonzero(join_doubtful(labels, doubtful)[0, 0]).tolist() == [2, 3, 4, 5, 6]
    assert not join_doubtful(np.zeros_like(labels), doubtful).any()  # no confident part: nothing joins

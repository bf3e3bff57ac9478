"""Algorithm building blocks, each checked against a direct computation or geometry known by hand.

Tiling, Gaussian weights, peaks, segment merging, all-or-nothing outputs, model lookup order,
execution-provider choice and input discovery. Real ONNX Runtime sessions where a model runs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from algorithm_fixtures import (
    add_metadata,
    build_linear_model,
    detect_meta,
    fixture_model_dir,
    gc_input,
    make_phantom,
)

from algorithm.inputs import InputError, check_ct, find_input_ct
from algorithm.locate import channel_scores, find_peaks, refine_peak
from algorithm.models import ModelError, ModelSource, find_model_dir, load_models, load_stage, provider_chain
from algorithm.outputs import commit_outputs, text_writer
from algorithm.segment import largest_component_per_label, merge_patch, patch_start
from algorithm.tiling import WEIGHT_FLOOR, gaussian_importance, sliding_window, tile_starts
from spine.image import Geometry
from spine.labels import LOCATE_CHANNELS
from spine.layout import MODEL_DIR_ENV, AlgorithmLayout
from spine.preprocess import crop_patch, gaussian_heatmap, model_grid

# --------------------------------------------------------------------------- tiling


def test_gaussian_importance_peaks_at_the_centre_is_symmetric_and_floored() -> None:
    weights = gaussian_importance((9, 12, 7))
    assert weights.shape == (9, 12, 7) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(weights), weights.shape) == (4, 5, 3)  # even axis: either middle voxel
    assert np.allclose(weights, weights[::-1, ::-1, ::-1])
    assert weights.min() >= WEIGHT_FLOOR
    # sigma = size / 8 voxels: 4 voxels from the centre of 33 weighs exp(-(4 / 4.125)^2 / 2)
    line = gaussian_importance((1, 1, 33))[0, 0]
    assert line[16 + 4] == pytest.approx(np.exp(-0.5 * (4 / 4.125) ** 2), rel=1e-5)


@pytest.mark.parametrize(("size", "patch", "overlap", "expected"), [
    (10, 16, 0.5, [0]),
    (16, 16, 0.5, [0]),
    (32, 16, 0.5, [0, 8, 16]),
    (33, 16, 0.5, [0, 6, 11, 17]),
    (40, 16, 0.0, [0, 12, 24]),
])
def test_tile_starts_cover_the_axis_evenly(size, patch, overlap, expected) -> None:
    starts = tile_starts(size, patch, overlap)
    assert starts == expected
    assert starts[0] == 0 and starts[-1] + patch >= size
    assert all(b - a <= patch * (1 - overlap) + 1e-9 for a, b in itertools.pairwise(starts))


def affine(batch: np.ndarray) -> np.ndarray:
    """Voxel-wise model with three output channels: k-th = (k + 1) * x + k."""
    return np.concatenate([(k + 1) * batch + k for k in range(3)], axis=1)


@pytest.mark.parametrize("shape", [(37, 50, 29), (10, 9, 40), (16, 16, 16)])
def test_tiling_a_voxelwise_model_equals_the_whole_volume_at_once(shape) -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(1, *shape)).astype(np.float32)
    tiled = sliding_window(volume, affine, (16, 16, 16), 3, overlap=0.5, batch_size=3)
    assert tiled.shape == (3, *shape)
    assert np.allclose(tiled, affine(volume[None])[0], atol=1e-5)


def test_tiles_are_blended_by_their_gaussian_weights() -> None:
    """Each tile predicts a constant (its index): the result is the weight-normalised mean."""
    calls: list[int] = []

    def constant(batch: np.ndarray) -> np.ndarray:
        calls.append(len(calls))
        return np.full((1, 1, *batch.shape[2:]), float(len(calls) - 1), dtype=np.float32)

    result = sliding_window(np.zeros((1, 8, 8, 24), np.float32), constant, (8, 8, 16), 1, overlap=0.5)
    assert len(calls) == 2  # x starts 0 and 8
    w = gaussian_importance((8, 8, 16))
    # x = 4..7 only tile 0 covers; x = 16..23 only tile 1; in between the weighted mean
    assert np.allclose(result[0, :, :, :8], 0.0) and np.allclose(result[0, :, :, 16:], 1.0)
    x = 12  # tile 0 at its x = 12, tile 1 at its x = 4
    expected = (0 * w[:, :, 12] + 1 * w[:, :, 4]) / (w[:, :, 12] + w[:, :, 4])
    assert np.allclose(result[0, :, :, x], expected, atol=1e-6)


def test_tiling_pads_a_small_volume_with_the_background_value() -> None:
    seen: list[np.ndarray] = []

    def record(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return batch

    volume = np.ones((1, 4, 16, 16), np.float32)
    out = sliding_window(volume, record, (8, 16, 16), 1, pad_value=-1.024)
    assert out.shape == (1, 4, 16, 16) and np.allclose(out, 1.0)
    assert np.allclose(seen[0][0, 0, :2], -1.024) and np.allclose(seen[0][0, 0, 6:], -1.024)


def test_tiling_through_onnx_runtime_equals_the_direct_computation(tmp_path: Path) -> None:
    meta = detect_meta(channels=("a", "b", "c"), patch_shape_zyx=(16, 16, 16))
    model = load_stage("detect", build_linear_model(tmp_path / "detect.onnx", meta), ["CPUExecutionProvider"])
    volume = np.random.default_rng(1).normal(size=(1, 21, 40, 33)).astype(np.float32)
    tiled = sliding_window(volume, model.run, meta.patch_shape_zyx, 3, overlap=0.5)
    assert np.allclose(tiled, affine(volume[None])[0], atol=1e-4)


def test_fixed_batch_graph_runs_any_number_of_patches(tmp_path: Path) -> None:
    from algorithm_fixtures import _modules, export_module

    *_, linear = _modules()
    meta = detect_meta(channels=("a",), patch_shape_zyx=(8, 8, 8))
    path = export_module(linear(1), meta, tmp_path / "detect.onnx", dynamic_batch=False, batch=2)
    model = load_stage("detect", path, ["CPUExecutionProvider"])
    assert model.max_batch == 2 and model.batch_size == 2
    batch = np.random.default_rng(2).normal(size=(3, 1, 8, 8, 8)).astype(np.float32)
    assert np.allclose(model.run(batch), batch, atol=1e-5)


# --------------------------------------------------------------------------- peaks


def blobs(shape, centres, spacing, sigma_mm=6.0, heights=None) -> np.ndarray:
    volume = np.zeros(shape, np.float32)
    for i, centre in enumerate(centres):
        volume = np.maximum(volume, (heights[i] if heights else 1.0) * gaussian_heatmap(shape, centre, sigma_mm,
                                                                                          spacing))
    return volume


def test_peaks_are_found_strongest_first_and_refined_below_a_voxel() -> None:
    spacing = (2.0, 1.0, 1.5)
    centres = [(10.3, 20.6, 12.2), (25.0, 40.0, 20.0)]
    heat = blobs((40, 60, 30), centres, spacing, heights=[0.7, 0.9])
    peaks = find_peaks(heat, spacing, threshold=0.3, min_separation_mm=10)
    assert peaks.tolist() == [[25, 40, 20], [10, 21, 12]]
    refined = refine_peak(heat, peaks[1])
    assert np.allclose(refined, centres[0], atol=0.1)


def test_peaks_closer_than_the_separation_keep_only_the_stronger() -> None:
    spacing = (1.0, 1.0, 1.0)
    heat = blobs((30, 30, 30), [(10, 15, 15), (17, 15, 15)], spacing, sigma_mm=2.0, heights=[1.0, 0.8])
    assert len(find_peaks(heat, spacing, threshold=0.3, min_separation_mm=5)) == 2
    assert find_peaks(heat, spacing, threshold=0.3, min_separation_mm=10).tolist() == [[10, 15, 15]]
    assert find_peaks(heat, spacing, threshold=0.9, min_separation_mm=5).tolist() == [[10, 15, 15]]
    assert find_peaks(np.zeros((5, 5, 5), np.float32), spacing).shape == (0, 3)


def test_a_plateau_yields_one_peak() -> None:
    heat = np.zeros((10, 10, 10), np.float32)
    heat[4:6, 4:6, 4:6] = 0.8
    assert len(find_peaks(heat, (1, 1, 1), threshold=0.5, min_separation_mm=3)) == 1


def test_channel_scores_follow_locate_channels_whatever_the_model_order() -> None:
    heat = np.zeros((3, 4, 4, 4), np.float32)
    heat[0, 1, 1, 1], heat[1, 1, 1, 1], heat[2, 2, 2, 2] = 0.2, 0.9, 0.6
    scores = channel_scores(heat, np.array([[1, 1, 1], [2, 2, 2]]), channel_labels=(28, 20, 1))
    assert scores.shape == (2, len(LOCATE_CHANNELS))
    column = {label: i for i, label in enumerate(LOCATE_CHANNELS)}
    assert scores[0, column[28]] == pytest.approx(0.2) and scores[0, column[20]] == pytest.approx(0.9)
    assert scores[1, column[1]] == pytest.approx(0.6)
    assert scores.sum() == pytest.approx(1.7)


# --------------------------------------------------------------------------- segment merging


def test_merge_takes_the_most_probable_vertebra_per_voxel_then_the_floor() -> None:
    best = np.zeros((4, 4, 6), np.float32)
    labels = np.zeros((4, 4, 6), np.uint8)
    merge_patch(best, labels, np.full((4, 4, 4), 0.6, np.float32), (0, 0, 0), 20)
    merge_patch(best, labels, np.full((4, 4, 4), 0.8, np.float32), (0, 0, 2), 21)
    merge_patch(best, labels, np.full((4, 4, 4), 0.4, np.float32), (0, 0, 4), 22)  # partly outside: clipped
    assert labels[0, 0].tolist() == [20, 20, 21, 21, 21, 21]
    assert np.allclose(best[0, 0], [0.6, 0.6, 0.8, 0.8, 0.8, 0.8])
    merge_patch(best, labels, np.full((2, 2, 2), 0.45, np.float32), (2, 2, 4), 23)
    labels[best < 0.5] = 0
    assert labels[3, 3, 5] == 21  # 0.45 never beat 0.8
    merge_patch(best, labels, np.ones((2, 2, 2), np.float32), (9, 9, 9), 24)  # wholly outside: no-op
    assert 24 not in labels


def test_below_the_floor_a_voxel_stays_background_even_if_it_is_the_best() -> None:
    best = np.zeros((1, 1, 3), np.float32)
    labels = np.zeros((1, 1, 3), np.uint8)
    merge_patch(best, labels, np.array([[[0.3, 0.6, 0.49]]], np.float32), (0, 0, 0), 5)
    labels[best < 0.5] = 0
    assert labels.ravel().tolist() == [0, 5, 0]


def test_largest_component_per_label_drops_islands_only() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 20  # 27 voxels
    labels[8, 8, 8] = 20  # island
    labels[5:7, 5:7, 5:7] = 21  # 8 voxels, touching nothing of its own label elsewhere
    labels[0, 9, 0] = 21  # island
    labels[4, 4, 4] = 20  # diagonal neighbour of the block: 26-connected, kept
    kept = largest_component_per_label(labels)
    assert kept[8, 8, 8] == 0 and kept[0, 9, 0] == 0 and kept[4, 4, 4] == 20
    assert (kept == 20).sum() == 28 and (kept == 21).sum() == 8
    regions = {20: (slice(0, 5), slice(0, 5), slice(0, 5)), 21: (slice(5, 7),) * 3}
    assert np.array_equal(largest_component_per_label(labels, regions)[:7, :7, :7], kept[:7, :7, :7])
    assert labels[8, 8, 8] == 20  # the input is untouched


def test_patch_placement_matches_crop_patch_used_in_training() -> None:
    image = make_phantom(with_spine=False).image
    grid = model_grid(Geometry.of(image), (1.0, 1.0, 1.0))
    point = np.array([15.3, -22.7, 260.4])
    start, centre = patch_start(grid, point, (32, 32, 32))
    zyx = grid.world_to_index(point)[::-1]
    _, expected_start = crop_patch(np.zeros(grid.shape_zyx, np.float32), zyx, (32, 32, 32))
    assert tuple(start) == expected_start
    assert np.allclose(start + centre, zyx)


# --------------------------------------------------------------------------- outputs


def test_outputs_are_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        commit_outputs([(out / "images" / "seg" / "output.mha", text_writer("a")), (out / "points.json", fail)])
    assert list(out.rglob("*")) == []  # no file, no temporary, no created folder
    written = commit_outputs([(out / "images" / "seg" / "a.txt", text_writer("a")),
                              (out / "b.json", text_writer("{}"))])
    assert [p.read_text() for p in written] == ["a", "{}"]
    assert stat.S_IMODE(os.stat(written[0]).st_mode) == 0o644
    assert sorted(p.name for p in out.rglob("*")) == ["a.txt", "b.json", "images", "seg"]


# --------------------------------------------------------------------------- models


def test_model_lookup_order(tmp_path: Path) -> None:
    models = fixture_model_dir()
    gc_dir, explicit, env, bundled = (tmp_path / name for name in ("opt-ml-model", "explicit", "env", "bundled"))
    for folder in (explicit, env, bundled):
        shutil.copytree(models, folder)
    layout = AlgorithmLayout(gc_model_dir=gc_dir)
    environ = {MODEL_DIR_ENV: str(env)}

    assert find_model_dir(layout=layout, models=explicit, environ=environ, bundled=bundled) == \
        ModelSource(explicit, "--models")
    assert find_model_dir(layout=layout, environ=environ, bundled=bundled) == ModelSource(env, MODEL_DIR_ENV)
    assert find_model_dir(layout=layout, environ={}, bundled=bundled) == ModelSource(bundled, "bundled")
    # GC's tarball wins over everything, files at its root or in a models/ folder
    shutil.copytree(models, gc_dir / "models")
    assert find_model_dir(layout=layout, models=explicit, environ=environ, bundled=bundled) == \
        ModelSource(gc_dir / "models", "gc-model-dir")
    shutil.copytree(models, gc_dir, dirs_exist_ok=True)
    assert find_model_dir(layout=layout, models=explicit, bundled=bundled).rule == "gc-model-dir"
    # an incomplete GC folder is ignored; an incomplete explicit one is an error, not a fall-through
    shutil.rmtree(gc_dir)
    gc_dir.mkdir()
    shutil.copy(models / "detect.onnx", gc_dir)
    (explicit / "segment.onnx").unlink()
    with pytest.raises(ModelError, match=r"explicit: no segment\.onnx"):
        find_model_dir(layout=layout, models=explicit, environ=environ, bundled=bundled)
    with pytest.raises(ModelError, match="no models found"):
        find_model_dir(layout=layout, environ={}, bundled=tmp_path / "nowhere")


def test_models_that_contradict_their_file_or_lack_metadata_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(fixture_model_dir(), folder)
    shutil.copy(folder / "detect.onnx", folder / "locate.onnx")
    with pytest.raises(ModelError, match=r"locate\.onnx: metadata says stage 'detect'"):
        load_models(ModelSource(folder, "test"), device="cpu")
    shutil.copy(fixture_model_dir() / "locate.onnx", folder / "locate.onnx")
    add_metadata(folder / "segment.onnx", detect_meta(), extra={})  # wrong stage and channels
    with pytest.raises(ModelError, match=r"segment\.onnx"):
        load_models(ModelSource(folder, "test"), device="cpu")
    import onnx

    bare = onnx.load(str(folder / "detect.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(folder / "detect.onnx"))
    with pytest.raises(ModelError, match="not a verse-gc model"):
        load_models(ModelSource(folder, "test"), device="cpu")
    (folder / "detect.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        load_models(ModelSource(folder, "test"), device="cpu")


def test_provider_choice() -> None:
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def names(chain):
        return [p[0] if isinstance(p, tuple) else p for p in chain]

    assert provider_chain("auto", cpu_only, gpus=1) == ["CPUExecutionProvider"]
    assert provider_chain("auto", gpu, gpus=0) == ["CPUExecutionProvider"]  # onnxruntime-gpu, no GPU
    assert provider_chain("cpu", gpu, gpus=1) == ["CPUExecutionProvider"]
    assert names(provider_chain("auto", gpu, gpus=1)) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert names(provider_chain("cuda", gpu, gpus=2, tensorrt=True)) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ModelError, match="no CUDAExecutionProvider"):
        provider_chain("cuda", cpu_only, gpus=1)
    with pytest.raises(ModelError, match="no CUDA GPU found"):
        provider_chain("cuda", gpu, gpus=0)
    with pytest.raises(ValueError, match="device"):
        provider_chain("tpu", cpu_only, gpus=0)  # type: ignore[arg-type]


def test_forcing_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="--device cuda"):
        load_models(ModelSource(fixture_model_dir(), "test"), device="cuda")


def test_cpu_sessions_load_with_their_metadata() -> None:
    models = load_models(ModelSource(fixture_model_dir(), "test"), device="auto")
    assert models.providers == ["CPUExecutionProvider"] and not models.on_gpu
    assert models.locate.meta.channel_labels == LOCATE_CHANNELS
    assert models.segment.meta.input_channels == ("ct", "heatmap")
    described = models.describe()
    assert described["rule"] == "test" and len(described["segment"]["sha256"]) == 64


# --------------------------------------------------------------------------- inputs


def small_ct() -> sitk.Image:
    array = np.full((6, 7, 8), -1000, np.int16)
    array[2:4, 2:5, 3:6] = 400
    return sitk.GetImageFromArray(array)


@pytest.mark.parametrize("variant", ["socket", "interface", None])
def test_the_ct_is_found_with_and_without_inputs_json(tmp_path: Path, variant) -> None:
    path = gc_input(tmp_path, small_ct(), variant=variant)
    assert find_input_ct(AlgorithmLayout(input_dir=tmp_path)) == path


def test_input_discovery_refuses_ambiguity_and_absence(tmp_path: Path) -> None:
    layout = AlgorithmLayout(input_dir=tmp_path)
    with pytest.raises(InputError, match=r"no inputs\.json and no image"):
        find_input_ct(layout)
    gc_input(tmp_path, small_ct(), variant="socket", name="a.mha")
    (tmp_path / "images" / "ct" / "notes.txt").write_text("not an image")
    assert find_input_ct(layout).name == "a.mha"
    sitk.WriteImage(small_ct(), str(tmp_path / "images" / "ct" / "b.mha"))
    with pytest.raises(InputError, match="2 images where one CT is expected"):
        find_input_ct(layout)
    (tmp_path / "inputs.json").write_text(json.dumps([{"socket": {"slug": "other", "relative_path": "x"}}]))
    with pytest.raises(InputError, match="no 'ct-image' socket"):
        find_input_ct(layout)
    (tmp_path / "inputs.json").write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        find_input_ct(layout)
    with pytest.raises(InputError, match="does not exist"):
        find_input_ct(AlgorithmLayout(input_dir=tmp_path / "missing"))


def test_ct_checks_name_the_problem() -> None:
    check_ct(small_ct(), "ok.mha")
    flat = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16))
    with pytest.raises(InputError, match="constant image"):
        check_ct(flat, "flat.mha")
    nan = sitk.GetImageFromArray(np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 1.0).astype(np.float32))
    with pytest.raises(InputError, match="1 voxels are NaN"):
        check_ct(nan, "nan.mha")
    for spacing in ((0.01, 1.0, 1.0), (1.0, 1.0, 25.0)):
        image = small_ct()
        image.SetSpacing(spacing)
        with pytest.raises(InputError, match="outside"):
            check_ct(image, "spacing.mha")


def test_region_posterior_counts_only_where_the_network_sees_a_body() -> None:
    """A candidate with no centre probability (found by the segment model's outline, not the heatmap) must not
    turn the network's noise-level label softmax into confident region evidence."""
    from algorithm.locate import REGION_CONFIDENT_PEAK, Candidates
    from spine.labels import LOCATE_CHANNELS

    scores = np.zeros((3, len(LOCATE_CHANNELS)), np.float32)
    lumbar = LOCATE_CHANNELS.index(22)
    scores[:, lumbar] = [0.9, 0.1, 1e-4]
    peak = np.array([0.9, 0.1, 1e-4])
    regions = Candidates(np.zeros((3, 3)), scores, peak).regions()
    np.testing.assert_allclose(regions[0], [0.0, 0.0, 1.0])
    w = 0.1 / REGION_CONFIDENT_PEAK
    np.testing.assert_allclose(regions[1], [(1 - w) / 3, (1 - w) / 3, w + (1 - w) / 3])
    np.testing.assert_allclose(regions[2], [1 / 3, 1 / 3, 1 / 3], atol=1e-3)
    np.testing.assert_allclose(regions.sum(axis=1), 1.0)


def test_accepted_vertebrae_run_head_to_foot_by_level_and_keep_the_more_confident_of_a_repeat() -> None:
    """A chain that runs level at the scan's bottom edge (a cropped neck's T3-T5 within 1 mm of height, T4 the
    highest) is reported T3, T4, T5, not by height; a repeated label keeps its more confident candidate."""
    from algorithm.pipeline import _accepted

    positions = np.array([[0.0, 0.0, 90.3], [0.0, 15.0, 90.5], [0.0, 35.0, 89.9], [0.0, -20.0, 108.7],
                          [0.0, 5.0, 91.0], [0.0, 0.0, 200.0]])
    labels = np.array([10, 11, 12, 9, 11, 0])  # T3, T4, T5, T2, T4 again, rejected
    confidence = np.array([0.8, 0.9, 0.8, 0.8, 0.6, 0.99])
    accepted = _accepted(positions, labels, confidence)
    assert [v.name for v in accepted] == ["T2", "T3", "T4", "T5"]
    assert accepted[2].position_mm == (0.0, 15.0, 90.5) and accepted[2].confidence == 0.9


def test_c2_moves_to_its_centroid_with_the_dens_only_where_an_outline_found_it() -> None:
    """A C2 an outline found is its body's centre: it moves up the chain and forwards to VerSe's C2 centroid
    (spine.body.C2_DENS_SHIFT_MM). A heatmap peak (the network's own centroid), a C2 the skull rule placed under C1
    (its offset measured on annotated C2 centroids), a C2 with no candidate (placed between its neighbours), one
    the field of view cuts above, and a C2 with no neighbour to give the spine's axis stay; no other vertebra
    moves."""
    from algorithm.locate import Candidates
    from algorithm.pipeline import Vertebra, _c2_with_its_dens, _subset
    from spine.body import C2_DENS_SHIFT_MM

    along, ahead = C2_DENS_SHIFT_MM
    positions = np.array([[0.0, 0.0, 100.0], [0.0, 0.0, 85.0], [0.0, 0.0, 70.0]])
    scores = np.zeros((3, len(LOCATE_CHANNELS)), dtype=np.float32)
    outlined = Candidates(positions, scores, np.ones(3), outlined=np.ones(3, dtype=bool))
    chain = tuple(Vertebra(label, tuple(p), 0.9) for label, p in zip((1, 2, 3), positions, strict=True))
    moved = _c2_with_its_dens(chain, outlined)
    np.testing.assert_allclose(moved[1].position_mm, [0.0, -ahead, 85.0 + along])
    assert moved[0] == chain[0] and moved[2] == chain[2] and moved[1].confidence == 0.9
    # only C1 or only C3 beside it: the axis runs through C2 and that neighbour
    np.testing.assert_allclose(_c2_with_its_dens(chain[:2], outlined)[1].position_mm, moved[1].position_mm)
    np.testing.assert_allclose(_c2_with_its_dens(chain[1:], outlined)[0].position_mm, moved[1].position_mm)
    # heatmap peaks (no outlines), the skull rule's C2 (with_point), a cut one
    assert _c2_with_its_dens(chain, Candidates(positions, scores, np.ones(3))) == chain
    rule = Candidates(positions[[0, 2]], scores[:2], np.ones(2), outlined=np.ones(2, dtype=bool)).with_point(
        positions[1])
    assert rule.outlined is not None and rule.outlined.tolist() == [False, True, True]
    assert _c2_with_its_dens(chain, rule) == chain
    kept = _subset(rule, np.array([True, False, True]))
    assert kept.outlined is not None and kept.outlined.tolist() == [False, True]
    cut = np.array([[False, False], [True, False], [False, False]])
    assert _c2_with_its_dens(chain, Candidates(positions, scores, np.ones(3), cut=cut,
                                               outlined=np.ones(3, dtype=bool))) == chain
    # no candidate at C2 (placed between C1 and C3), no C2 at all, C2 alone
    assert _c2_with_its_dens(chain, Candidates(positions[[0, 2]], scores[:2], np.ones(2),
                                               outlined=np.ones(2, dtype=bool))) == chain
    assert _c2_with_its_dens(chain[::2], outlined) == chain[::2]
    assert _c2_with_its_dens(chain[1:2], outlined) == chain[1:2]

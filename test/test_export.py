"""Training and ONNX export smoke tests on a tiny stand-in data set (seconds, 2 CPU cores).

The stand-in cases are built here (not by the synthetic generator): a soft-tissue cylinder
with four bone ellipsoids labelled L1-L4, stored with a flipped (non-identity) direction
so the model-grid resampling is exercised. Networks are shrunk through the CLI flags
(16^3 patches, depth 2, 4 channels).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export.cli import main as cli_main  # noqa: E402
from export.datasets import (  # noqa: E402
    STAGE_DEFAULTS,
    Augmentation,
    PatchSampler,
    StageVolume,
    default_meta,
    locate_target,
    prepare_volume,
    segment_inputs,
)
from export.networks import (  # noqa: E402
    NetworkConfig,
    UNet3D,
    build_network,
    count_parameters,
    default_network_config,
    probabilities,
)
from export.onnx_export import ParityError, export_checkpoint  # noqa: E402
from export.train import load_checkpoint, stage_loss  # noqa: E402
from export.validation import locate_metrics, sliding_window  # noqa: E402
from spine.case import Case  # noqa: E402
from spine.image import Geometry, image_from_array  # noqa: E402
from spine.labels import LOCATE_CHANNELS  # noqa: E402
from spine.modelmeta import ModelMeta  # noqa: E402
from spine.preprocess import world_to_zyx  # noqa: E402

torch.set_num_threads(2)

TINY = {
    "detect": ["--spacing", "5", "5", "5", "--patch", "16", "16", "16"],
    "locate": ["--spacing", "5", "5", "5", "--patch", "16", "16", "16", "--sigma-mm", "6"],
    "segment": ["--spacing", "2.5", "2.5", "2.5", "--patch", "16", "16", "16"],
}
NET = ["--depth", "2", "--base-channels", "4"]
LABELS = (20, 21, 22, 23)


def toy_case(seed: int) -> Case:
    """A 80 x 80 x 140 mm stand-in spine: four bone ellipsoids (L1-L4) in a soft-tissue cylinder."""
    rng = np.random.default_rng(seed)
    spacing = 2.5
    shape_zyx = (56, 32, 32)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * spacing for n in shape_zyx], indexing="ij")
    hu = np.full(shape_zyx, -1000.0, dtype=np.float32)
    hu[((x - 40) / 36) ** 2 + ((y - 40) / 32) ** 2 <= 1] = 40.0
    mask = np.zeros(shape_zyx, dtype=np.uint8)
    centres = {}
    shift = rng.uniform(-4, 4, 3)
    for i, label in enumerate(LABELS):
        centre = np.array([125.0 - 30.0 * i, 40.0, 40.0]) + shift  # (z, y, x) mm, L1 on top
        inside = ((z - centre[0]) / 11) ** 2 + ((y - centre[1]) / 13) ** 2 + ((x - centre[2]) / 14) ** 2 <= 1
        hu[inside] = 500.0 + 100.0 * i
        mask[inside] = label
        centres[label] = centre
    hu += rng.normal(0, 15, shape_zyx).astype(np.float32)
    geometry = Geometry(size=shape_zyx[::-1], spacing_mm=(spacing,) * 3, origin_mm=(-40.0, -60.0, 300.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    ct = image_from_array(hu.astype(np.int16), geometry)
    mask_image = image_from_array(mask, geometry)
    centroids = {label: geometry.index_to_world((c / spacing - 0.5)[::-1]) for label, c in centres.items()}
    # Store with a flipped axis (direction not identity); the world content is unchanged.
    ct, mask_image = sitk.Flip(ct, [False, True, False]), sitk.Flip(mask_image, [False, True, False])
    return Case(case_id=f"sub-toy{seed:03d}", ct=ct, mask=mask_image, centroids_mm=centroids, source=f"toy:{seed}")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three stand-in cases in the VerSe layout (the last one is held out for validation)."""
    from export.synth import write_case

    root = tmp_path_factory.mktemp("toy")
    for seed in range(3):
        write_case(toy_case(seed), root)
    return root


def _train(data: Path, stage: str, out: Path, iterations: int, *extra: str) -> int:
    return cli_main(["-q", "train", stage, "--data", str(data), "--out", str(out), "--iterations", str(iterations),
                     "--val-every", "2", "--val-cases", "1", "--batch-size", "1", "--no-progress",
                     "--cache", str(out.parent / "cache"), *TINY[stage], *NET, *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# ----------------------------------------------------------------------------- networks and data


def test_unet_shapes_and_patch_check() -> None:
    net = UNet3D(2, 3, NetworkConfig(base_channels=4, depth=3))
    out = net(torch.zeros(2, 2, 16, 24, 8))
    assert out.shape == (2, 3, 16, 24, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        net.check_patch_shape((16, 18, 8))


def test_instance_norm_exports_accurately(tmp_path: Path) -> None:
    """Regression: ONNX Runtime's InstanceNormalization was ~1e-4 off on a 64x48x48 map (parity 7e-3)."""
    import warnings

    from export.networks import InstanceNorm3d

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 48, 48, generator=generator) * 2.4 + 0.65
    x[:, :, :, :10] = 3.0  # a constant region, as air padding gives
    norm = InstanceNorm3d(3).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, -0.2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(norm, (x,), str(tmp_path / "norm.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    got = ort.InferenceSession(str(tmp_path / "norm.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    with torch.no_grad():
        reference = norm.double()(x.double()).numpy()
    assert np.abs(got - reference).max() < 1e-5


@pytest.mark.parametrize("stage", ["detect", "locate", "segment"])
def test_default_networks_are_small(stage: str) -> None:
    meta = default_meta(stage)
    net = build_network(meta, default_network_config(stage))
    assert 100_000 < count_parameters(net) < 2_500_000
    assert len(meta.channels) == (26 if stage == "locate" else 1)
    assert ModelMeta.from_props(meta.to_props()) == meta


def test_locate_target_puts_each_centroid_in_its_channel() -> None:
    centroids = {20: np.array([8.0, 8.0, 8.0]), 28: np.array([2.0, 3.0, 4.0])}
    target = locate_target(centroids, (0, 0, 0), (16, 16, 16), 5.0, (2.0, 2.0, 2.0))
    assert target.shape == (len(LOCATE_CHANNELS), 16, 16, 16)
    l1, t13 = LOCATE_CHANNELS.index(20), LOCATE_CHANNELS.index(28)
    assert np.unravel_index(target[l1].argmax(), target[l1].shape) == (8, 8, 8)
    assert target[l1].max() == pytest.approx(1.0)
    assert np.unravel_index(target[t13].argmax(), target[t13].shape) == (2, 3, 4)
    others = [c for c in range(len(LOCATE_CHANNELS)) if c not in (l1, t13)]
    assert target[others].max() == 0.0


def test_segment_inputs_follow_crop_patch_convention() -> None:
    meta = default_meta("segment", spacing_zyx_mm=(2.0, 2.0, 2.0), patch_shape_zyx=(16, 16, 16))
    image = np.zeros((40, 40, 40), np.float32)
    x, start = segment_inputs(image, (20.0, 21.0, 22.0), meta)
    assert x.shape == (2, 16, 16, 16)
    assert start == (12, 13, 14)
    assert np.unravel_index(x[1].argmax(), x[1].shape) == (8, 8, 8)  # centroid at patch index shape/2


def test_preprocessing_and_sampler_on_a_toy_case() -> None:
    case = toy_case(0)
    meta = default_meta("segment", spacing_zyx_mm=(2.5, 2.5, 2.5), patch_shape_zyx=(16, 16, 16))
    volume = prepare_volume(case, meta, crop_margin_mm=STAGE_DEFAULTS["segment"].crop_margin_mm)
    for label, zyx in volume.centroids_zyx.items():  # centroids land inside their own label
        assert volume.labels[tuple(np.round(zyx).astype(int))] == label
    sampler = PatchSampler([volume], meta, np.random.default_rng(0), Augmentation())
    x, y = sampler.sample(3)
    assert x.shape == (3, 2, 16, 16, 16) and y.shape == (3, 1, 16, 16, 16)
    assert set(np.unique(y)) <= {0.0, 1.0} and y.sum() > 0

    detect = prepare_volume(case, default_meta("detect", spacing_zyx_mm=(5, 5, 5), patch_shape_zyx=(16, 16, 16)))
    assert detect.target is not None and 0 < detect.target.mean() < 0.5


def test_locate_loss_balances_the_spine_and_metrics_find_peaks() -> None:
    target = torch.zeros(1, 26, 8, 8, 8)
    target[0, 3, 4, 4, 4] = 1.0
    good = torch.full_like(target, -8.0)
    good[0, 3, 4, 4, 4] = 8.0
    assert stage_loss("locate", good, target) < stage_loss("locate", torch.full_like(target, -8.0), target)

    logits = torch.zeros(1, 27, 8, 8, 8)  # centre_label head: centre logit + 26 label logits
    logits[:, 0] = -8.0
    confident = logits.clone()
    confident[0, 0, 4, 4, 4] = 8.0
    confident[0, 1 + 3, 4, 4, 4] = 8.0
    assert stage_loss("locate", confident, target, "centre_label") < stage_loss("locate", logits, target,
                                                                                "centre_label")

    prob = np.zeros((26, 10, 10, 10), np.float32)
    prob[LOCATE_CHANNELS.index(20), 2, 2, 2] = 0.9
    prob[LOCATE_CHANNELS.index(20), 2, 2, 3] = 0.7
    prob[LOCATE_CHANNELS.index(21), 2, 2, 4] = 0.8
    centroids = {20: np.array([2.0, 2.0, 3.0]), 21: np.array([7.0, 7.0, 5.0])}
    metrics = locate_metrics(prob, centroids, (2.0, 2.0, 2.0))
    assert metrics["id_rate"] == 0.5  # L1 2 mm off: hit; L2's peak is nearest to L1's centroid: miss
    assert metrics["distance_mm"] == pytest.approx((2.0 + 2.0 * np.sqrt(51.0)) / 2)
    assert metrics["label_accuracy"] == 0.5  # L1 wins at its centroid; nothing at L2's
    # Peaks of the channel max (0.9 at (2,2,2), 0.8 at (2,2,4)) as the algorithm sees them: L1's
    # nearest peak is 2 mm away and reads L1; L2's is 14.3 mm away (within 20 mm) and reads L2.
    assert metrics["peak_detection_rate"] == 1.0 and metrics["peak_label_accuracy"] == 1.0
    assert metrics["peak_distance_mm"] == pytest.approx((2.0 + 2.0 * np.sqrt(51.0)) / 2)
    assert metrics["false_peaks"] == 0.0


def test_keep_centre_floor_keeps_unlabelled_centres_and_leaves_the_label_loss_alone() -> None:
    """``--keep-centre``: a centre the labels leave out (the starting model's own, at (6,4,4)) is a positive, not a
    negative; the label cross-entropy still counts the labelled centre only."""
    target = torch.zeros(1, 26, 8, 8, 8)
    target[0, 3, 2, 4, 4] = 1.0  # the labelled centre
    floor = torch.zeros(1, 1, 8, 8, 8)
    floor[0, 0, 6, 4, 4] = 0.9  # the starting model's centre below the last label
    keeps, forgets = torch.full((1, 27, 8, 8, 8), -8.0), torch.full((1, 27, 8, 8, 8), -8.0)
    for logits in (keeps, forgets):
        logits[0, 0, 2, 4, 4] = 8.0
        logits[0, 1 + 3, 2, 4, 4] = 8.0
    keeps[0, 0, 6, 4, 4] = 8.0
    assert stage_loss("locate", forgets, target, "centre_label") < stage_loss("locate", keeps, target, "centre_label")
    assert stage_loss("locate", keeps, target, "centre_label", floor) < stage_loss("locate", forgets, target,
                                                                                   "centre_label", floor)
    # Any label at the floor's centre costs the same: the floor teaches where, never which.
    relabelled = keeps.clone()
    relabelled[0, 1 + 9, 6, 4, 4] = 8.0
    assert stage_loss("locate", relabelled, target, "centre_label", floor) == pytest.approx(
        stage_loss("locate", keeps, target, "centre_label", floor).item(), abs=1e-6)
    with pytest.raises(ValueError, match="centre_label"):
        stage_loss("locate", torch.zeros(1, 26, 8, 8, 8), target, "sigmoid", floor)


def test_centre_label_head_gives_centre_probability_and_label_ratios() -> None:
    logits = torch.randn(2, 27, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    prob = probabilities(logits, "centre_label")
    assert prob.shape == (2, 26, 4, 4, 4) and prob.min() >= 0 and prob.max() <= 1
    torch.testing.assert_close(prob.amax(dim=1), torch.sigmoid(logits[:, 0]))
    softmax = torch.softmax(logits[:, 1:], dim=1)
    torch.testing.assert_close(prob[:, 3] / prob[:, 5], softmax[:, 3] / softmax[:, 5])
    torch.testing.assert_close(probabilities(logits, "sigmoid"), torch.sigmoid(logits))
    network = build_network(default_meta("locate"), NetworkConfig(base_channels=2, depth=2, head="centre_label"))
    assert network.out_channels == 27 and network.head.bias[0] == 0.0  # no prior given: bias 0
    with pytest.raises(ValueError, match="head"):
        NetworkConfig(head="softmax")


def test_sliding_window_is_exact_for_an_identity_predictor() -> None:
    image = np.random.default_rng(0).normal(size=(1, 20, 13, 9)).astype(np.float32)
    out = sliding_window(lambda batch: batch, image, (8, 8, 8), pad_value=-1.0)
    np.testing.assert_allclose(out, image, atol=1e-5)


# ----------------------------------------------------------------------------- train + export


@pytest.mark.parametrize("stage", ["detect", "locate", "segment"])
def test_train_export_parity_and_metadata(stage: str, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / stage
    assert _train(toy_data, stage, out, 2) == 0
    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint["iteration"] == 2 and checkpoint["history"][-1]["iteration"] == 2
    assert (out / "train.log").is_file() and (out / "history.jsonl").is_file()

    model_path = tmp_path / f"{stage}.onnx"
    report = export_checkpoint(out / "best.pt", model_path, parity_cases=str(toy_data), fp16=stage == "segment")
    assert report.max_abs_diff <= 1e-4 and report.n_patches >= 2
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta = ModelMeta.from_props(session.get_modelmeta().custom_metadata_map)
    assert meta.stage == stage and meta.patch_shape_zyx == (16, 16, 16)
    assert meta.version.endswith(".it2") and meta.trained_on
    expected = checkpoint["meta"]
    assert (meta.spacing_zyx_mm, meta.channels, meta.input_channels, meta.intensity, meta.heatmap_sigma_mm) == (
        expected.spacing_zyx_mm, expected.channels, expected.input_channels, expected.intensity,
        expected.heatmap_sigma_mm)
    shape = session.get_inputs()[0].shape
    assert shape[1:] == [len(meta.input_channels), 16, 16, 16]
    probability = session.run(None, {"input": np.zeros((3, *shape[1:]), np.float32)})[0]  # dynamic batch
    assert probability.shape == (3, len(meta.channels), 16, 16, 16)
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    if stage == "segment":
        assert report.fp16_max_abs_diff is not None and report.fp16_max_abs_diff <= 1e-2
        fp16 = onnx.load(report.fp16_path)
        assert ModelMeta.from_props({p.key: p.value for p in fp16.metadata_props}) == meta


def test_resume_continues_exactly_and_seed_is_deterministic(toy_data: Path, tmp_path: Path) -> None:
    assert _train(toy_data, "detect", tmp_path / "straight", 4) == 0
    assert _train(toy_data, "detect", tmp_path / "again", 4) == 0
    assert _train(toy_data, "detect", tmp_path / "split", 2) == 0
    assert _train(toy_data, "detect", tmp_path / "split", 4, "--resume") == 0
    assert _train(toy_data, "detect", tmp_path / "other", 2, "--seed", "1") == 0
    straight = _weights(tmp_path / "straight" / "last.pt")
    again = _weights(tmp_path / "again" / "last.pt")
    resumed = _weights(tmp_path / "split" / "last.pt")
    other_seed = _weights(tmp_path / "other" / "last.pt")
    for name, tensor in straight.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 4
    assert any(not torch.equal(other_seed[name], tensor) for name, tensor in straight.items())
    lines = (tmp_path / "split" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4]


def test_parity_failure_is_loud_and_writes_nothing(toy_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import export.onnx_export as onnx_export

    assert _train(toy_data, "detect", tmp_path / "run", 1) == 0
    original = onnx_export._write_metadata

    def corrupt(path: Path, meta: ModelMeta, doc: str) -> dict[str, str]:
        props = original(path, meta, doc)
        model = onnx.load(str(path))
        weight = next(init for init in model.graph.initializer if len(init.dims) == 5)
        array = onnx.numpy_helper.to_array(weight) * 3.0 + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weight.name))
        onnx.save(model, str(path))
        return props

    monkeypatch.setattr(onnx_export, "_write_metadata", corrupt)
    target = tmp_path / "models" / "detect.onnx"
    with pytest.raises(ParityError, match="parity check failed"):
        export_checkpoint(tmp_path / "run" / "last.pt", target, parity_cases=str(toy_data))
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert cli_main(["-q", "onnx", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(target),
                     "--parity-cases", str(toy_data)]) == 1
    assert not target.exists()


def test_cli_rejects_bad_arguments(toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli_main(["train", "nonsense", "--data", str(toy_data), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli_main(["train", "detect", "--data", str(toy_data), "--out", str(tmp_path), "--iterations", "0"])
    assert cli_main(["-q", "train", "detect", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert cli_main(["-q", "train", "detect", "--data", str(toy_data), "--out", str(tmp_path / "o2"), "--patch",
                     "15", "16", "16", *NET, "--spacing", "5", "5", "5"]) == 1  # not a multiple of 2
    assert cli_main(["-q", "onnx", "--checkpoint", str(tmp_path / "missing.pt"), "--out",
                     str(tmp_path / "x.onnx")]) == 1


def test_volume_dataclass_defaults() -> None:
    volume = StageVolume("x", np.zeros((2, 2, 2), np.float32),
                         Geometry((2, 2, 2), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    np.testing.assert_allclose(volume.spacing_zyx_mm, (3.0, 2.0, 1.0))
    assert world_to_zyx(volume.grid, np.array([3.0, 4.0, 6.0])).tolist() == [2.0, 2.0, 3.0]


def test_weights_from_onnx_rebuild_the_bundled_locate_model_exactly() -> None:
    """Fine-tuning starts from an exported model: the torch network rebuilt from the ONNX file gives its outputs."""
    import onnx
    import onnxruntime as ort
    import torch

    from export.networks import (
        NetworkConfig,
        ProbabilityModel,
        build_network,
        default_network_config,
        weights_from_onnx,
    )
    from spine.modelmeta import ModelMeta

    path = Path(__file__).parents[1] / "algorithm" / "models" / "locate.onnx"
    meta = ModelMeta.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    network = build_network(meta, default_network_config("locate"))
    assert weights_from_onnx(network, path) == len(network.state_dict())
    x = np.random.default_rng(0).normal(0.0, 0.5, (1, 1, *meta.patch_shape_zyx)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    network.eval()
    with torch.no_grad():
        got = ProbabilityModel(network)(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() < 1e-4
    wider = build_network(meta, NetworkConfig(**{**default_network_config("locate").to_dict(), "base_channels": 4}))
    with pytest.raises(ValueError, match="not this architecture"):
        weights_from_onnx(wider, path)


def test_locate_similarity_augmentation_moves_the_heatmap_with_the_anatomy() -> None:
    """A bright marker at each centroid must stay under its heatmap peak after rotation and zoom
    (a wrong matrix/offset convention would teach the network to point beside the vertebra)."""
    from export.datasets import StageVolume
    from spine.image import Geometry

    meta = default_meta("locate", spacing_zyx_mm=(3.0, 2.0, 2.0), patch_shape_zyx=(32, 24, 24))
    image = np.zeros((60, 50, 50), dtype=np.float32)
    centroids = {20: np.array([22.0, 24.0, 26.0]), 21: np.array([34.0, 27.0, 23.0])}
    for zyx in centroids.values():
        image[tuple(zyx.astype(int))] = 10.0
    volume = StageVolume("markers", image, Geometry.of(sitk.GetImageFromArray(image)), centroids)
    augmentation = replace(Augmentation.none(), spatial_p=1.0, rotate_deg=25.0, zoom=(0.8, 1.25))
    sampler = PatchSampler([volume], meta, np.random.default_rng(3), augmentation)
    for _ in range(5):
        patch, moved = sampler._similarity_patch(volume, np.array([28.0, 25.0, 25.0]))
        assert patch.shape == (32, 24, 24)
        for label, zyx in moved.items():
            if np.all(zyx >= 1) and np.all(zyx <= np.array(patch.shape) - 2):
                near = patch[tuple(slice(int(c) - 1, int(c) + 3) for c in np.floor(zyx))]
                assert near.max() > 0.5, (label, zyx)  # the marker's interpolated mass is at the moved centroid
        heat = locate_target(moved, (0, 0, 0), patch.shape, meta.heatmap_sigma_mm, meta.spacing_zyx_mm)
        assert heat.shape[1:] == patch.shape


@pytest.mark.parametrize("limits", [(0.0, 0.0, 30.0), (20.0, 0.0, 0.0)])
def test_rotation_limits_per_axis_keep_the_other_axes_fixed(limits: tuple[float, float, float]) -> None:
    """Three rotation limits (about z, y, x): a rotation about one array axis leaves that coordinate of every
    point unchanged and reaches angles up to its own limit only."""
    meta = default_meta("locate", spacing_zyx_mm=(1.5, 1.5, 1.5), patch_shape_zyx=(16, 16, 16))
    empty = np.zeros((4, 4, 4), np.float32)
    from export.datasets import StageVolume

    sampler = PatchSampler([StageVolume("v", empty, Geometry.of(sitk.GetImageFromArray(empty)), {1: np.zeros(3)})],
                           meta, np.random.default_rng(5),
                           replace(Augmentation.none(), spatial_p=1.0, rotate_deg=limits, zoom=(1.0, 1.0)))
    axis = int(np.argmax(limits))
    angles = []
    for _ in range(200):
        matrix, _, _ = sampler._similarity(np.zeros(3))
        rotation = matrix / np.cbrt(np.linalg.det(matrix))  # isotropic spacing: the zoom is a near-scalar
        plane = [a for a in range(3) if a != axis]
        assert np.allclose(rotation[axis, plane], 0.0) and np.allclose(rotation[plane, axis], 0.0)
        angles.append(np.degrees(abs(np.arctan2(rotation[plane[1], plane[0]], rotation[plane[0], plane[0]]))))
    assert 0.8 * limits[axis] < max(angles) <= limits[axis] * 1.06


def test_locate_appearance_augmentation_keeps_shape_and_background() -> None:
    meta = default_meta("locate", spacing_zyx_mm=(3.0, 3.0, 3.0), patch_shape_zyx=(32, 16, 16))
    augmentation = replace(Augmentation.none(), appearance_p=1.0)
    from export.datasets import StageVolume

    empty = np.zeros((4, 4, 4), np.float32)
    sampler = PatchSampler([StageVolume("v", empty, Geometry.of(sitk.GetImageFromArray(empty)), {1: np.zeros(3)})],
                           meta, np.random.default_rng(0), augmentation)
    ct = np.full((32, 16, 16), meta.intensity.background, dtype=np.float32)
    ct[10:20, 4:12, 4:12] = 0.3  # 300 HU bone
    out = sampler._appearance(ct)
    assert out.shape == ct.shape and out.dtype == np.float32
    assert abs(float(out[0, 0, 0]) - meta.intensity.background) < 1e-3  # air stays air far from the bone
    assert 0.1 < float(out[15, 8, 8]) < 0.6


@pytest.mark.parametrize("across", [0, 2])
def test_thick_slices_blur_along_the_chosen_axis(across: int) -> None:
    """Thick-slice simulation (``Augmentation.thick_axes``): a thin plate across an axis spreads along it more when
    the slices are thick along that axis than along another (sagittal scans thicken x, axial ones z). The same seed
    draws the same contrast, kernel and thickness either way."""
    from export.datasets import StageVolume

    meta = default_meta("locate", spacing_zyx_mm=(3.0, 3.0, 3.0), patch_shape_zyx=(24, 24, 24))
    empty = np.zeros((4, 4, 4), np.float32)
    volume = StageVolume("v", empty, Geometry.of(sitk.GetImageFromArray(empty)), {1: np.zeros(3)})
    ct = np.zeros((24, 24, 24), np.float32)
    ct[(slice(None),) * across + (slice(11, 13),)] = 1.0  # a 2-voxel plate across axis ``across``

    def spread(thick_axis: int) -> int:
        weights = [0.0, 0.0, 0.0]
        weights[thick_axis] = 1.0
        sampler = PatchSampler([volume], meta, np.random.default_rng(3),
                               replace(Augmentation.none(), appearance_p=1.0, thick_axes=tuple(weights)))
        return sum(int(np.count_nonzero(np.moveaxis(sampler._appearance(ct), across, 0)[:, 12, 12] > 0.05))
                   for _ in range(20))

    assert spread(across) > spread(2 - across)


def test_segment_similarity_augmentation_keeps_the_heatmap_on_its_vertebra() -> None:
    """Rotated and zoomed segment samples: the heatmap's peak stays inside the target vertebra's mask."""
    case = toy_case(0)
    meta = default_meta("segment", spacing_zyx_mm=(2.5, 2.5, 2.5), patch_shape_zyx=(16, 16, 16))
    volume = prepare_volume(case, meta, crop_margin_mm=STAGE_DEFAULTS["segment"].crop_margin_mm)
    augmentation = replace(Augmentation.none(), spatial_p=1.0, rotate_deg=20.0, appearance_p=1.0)
    sampler = PatchSampler([volume], meta, np.random.default_rng(1), augmentation)
    for _ in range(6):
        x, y = sampler._sample_segment()
        assert x.shape == (2, 16, 16, 16) and y.shape == (1, 16, 16, 16)
        peak = np.unravel_index(int(x[1].argmax()), x[1].shape)
        assert y[0].sum() > 0 and y[0][peak] == 1.0


def test_segment_sampler_draws_empty_targets_on_the_sacrum_top() -> None:
    """Negative samples: a heatmap on S1 must teach the segment model to outline nothing there."""
    from export.datasets import StageVolume, sacrum_top

    labels = np.zeros((40, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 26  # sacrum below
    labels[20:30, 5:15, 5:15] = 24  # L5 above it
    top = sacrum_top(labels, np.array([2.0, 2.0, 2.0]), depth_mm=6.0)
    assert len(top) > 0 and top[:, 0].min() >= 11 and np.all(labels[tuple(top.T)] == 26)
    image = np.zeros(labels.shape, np.float32)
    meta = default_meta("segment", spacing_zyx_mm=(2.0, 2.0, 2.0), patch_shape_zyx=(16, 16, 16))
    volume = StageVolume("v", image, Geometry.of(sitk.GetImageFromArray(image)), {24: np.array([25.0, 10, 10])},
                         labels=labels)
    sampler = PatchSampler([volume], meta, np.random.default_rng(0), replace(Augmentation.none(), sacrum_p=1.0))
    x, y = sampler._sample_segment()
    assert y.sum() == 0 and x[1].max() > 0.9  # heatmap placed, nothing to outline
    sampler = PatchSampler([volume], meta, np.random.default_rng(0), Augmentation.none())
    assert sampler._sample_segment()[1].sum() > 0  # without negatives: L5's mask


@pytest.mark.parametrize(("given", "expected"), [(None, None), (["20"], (20.0, 20.0, 20.0)),
                                                 (["12", "12", "30"], (12.0, 12.0, 30.0))])
def test_train_rotation_option(given: list[str] | None, expected: tuple[float, float, float] | None) -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    argv = ["segment", "--data", "d", "--out", "o", *(["--rotate-deg", *given] if given else [])]
    assert config_from_args(configure_parser(argparse.ArgumentParser()).parse_args(argv)).rotate_deg == expected


@pytest.mark.parametrize("given", [["10", "20"], ["100"]])
def test_train_rotation_option_refuses_two_angles_or_beyond_90(given: list[str]) -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args(["segment", "--data", "d", "--out", "o",
                                                                   "--rotate-deg", *given])
    with pytest.raises(SystemExit):
        config_from_args(args)


def test_train_sacrum_option() -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    parser = configure_parser(argparse.ArgumentParser())
    base = ["segment", "--data", "d", "--out", "o"]
    assert config_from_args(parser.parse_args(base)).sacrum_p is None
    assert config_from_args(parser.parse_args([*base, "--sacrum-p", "0.1"])).sacrum_p == 0.1
    with pytest.raises(SystemExit):
        config_from_args(parser.parse_args([*base, "--sacrum-p", "1.5"]))


def test_cut_view_ends_the_ct_and_the_target_beyond_the_plane_only() -> None:
    """The view ends 6 mm behind the centre (axis y, +1 = posterior on the LPS model grid): from there the CT is
    padding and the target empty, in front of it both are untouched, the heatmap channel too."""
    from export.datasets import cut_view

    x = np.stack([np.full((8, 10, 6), 0.3, np.float32), np.full((8, 10, 6), 0.7, np.float32)])
    y = np.ones((1, 8, 10, 6), np.float32)
    cx, cy = cut_view(x, y, (4.0, 3.0, 2.5), (2.0, 2.0, 2.0), 1, +1, 6.0, -1.0)
    # index 3 + 6 mm / 2 mm = 6: voxels 7.. are beyond (6 itself lies on the plane and stays)
    assert np.all(cx[0][:, 7:] == -1.0) and np.all(cy[0][:, 7:] == 0)
    assert np.all(cx[0][:, :7] == 0.3) and np.all(cy[0][:, :7] == 1)
    assert np.all(cx[1] == 0.7) and np.all(x[0] == 0.3) and np.all(y == 1)  # the seed kept; inputs not changed
    cx, cy = cut_view(x, y, (4.0, 3.0, 2.5), (3.0, 2.0, 2.0), 0, -1, 7.0, -1.0)  # inferior, 3 mm slices
    assert np.all(cy[0][:2] == 0) and np.all(cy[0][2:] == 1)  # |index - 4| * 3 mm > 7 mm below: 0, 1


def _bone_block() -> tuple[StageVolume, ModelMeta, np.ndarray]:
    """A segment volume of one large vertebra-labelled block (L1, 0.5 network units) at 2 mm, its centroid at
    (25, 35, 30), and a segment meta whose patch reaches as far as the real one (+-40 mm in z, +-60 in y, +-48
    in x): beyond every view cut's farthest plane."""
    labels = np.zeros((50, 70, 60), np.uint8)
    labels[3:47, 2:68, 2:58] = 20
    image = np.where(labels > 0, 0.5, 0.0).astype(np.float32)
    meta = default_meta("segment", spacing_zyx_mm=(2.0, 2.0, 2.0), patch_shape_zyx=(40, 60, 48))
    volume = StageVolume("v", image, Geometry.of(sitk.GetImageFromArray(image)), {20: np.array([25.0, 35, 30])},
                         labels=labels)
    return volume, meta, labels


def test_segment_sampler_cuts_the_view_through_the_vertebra_not_its_centre() -> None:
    """``view_cut_p`` 1: every sample's view ends inside the patch; the vertebra's centre stays in view and
    labelled, and the CT beyond the cut is air where the volume had bone."""
    volume, meta, labels = _bone_block()
    sampler = PatchSampler([volume], meta, np.random.default_rng(1), replace(Augmentation.none(), view_cut_p=1.0))
    background = float(meta.intensity.background)
    whole = (labels[5:45, 5:65, 6:54] == 20).sum()
    for _ in range(20):
        x, y = sampler._sample_segment()
        assert y[0][20, 30, 24] == 1  # the centre
        assert np.any((x[0] == background) & (y[0] == 0))  # air where the block was
        assert 0 < y.sum() < whole
    plain = PatchSampler([volume], meta, np.random.default_rng(1), Augmentation.none())
    assert not np.any(plain._sample_segment()[0][0] == background)  # without cuts the patch lies in the volume


def test_train_view_cut_option() -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    parser = configure_parser(argparse.ArgumentParser())
    base = ["segment", "--data", "d", "--out", "o"]
    assert config_from_args(parser.parse_args(base)).view_cut_p is None
    assert config_from_args(parser.parse_args([*base, "--view-cut-p", "0.3"])).view_cut_p == 0.3
    with pytest.raises(SystemExit, match="--view-cut-p"):
        config_from_args(parser.parse_args([*base, "--view-cut-p", "-0.1"]))


def test_view_cuts_come_only_from_the_sides_asked_for() -> None:
    """``view_cut_sides`` ("superior" alone): the view always ends above the centre, never behind or below it."""
    volume, meta, labels = _bone_block()
    aug = replace(Augmentation.none(), view_cut_p=1.0, view_cut_sides=("superior",))
    sampler = PatchSampler([volume], meta, np.random.default_rng(2), aug)
    for _ in range(10):
        x, y = sampler._sample_segment()
        assert np.all(y[0][:21] == (labels[5:26, 5:65, 6:54] == 20))  # the centre's slice and below untouched
        assert np.all(x[0][-1] == float(meta.intensity.background))  # the top slice is beyond the cut


def test_train_view_cut_sides_option() -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    parser = configure_parser(argparse.ArgumentParser())
    base = ["segment", "--data", "d", "--out", "o"]
    assert config_from_args(parser.parse_args(base)).view_cut_sides is None
    got = config_from_args(parser.parse_args([*base, "--view-cut-sides", "superior", "left"])).view_cut_sides
    assert got == ("superior", "left")
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--view-cut-sides", "front"])


@pytest.mark.parametrize(("given", "expected"), [(None, None), (["1.3", "3.5"], (1.3, 3.5))])
def test_train_thick_factor_option(given: list[str] | None, expected: tuple[float, float] | None) -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    argv = ["segment", "--data", "d", "--out", "o", *(["--thick-factor", *given] if given else [])]
    assert config_from_args(configure_parser(argparse.ArgumentParser()).parse_args(argv)).thick_factor == expected


@pytest.mark.parametrize("given", [["2", "1.5"], ["0.5", "2"]])
def test_train_thick_factor_option_refuses_thinner_than_the_grid_or_reversed(given: list[str]) -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args(["segment", "--data", "d", "--out", "o",
                                                                   "--thick-factor", *given])
    with pytest.raises(SystemExit, match="--thick-factor"):
        config_from_args(args)


def test_thicker_simulated_slices_spread_a_plate_further() -> None:
    """``Augmentation.thick_factor``: with slices 3-3.5 voxels thick a thin plate across z spreads along z further
    than with 1.3-voxel slices (the same seed draws the same contrast and kernel)."""
    from export.datasets import StageVolume

    meta = default_meta("locate", spacing_zyx_mm=(1.5, 1.5, 1.5), patch_shape_zyx=(24, 24, 24))
    empty = np.zeros((4, 4, 4), np.float32)
    volume = StageVolume("v", empty, Geometry.of(sitk.GetImageFromArray(empty)), {1: np.zeros(3)})
    ct = np.zeros((24, 24, 24), np.float32)
    ct[11:13] = 1.0

    def spread(factor: tuple[float, float]) -> int:
        sampler = PatchSampler([volume], meta, np.random.default_rng(3),
                               replace(Augmentation.none(), appearance_p=1.0, thick_factor=factor))
        return sum(int(np.count_nonzero(sampler._appearance(ct)[:, 12, 12] > 0.05)) for _ in range(20))

    assert spread((3.0, 3.5)) > spread((1.3, 1.3))


@pytest.mark.parametrize("factors", [(1.0, 3.0, 3.0), (2.0, 3.6, 2.3)])
def test_coarsen_blurs_only_the_coarsened_axes_and_keeps_the_grid(factors: tuple[float, float, float]) -> None:
    """``coarsen``: a rod along z, two voxels thick in y and x, spreads along y and x (wide pixels) and its run along
    z keeps its ends where z is not coarsened; the shape is kept and a uniform CT stays uniform."""
    from export.datasets import coarsen

    ct = np.zeros((24, 24, 24), np.float32)
    ct[6:18, 11:13, 11:13] = 1.0
    out = coarsen(ct, factors)
    assert out.shape == ct.shape
    assert np.count_nonzero(out[12, :, 12] > 0.05) > 2 and np.count_nonzero(out[12, 12, :] > 0.05) > 2
    if factors[0] == 1.0:
        assert np.count_nonzero(out[:, 12, 12] > 0.05) == 12
    np.testing.assert_allclose(coarsen(np.full((16, 16, 16), 0.3, np.float32), factors), 0.3, atol=1e-6)


def test_coarse_pixels_spread_a_rod_in_plane_only_when_asked() -> None:
    """``Augmentation.coarse_p``: with every other appearance change off, a thin rod along z spreads along y and x
    when coarse pixels are drawn (p 1) and is left as it is with p 0."""
    from export.datasets import StageVolume

    meta = default_meta("locate", spacing_zyx_mm=(1.5, 1.5, 1.5), patch_shape_zyx=(24, 24, 24))
    empty = np.zeros((4, 4, 4), np.float32)
    volume = StageVolume("v", empty, Geometry.of(sitk.GetImageFromArray(empty)), {1: np.zeros(3)})
    ct = np.zeros((24, 24, 24), np.float32)
    ct[:, 11:13, 11:13] = 1.0

    def width(p: float) -> int:
        sampler = PatchSampler([volume], meta, np.random.default_rng(3), replace(Augmentation.none(), coarse_p=p))
        out = sampler._appearance(ct)
        return int(np.count_nonzero(out[12, 12, :] > 0.05)) + int(np.count_nonzero(out[12, :, 12] > 0.05))

    assert width(0.0) == 4
    assert width(1.0) > 4


@pytest.mark.parametrize(("argv", "field", "expected"), [
    ([], "coarse_p", None), (["--coarse-p", "0.4"], "coarse_p", 0.4),
    ([], "coarse_factor", None), (["--coarse-factor", "2.3", "3.6"], "coarse_factor", (2.3, 3.6))])
def test_train_coarse_options(argv: list[str], field: str, expected: object) -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args(["segment", "--data", "d", "--out", "o", *argv])
    assert getattr(config_from_args(args), field) == expected


@pytest.mark.parametrize(("argv", "option"), [(["--coarse-p", "1.5"], "--coarse-p"),
                                              (["--coarse-factor", "3", "2"], "--coarse-factor"),
                                              (["--coarse-factor", "0.5", "2"], "--coarse-factor")])
def test_train_coarse_options_refuse_out_of_range(argv: list[str], option: str) -> None:
    import argparse

    from export.train import config_from_args, configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args(["segment", "--data", "d", "--out", "o", *argv])
    with pytest.raises(SystemExit, match=option):
        config_from_args(args)


def test_keep_centre_fine_tunes_from_an_exported_locate_and_refuses_without_one(toy_data: Path,
                                                                               tmp_path: Path) -> None:
    assert _train(toy_data, "locate", tmp_path / "start", 1) == 0
    start = tmp_path / "start.onnx"
    export_checkpoint(tmp_path / "start" / "last.pt", start, parity_cases=str(toy_data))
    assert _train(toy_data, "locate", tmp_path / "plain", 2, "--init-from", str(start)) == 0
    assert _train(toy_data, "locate", tmp_path / "kept", 2, "--init-from", str(start), "--keep-centre") == 0
    plain, kept = _weights(tmp_path / "plain" / "last.pt"), _weights(tmp_path / "kept" / "last.pt")
    assert any(not torch.equal(kept[name], tensor) for name, tensor in plain.items())  # the floor reaches the loss
    assert load_checkpoint(tmp_path / "kept" / "last.pt")["config"]["keep_centre"] is True
    assert _train(toy_data, "locate", tmp_path / "alone", 1, "--keep-centre") == 1  # nothing to keep
    assert _train(toy_data, "detect", tmp_path / "detect", 1, "--keep-centre") == 1  # no centre head


def test_augmentation_options_reach_the_training_samples(toy_data: Path, tmp_path: Path) -> None:
    """A segment run with ``--view-cut-p 1 --view-cut-sides superior --thick-factor 3 3.5`` trains, and with the same
    seed its weights differ from a run without them: the options reach the sampler (``AUGMENTATION_OPTIONS``)."""
    assert _train(toy_data, "segment", tmp_path / "plain", 2) == 0
    assert _train(toy_data, "segment", tmp_path / "cut", 2, "--view-cut-p", "1", "--view-cut-sides", "superior",
                  "--thick-factor", "3", "3.5") == 0
    plain, cut = _weights(tmp_path / "plain" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert any(not torch.equal(cut[name], tensor) for name, tensor in plain.items())

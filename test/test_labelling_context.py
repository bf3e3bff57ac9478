"""The learned chain context (issue 22): features, ONNX export, the decoder with its evidence, the switch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_support import REPO

from algorithm.labelling import LEARNED_MODEL, Constraints, Fix, label_candidates, learned_decoder
from algorithm.labelling.context import CONTEXT_CLASSES, CONTEXT_FEATURES, ContextMeta, ContextModel, context_features
from spine.labels import label_of
from spine.modelmeta import ModelMetaError
from spine.vid import read_scan

FIXTURE = REPO / "test" / "data" / "vid-keypoints"
WHOLE = "062JCaPtCSw6"  # T10-L5
FROM_T12 = "1EChDwz51S4G"  # T12-L5


def _chain(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A curved chain of n candidates about 30 mm apart, head (+z) first, with random region probabilities."""
    z = -np.cumsum(rng.uniform(20.0, 40.0, n))
    x = 10.0 * np.sin(z / 150.0) + rng.normal(0, 2, n)
    y = rng.normal(0, 2, n)
    return np.stack([x, y, z], axis=1), rng.uniform(0, 1, (n, 3))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), shift=st.tuples(*[st.floats(-500, 500)] * 3))
def test_features_do_not_depend_on_the_candidates_order_or_a_translation(seed: int, n: int, shift: tuple) -> None:
    rng = np.random.default_rng(seed)
    positions, regions = _chain(rng, n)
    order, features = context_features(positions, regions)
    assert features.shape == (n, len(CONTEXT_FEATURES)) and np.all(np.isfinite(features))
    assert sorted(order.tolist()) == list(range(n))
    assert np.all(np.diff(positions[order, 2]) < 0)  # head to foot
    permutation = rng.permutation(n)
    order_p, features_p = context_features(positions[permutation], regions[permutation])
    np.testing.assert_array_equal(permutation[order_p], order)
    np.testing.assert_allclose(features_p, features, atol=1e-5)
    order_t, features_t = context_features(positions + np.array(shift), regions)
    np.testing.assert_array_equal(order_t, order)
    np.testing.assert_allclose(features_t, features, atol=1e-4)


def test_features_read_spacing_ranks_and_an_off_chain_detection() -> None:
    positions = np.array([[0, 0, 0], [0, 0, -30], [0, 0, -60], [25, 0, -75], [0, 0, -90]], dtype=float)
    order, f = context_features(positions, np.full((5, 3), 0.5))
    column = {name: k for k, name in enumerate(CONTEXT_FEATURES)}
    assert order.tolist() == [0, 1, 2, 3, 4]
    assert f[0, column["has_prev"]] == 0 and f[0, column["d_prev"]] == 0 and f[-1, column["has_next"]] == 0
    np.testing.assert_allclose(f[:, column["rank_head"]] * 25, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(f[:, column["rank_foot"]] * 25, [4, 3, 2, 1, 0])
    deviation = f[:, column["midpoint_dev_rel"]]
    assert deviation[3] == deviation.max() > 0.5  # the detection off the spine stands out
    np.testing.assert_allclose(f[1, column["d_prev"]], 1.0)  # 30 mm


def test_metadata_round_trips_and_refuses_other_features() -> None:
    meta = ContextMeta(class_log_prior=tuple(np.log(np.full(len(CONTEXT_CLASSES), 1 / len(CONTEXT_CLASSES)))),
                       evidence_weight=0.7, calibration=(0.9, 0.1))
    assert ContextMeta.from_props(meta.to_props()) == meta
    props = meta.to_props()
    props["verse_gc.features"] = '["p_C"]'
    with pytest.raises(ModelMetaError, match=r"x\.onnx: features"):
        ContextMeta.from_props(props, source="x.onnx")
    with pytest.raises(ModelMetaError, match="not a verse-gc chain-context model"):
        ContextMeta.from_props({"verse_gc.schema": "1", "verse_gc.stage": '"locate"'})
    props = meta.to_props()
    props["verse_gc.calibration"] = "[0.9,"  # the codec shared with ModelMeta names the key
    with pytest.raises(ModelMetaError, match=r"x\.onnx: metadata key 'verse_gc\.calibration' is not JSON"):
        ContextMeta.from_props(props, source="x.onnx")


def test_onnx_export_matches_torch_and_resumes(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from export.label_context import ContextSettings, ParityError, export_onnx, read_training, train_context

    scans = read_training(FIXTURE, ["Pancreas-CT"])
    assert len(scans) == 2
    tiny = ContextSettings(hidden=8, epochs=2, batch=2)
    checkpoint = tmp_path / "ctx.pt"
    state = train_context(scans, ContextSettings(hidden=8, epochs=1, batch=2), checkpoint)
    assert state["epoch"] == 1
    state = train_context(scans, tiny, checkpoint)  # resumes at epoch 1
    assert state["epoch"] == 2 and torch.load(checkpoint, weights_only=False)["epoch"] == 2
    out = tmp_path / "label.onnx"
    worst = export_onnx(state, out, scans, trained_on="two fixture scans", evidence_weight=0.5)
    assert worst < 1e-4 and out.stat().st_size < 1_000_000
    model = ContextModel(out)
    assert model.meta.evidence_weight == 0.5 and model.meta.trained_on == "two fixture scans"
    # An independent parity check: torch's network on the same features.
    from export.label_context import _network

    network = _network(tiny)
    network.load_state_dict(state["model"])
    network.eval()
    scan = scans[0]
    order, features = context_features(scan.bodies_mm, scan.region_probabilities)
    with torch.no_grad():
        expected = network(torch.from_numpy(features[None])).numpy()[0]
    np.testing.assert_allclose(model.log_probability(scan.bodies_mm, scan.region_probabilities)[order], expected,
                               atol=1e-4)
    with pytest.raises(ParityError):
        export_onnx(state, tmp_path / "bad.onnx", scans, tolerance=-1.0)
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.tmp*"))


def test_the_shipped_model_is_small_and_labels_real_scans_whole() -> None:
    assert LEARNED_MODEL.stat().st_size < 1_000_000
    decoder = learned_decoder()
    for scan_id in (WHOLE, FROM_T12):
        scan = read_scan(FIXTURE, scan_id)
        result = label_candidates(scan.bodies_mm, regions=scan.region_probabilities, decoder=decoder)
        distance = np.linalg.norm(scan.bodies_mm[:, None] - scan.truth_mm[None], axis=2)
        matched = distance.min(axis=1) <= 20
        truth = scan.truth_labels[np.argmin(distance, axis=1)]
        np.testing.assert_array_equal(result.labels[matched], truth[matched])
        assert np.all((result.confidence >= 0) & (result.confidence <= 1))


def test_the_learned_decoder_honours_fixes_and_spine_facts() -> None:
    scan = read_scan(FIXTURE, WHOLE)
    decoder = learned_decoder()
    positions, regions = scan.bodies_mm, scan.region_probabilities
    plain = label_candidates(positions, regions=regions, decoder=decoder)
    k = int(np.argmax(plain.labels == label_of("L2")))
    # A (wrong) fix moves the whole chain by one and pins the fixed candidate, with confidence 1.
    fixed = label_candidates(positions, regions=regions, decoder=decoder,
                             constraints=Constraints(fixes=(Fix(label_of("L3"), tuple(positions[k])),)))
    assert fixed.labels[k] == label_of("L3") and fixed.confidence[k] == pytest.approx(1.0)
    above = int(np.argmax(plain.labels == label_of("L1")))
    assert fixed.labels[above] == label_of("L2")  # the fix moves its neighbours along
    # Four lumbar vertebrae: no L5 or L6 may be named.
    four = label_candidates(positions, regions=regions, decoder=decoder, constraints=Constraints(lumbar=4))
    assert not set(four.labels.tolist()) & {label_of("L5"), label_of("L6")}
    # The cut flags reach the same decoder (a censored step cannot make the labelling invalid).
    cut = np.zeros((len(positions), 2), dtype=bool)
    cut[np.argmax(positions[:, 2]), 0] = True
    censored = label_candidates(positions, regions=regions, decoder=decoder, cut=cut)
    assert len(set(censored.labels[censored.labels > 0].tolist())) == int((censored.labels > 0).sum())


def test_the_labeller_switch_reaches_the_pipeline() -> None:
    from algorithm.cli import _options, build_parser
    from algorithm.locate import Candidates
    from algorithm.pipeline import Options, label_stage

    parse = build_parser().parse_args
    assert _options(parse(["predict", "ct.nii.gz", "--output", "out"])).labeller == "decoder"
    assert _options(parse(["predict", "ct.nii.gz", "--output", "out", "--labeller", "learned"])).labeller == "learned"
    with pytest.raises(SystemExit):
        parse(["predict", "ct.nii.gz", "--output", "out", "--labeller", "graph"])
    # A locate result whose region posterior is the VID detector's: the learned labeller is the learned decoder on
    # the same evidence, and it differs from the plain decoder's reading.
    scan = read_scan(FIXTURE, WHOLE)
    n = len(scan.bodies_mm)
    region = np.array(["CTL".index(name[0]) for name in CONTEXT_CLASSES[:-1]])
    share = np.bincount(region, minlength=3)
    scores = (scan.region_probabilities[:, region] / share[region]).astype(np.float32) * 0.5
    candidates = Candidates(scan.bodies_mm, scores, np.full(n, 0.9))
    regions = candidates.regions()
    learned = label_stage(candidates, Options(labeller="learned", rib_evidence=False))
    expected = label_candidates(candidates.positions_mm, candidates.scores, regions=regions,
                                decoder=learned_decoder())
    np.testing.assert_array_equal(learned.labels, expected.labels)
    np.testing.assert_allclose(learned.confidence, expected.confidence)
    plain = label_stage(candidates, Options(rib_evidence=False))
    assert not np.allclose(plain.confidence, learned.confidence)
    with pytest.raises(ValueError, match="labeller must be one of decoder, learned"):
        label_stage(candidates, Options(labeller="graph"))
    help_text = subprocess.run([sys.executable, "-m", "algorithm", "predict", "--help"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout
    assert "--labeller" in help_text


def test_training_on_a_folder_without_vid_data_is_one_error(tmp_path, caplog) -> None:
    pytest.importorskip("torch")
    import argparse

    from export.label_context import configure_parser, run

    args = configure_parser(argparse.ArgumentParser()).parse_args(
        ["--data", str(tmp_path), "--checkpoint", str(tmp_path / "c.pt")])
    assert run(args) == 2
    assert f"{tmp_path}: not a VID keypoints folder" in caplog.text and not (tmp_path / "c.pt").exists()

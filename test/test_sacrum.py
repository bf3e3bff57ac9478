"""The sacrum check (algorithm.sacrum): which of a chain's lowest candidates is S1."""

from __future__ import annotations

import numpy as np
import pytest

import algorithm.sacrum as sacrum
from algorithm.models import ModelError, ModelSource, find_model_dir, load_models
from export.real_cases import find_real_cases


def _chain(n: int) -> np.ndarray:
    return np.array([[0.0, 0.0, -30.0 * k] for k in range(n)])  # head first


@pytest.mark.parametrize(("volume", "ratio", "expected"), [
    # lowest four of six, feet first in the arrays below: S1 at the third lowest, sacral fragments under it
    ([9.0, 16.0, 57.0, 63.0], [0.56, 0.63, 0.47, 1.0], [False, False, False, True, True, True]),
    ([49.0, 40.0, 30.0, 30.0], [0.9, 1.0, 1.0, 1.0], [False] * 6),  # no S1: nothing leaves
    ([18.0, 23.0, 30.0, 30.0], [0.1, 0.95, 1.0, 1.0], [False] * 6),  # a small flagged fragment is no body
    ([52.0, 23.0, 30.0, 30.0], [0.0, 0.96, 0.97, 1.0], [False, False, False, False, False, True]),  # a true L6 stays
    # a slab's posterior-element outline (24 ml, 0.42) above the true L5 (61 ml, 0.99): S1 is the real one below
    ([55.0, 61.0, 24.0, 60.0], [0.31, 0.99, 0.42, 1.02], [False, False, False, False, False, True]),
])
def test_the_highest_flagged_body_among_the_lowest_is_s1(monkeypatch: pytest.MonkeyPatch, volume: list[float],
                                                         ratio: list[float], expected: list[bool]) -> None:
    monkeypatch.setattr(sacrum, "volume_ratios", lambda *args: (np.array(volume), np.array(ratio)))
    positions = _chain(6)
    flags = sacrum.sacral(None, positions, None, None)  # type: ignore[arg-type]
    # expected is head first; the input order is head first too
    assert flags.tolist() == expected


def test_the_top_of_the_chain_is_never_s1(monkeypatch: pytest.MonkeyPatch) -> None:
    """All three of a short chain look sacral: the top one stays (a chain is never dropped whole)."""
    monkeypatch.setattr(sacrum, "volume_ratios", lambda *args: (np.full(3, 50.0), np.zeros(3)))
    assert sacrum.sacral(None, _chain(3), None, None).tolist() == [False, True, True]  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "what_is_off"), [("sacrum", "sacrum check is off"),
                                                   ("skull", "skull-base anchor is off")])
def test_a_broken_optional_model_costs_what_it_is_for_not_the_run(tmp_path, caplog: pytest.LogCaptureFixture,
                                                                  name: str, what_is_off: str) -> None:
    import shutil

    from algorithm_fixtures import fixture_model_dir

    folder = tmp_path / "models"
    shutil.copytree(fixture_model_dir(), folder)
    (folder / f"{name}.onnx").write_bytes(b"not a model")
    models = load_models(ModelSource(folder, "test"), device="cpu")
    assert getattr(models, name) is None and name not in models.describe()
    assert what_is_off in caplog.text


def test_a_single_candidate_is_never_the_sacrum() -> None:
    assert sacrum.sacral(None, _chain(1), None, None).tolist() == [False]  # type: ignore[arg-type]


def test_the_bundled_sacrum_model_finds_s1_on_the_example_ct() -> None:
    """Real CT, bundled models: seeded at L4, L5 and the sacrum's top, the check flags only the sacrum."""
    case = find_real_cases(["totalsegmentator-example"])[0].load()
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    assert models.sacrum is not None and "sacrum" in models.describe()
    l4, l5 = case.centroids_mm[23], case.centroids_mm[24]
    s1 = l5 + np.array([0.0, 9.0, -25.0])  # the sacrum's top body, below and behind L5 (the pipeline's S1 candidate)
    flags = sacrum.sacral(case.ct, np.array([l4, l5, s1]), models.outliner, models.sacrum)
    assert flags.tolist() == [False, False, True]
    assert sacrum.rests_on_sacrum(np.array([l4, l5, s1]), flags)  # S1 25 mm under L5: nothing fits between


def test_verse014_cut_above_ends_on_l5_over_the_sacrum() -> None:
    """Real CT, bundled models: verse014 with its top cropped (export.reformat) shows L3-L5 over the sacrum and
    nothing to count from above. The sacrum check takes S1 out of the chain; the chain then rests on it, and
    the decoder ends it on L5 (it named the three L2-L4 before the decoder's item 10)."""
    from test_support import verse014_cut_above

    from algorithm.pipeline import Options, label_stage

    cropped, candidates = verse014_cut_above()
    assert candidates.on_sacrum
    labels = label_stage(candidates, Options()).labels
    lowest = int(np.argmin(candidates.positions_mm[:, 2]))
    assert labels[lowest] == 24
    assert np.linalg.norm(candidates.positions_mm[lowest] - cropped.centroids_mm[24]) < 15.0


def test_verse014_in_3mm_sagittal_slices_finds_s1_and_ends_on_l5() -> None:
    """Real CT, bundled models: verse014 in a VerSe sagittal scan's 3 mm slices (export.reformat). Its chain ended
    at L5, a piece of S1's side and a sacral fragment 37 mm below L5; S1's body had no candidate, the fragment stayed
    as L5 and every level came out one high. A seed one spacing below each of the lowest outlines finds S1's body
    (recentre.below_the_foot), the lordotic column keeps T12 on the spine's arc (curve.distance_to_spine_curve), the
    sacrum check takes S1 and the fragment out, and the chain rests on it: T12-L5, each at its own level."""
    from test_support import verse014_reformatted

    from algorithm.pipeline import Options, label_stage

    slab, candidates = verse014_reformatted("sagittal-slab")
    assert candidates.on_sacrum
    labels = label_stage(candidates, Options()).labels
    for label, centre in slab.centroids_mm.items():
        nearest = int(np.argmin(np.linalg.norm(candidates.positions_mm - centre, axis=1)))
        assert labels[nearest] == label and np.linalg.norm(candidates.positions_mm[nearest] - centre) < 15.0
    assert sorted(labels.tolist()) == [19, 20, 21, 22, 23, 24]  # T12 (cut by the view) to L5, no sacral piece


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")  # the pretence
def test_a_cuda_attempt_that_lands_on_the_cpu_names_the_models_and_falls_back(monkeypatch, caplog) -> None:
    """ONNX Runtime here has no CUDA: pretending it offers CUDA and a GPU answers, every session (the optional
    ones included) comes up on the CPU, so ``auto`` falls back and says which ran where, and ``cuda`` refuses."""
    import algorithm.models as models_module

    real = models_module._ort()

    class Offering:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def get_available_providers() -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(models_module, "_ort", lambda: Offering())
    monkeypatch.setattr(models_module, "cuda_devices", lambda: 1)
    monkeypatch.setattr(models_module, "_preload_cuda_libraries", lambda: None)
    source = ModelSource(find_model_dir().directory, "test")
    models = load_models(source, device="auto")
    assert models.providers == ["CPUExecutionProvider"] and None not in (models.outline, models.sacrum, models.skull)
    assert "the CUDA provider did not start (detect, locate, segment, sacrum, outline, skull run on" in caplog.text
    with pytest.raises(ModelError, match="could not start the CUDA provider"):
        load_models(source, device="cuda")

"""The dependency lists the images install come from pyproject.toml and stay consistent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_requirements():
    spec = importlib.util.spec_from_file_location("docker_requirements", REPO / "docker" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.requirements


def names(requirements: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requirements}


def test_gpu_image_gets_onnxruntime_gpu_and_never_the_cpu_build() -> None:
    gpu = names(load_requirements()(REPO / "pyproject.toml", ["algorithm-gpu"]))
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "torch" not in gpu  # the algorithm image has no torch
    assert {"numpy", "simpleitk", "scipy"} <= gpu  # base dependencies and the shared algorithm ones


def test_evaluation_image_needs_no_onnx_or_torch() -> None:
    evaluation = names(load_requirements()(REPO / "pyproject.toml", ["evaluation"]))
    assert {"edt", "connected-components-3d", "simpleitk"} <= evaluation
    assert not {"torch", "onnxruntime", "onnxruntime-gpu"} & evaluation


def test_torch_is_pinned_to_the_cpu_wheel_in_the_export_extra() -> None:
    export = load_requirements()(REPO / "pyproject.toml", ["export"])
    assert "torch==2.13.0" in export


def test_count_arguments_are_refused_with_a_message() -> None:
    import argparse

    import pytest

    from spine.arguments import positive_float, positive_int

    assert positive_int("3") == 3 and positive_float("0.5") == 0.5
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    for bad in ("0", "-1e-3", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)

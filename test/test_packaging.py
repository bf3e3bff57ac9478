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


def test_export_help_texts_are_for_users() -> None:
    """Regression: a developer docstring as the description, undocumented train options with
    hidden defaults, and a developer-checkout path as --parity-cases' default."""
    from export.cli import build_parser

    parser = build_parser()
    top = parser.format_help()
    assert "registry of subcommands" not in top and "synthetic spine CTs (synth)" in top
    commands = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    train = " ".join(commands["train"].format_help().split())
    for option, default in (("--batch-size", "2"), ("--seed", "0"), ("--device", "auto"), ("--iterations", "1000")):
        after = train.split(f"{option} ")[-1]
        assert f"(default: {default})" in after.split(" --")[0], option
    onnx_help = " ".join(commands["onnx"].format_help().split())
    assert "../shared" not in onnx_help and "examples/totalsegmentator-example/" in onnx_help


def test_onnx_parity_default_is_the_bundled_example() -> None:
    from export.onnx_export import BUNDLED_EXAMPLE, _real_sources

    assert (BUNDLED_EXAMPLE / "ct.nii.gz").is_file()
    sources, description = _real_sources(None)
    assert description == "real CT (totalsegmentator-example, bundled)"
    assert len(sources) == 1 and sources[0][0].GetSize() == (122, 101, 112) and len(sources[0][1]) > 0


def _project_imports() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere (top level, inside functions, TYPE_CHECKING)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    modules: dict[str, set[str]] = {}
    for package in ("algorithm", "evaluation", "export", "spine"):
        for path in sorted((root / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.add(node.module if node.level == 0 else f"{package}.{node.module}")
                    found.update(f"{node.module}.{a.name}" for a in node.names)  # from package import module
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
            modules[name] = found
    return {m: {d for d in deps if d in modules and d != m and d not in ("algorithm", "evaluation", "export",
                                                                            "spine")}
            for m, deps in modules.items()}


def test_no_import_cycles() -> None:
    """Each module depends downwards only (regression: pipeline <-> qc, synth <-> synth_qc)."""
    graph = _project_imports()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path[path.index(dep):], dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "algorithm.qc" in graph and "export.synth_qc" in graph


def _pins() -> dict[str, str]:
    """constraints.txt as {normalised name: pinned version}."""
    import re

    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_one_pinned_set_serves_the_venv_and_both_images() -> None:
    """The issue: the image resolved onnxruntime-gpu 1.31.1, the venv onnxruntime 1.32.0. One constraints file pins
    both builds to one version; every dependency of every extra has a pin inside pyproject.toml's range; the
    Dockerfile, .ci/run and the README's install lines all use the file."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    pins = _pins()
    assert pins["onnxruntime"] == pins["onnxruntime-gpu"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = sorted(project["optional-dependencies"])
    for requirement in load_requirements()(REPO / "pyproject.toml", extras):
        parsed = Requirement(requirement)
        name = re.sub(r"[-_.]+", "-", parsed.name).lower()
        assert name in pins, f"constraints.txt does not pin {parsed.name}"
        assert parsed.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "constraints.txt" in dockerfile.split("FROM python")[1].split("AS evaluation")[0]  # copied in the base
    assert dockerfile.count("-r /opt/build/requirements.txt -c /opt/build/constraints.txt") == 2  # both images
    assert "!constraints.txt" in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()  # in the context
    assert '-e ".[dev]" -c constraints.txt' in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    installs = [line for line in readme.splitlines() if "pip install -e" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_the_cuda_message_explains_the_gpu_extra_not_a_conflicting_install() -> None:
    import pytest

    from algorithm.models import ModelError, provider_chain

    with pytest.raises(ModelError) as error:
        provider_chain("cuda", ["AzureExecutionProvider", "CPUExecutionProvider"], gpus=1)
    message = str(error.value)
    assert "algorithm-gpu" in message and "pip uninstall -y onnxruntime" in message
    assert "install onnxruntime-gpu" not in message

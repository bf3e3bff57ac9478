"""Shared test helpers: where the real data lives, in the repository and beside it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
"""``../shared/data`` beside a developer's checkout; absent in a user's clone."""


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test when that folder is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (only beside a developer checkout)")
    return path


def verse014_cut_above() -> tuple[Any, Any]:
    """verse014 (real VerSe CT, beside a developer checkout) with its top two levels cropped away (export.reformat:
    L3-L5 over the sacrum), and its candidates from the bundled models' locate stage; skips without the CT."""
    cropped, candidates = verse014_reformatted("top-cropped")
    assert sorted(cropped.centroids_mm) == [22, 23, 24]
    return cropped, candidates


def verse014_reformatted(name: str) -> tuple[Any, Any]:
    """verse014 (real VerSe CT, beside a developer checkout) in the reformat ``name`` (``export.reformat``), and
    its candidates from the bundled models' locate stage; skips without the CT."""
    from algorithm.detect import detect_spine
    from algorithm.models import ModelSource, find_model_dir, load_models
    from algorithm.pipeline import Options, locate_stage
    from export.real_cases import find_real_cases
    from export.reformat import reformats

    shared_data("verse-sub-verse014")
    case = find_real_cases(["verse-sub-verse014"])[0].load()
    ((_, variant),) = reformats(case, [name])
    models = load_models(ModelSource(find_model_dir().directory, "test"), device="cpu")
    return variant, locate_stage(variant.ct, detect_spine(variant.ct, models.detect), models, Options())


def bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` as module ``bench_<name>``, loaded from its file.

    Not by putting ``bench/`` on ``sys.path``: its ``evaluation.py`` and ``algorithm.py`` would then
    shadow the packages of those names for every test that runs after.
    """
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]

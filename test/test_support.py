"""Shared test helpers: where the real data lives, in the repository and beside it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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

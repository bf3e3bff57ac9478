"""Shared test helpers: where the real data lives, in the repository and beside it."""

from __future__ import annotations

from pathlib import Path

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

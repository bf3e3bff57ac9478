"""argparse validators shared by the command lines: a bad value is refused with a message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["output_file", "output_folder", "positive_float", "positive_int"]


def positive_int(text: str) -> int:
    """An integer >= 1, for counts (cases, workers, threads, iterations)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0, for rates, spacings and sizes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _creatable(path: Path) -> None:
    """Refuse a path under an existing file or in a folder we cannot write (checked before any work)."""
    existing = _first_existing(path.parent)
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: {existing} is not writable")


def output_folder(text: str) -> Path:
    """A folder to write into: existing, or creatable (no file on its way)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    _creatable(path / "_")
    return path


def output_file(text: str) -> Path:
    """A file to (over)write: not a folder, in a folder that exists or can be created."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    _creatable(path)
    return path

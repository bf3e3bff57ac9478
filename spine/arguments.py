"""argparse validators shared by the command lines: a bad value is refused with a message."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

__all__ = ["output_file", "output_folder", "positive_float", "positive_int", "write_problem"]


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


def write_problem(path: Path, *, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or with ``folder`` a folder to write into) cannot be written, or None.

    Tried for real: a temporary file is created and removed in the nearest existing folder on
    the way, so a read-only mount, a folder without write permission or a path under a regular
    file is found before any work, whoever runs it (permission bits alone say nothing for root).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    if not folder and path.is_dir():
        return f"{path} is a folder, not a file"
    existing = _first_existing(path if folder else path.parent)
    if not existing.is_dir():
        return f"{path}: {existing} is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f"{path}: cannot write in {existing} ({error.strerror or error})"
    return None

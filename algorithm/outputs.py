"""All-or-nothing output: every file of a case is written under a temporary name, then all are renamed.

GC reads ``/output`` after the container exits; a failed case must leave nothing there (not a
label map without its points). :func:`commit_outputs` writes each file beside its target
under a hidden temporary name, renames them all only once every write succeeded, and on any
failure removes what it wrote, renamed files and created folders included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import SimpleITK as sitk

from spine.image import IMAGE_SUFFIXES

__all__ = ["Writer", "bytes_writer", "commit_outputs", "image_writer", "json_writer", "text_writer"]

log = logging.getLogger(__name__)

_FILE_MODE = 0o644
Writer = Callable[[Path], None]
"""Writes one output file at the path it is given (a temporary name with the target's suffix)."""


def _suffix(name: str) -> str:
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), Path(name).suffix)


def _missing_parents(path: Path) -> list[Path]:
    """Folders above ``path`` that do not exist yet, outermost first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def _remove_quietly(paths: Sequence[Path], folders: Sequence[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not remove %s: %s", path, error)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def commit_outputs(outputs: Sequence[tuple[Path, Writer]]) -> list[Path]:
    """Write all ``(target, writer)`` outputs or none of them; return the targets.

    Raises whatever a writer or a rename raised, after cleaning up.
    """
    created: list[Path] = []
    temporary: list[Path] = []
    renamed: list[Path] = []
    try:
        staged = []
        for target, writer in outputs:
            target = Path(target)
            missing = _missing_parents(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            created.extend(missing)
            name = target.name
            suffix = _suffix(name)
            fd, tmp = tempfile.mkstemp(prefix=f".{name[: len(name) - len(suffix)]}.", suffix=f".tmp{suffix}",
                                       dir=target.parent)
            os.close(fd)
            temporary.append(Path(tmp))
            writer(Path(tmp))
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; the platform may read as another user
            staged.append((Path(tmp), target))
        for tmp, target in staged:
            os.replace(tmp, target)
            renamed.append(target)
    except BaseException:
        _remove_quietly([*temporary, *renamed], created)
        raise
    return [Path(target) for target, _ in outputs]


def image_writer(image: sitk.Image, *, compress: bool = True) -> Writer:
    """Writer of a SimpleITK image (format from the suffix)."""
    def write(path: Path) -> None:
        sitk.WriteImage(image, str(path), compress)

    return write


def bytes_writer(data: bytes) -> Writer:
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def text_writer(text: str) -> Writer:
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def json_writer(document: object) -> Writer:
    """Writer of a JSON document (no NaN allowed: GC and the evaluator reject it)."""
    return text_writer(json.dumps(document, indent=2, allow_nan=False) + "\n")

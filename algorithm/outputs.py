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

__all__ = ["OutputError", "Writer", "bytes_writer", "check_writable", "commit_outputs", "image_writer", "json_writer",
           "text_writer"]

log = logging.getLogger(__name__)

_FILE_MODE = 0o644
Writer = Callable[[Path], None]
"""Writes one output file at the path it is given (a temporary name with the target's suffix)."""


class OutputError(OSError):
    """The output folder cannot take the case's files; the message reads ``<folder>: <problem>``."""


def check_writable(folder: Path) -> None:
    """Prove that files can be created in ``folder`` (or in its nearest existing ancestor, where the folder would be
    created) before any work: a probe file is created and removed there. Permission bits alone do not tell
    (a read-only mount, another user's folder, root squash); a failed probe raises :class:`OutputError`."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputError(f"{folder}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".verse-gc-write-check.", dir=existing)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = "" if existing == folder else f" (nor can it be created in {existing})"
        raise OutputError(f"{folder}: output folder is not writable{where}: {reason}; nothing was run "
                          "(mount it writable for the container's user)") from None
    os.close(fd)
    os.unlink(probe)


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

"""The run report: versions, execution providers, per-stage wall time and peak memory, outputs.

Peak memory per stage is the process's resident-set high-water mark (``VmHWM`` of
``/proc/self/status``), reset at the start of each stage through ``/proc/self/clear_refs``
where the kernel allows it; where it does not, each stage reports the peak so far.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["StageRecord", "StageTimer", "peak_rss_mib", "reset_peak_rss", "versions"]

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_mib() -> float | None:
    """Resident-set high-water mark of this process in MiB (``VmHWM``), None where unavailable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mib() -> float | None:
    """Resident set size of this process now, in MiB (``VmRSS``)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0, ``echo 5 > /proc/self/clear_refs``)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class StageRecord:
    """One stage's cost: wall seconds and the process's peak RSS during it (MiB)."""

    stage: str
    wall_s: float
    peak_rss_mib: float | None


class StageTimer:
    """Times stages and records their peak RSS: ``with timer.stage("locate"): ...``."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self._resettable = reset_peak_rss()
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``; on a terminal a progress bar runs meanwhile (:mod:`algorithm.progress`),
        and one log line says the stage's time and peak memory when it ends."""
        from algorithm.progress import stage_bar

        if self._resettable:
            reset_peak_rss()
        start = time.perf_counter()
        try:
            with stage_bar(name):
                yield
        finally:
            record = StageRecord(name, round(time.perf_counter() - start, 3), _rounded(peak_rss_mib()))
            self.records.append(record)
            log.info("stage %s: %.2f s, peak RSS %s MiB", name, record.wall_s, record.peak_rss_mib)

    @property
    def total_s(self) -> float:
        return round(time.perf_counter() - self._started, 3)

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(record) for record in self.records]

    @property
    def peak_rss_mib(self) -> float | None:
        values = [r.peak_rss_mib for r in self.records if r.peak_rss_mib is not None]
        return max(values) if values else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def versions() -> dict[str, str]:
    """Versions of Python and of the packages the algorithm runs on."""
    found = {"python": platform.python_version()}
    for package in ("verse-gc", "onnxruntime", "onnxruntime-gpu", "numpy", "scipy", "SimpleITK",
                    "connected-components-3d"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found

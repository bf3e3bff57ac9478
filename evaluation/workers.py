"""How many cases to score at once: bounded by the CPUs and by the container's memory.

Grand Challenge's runner removes every ``GRAND_CHALLENGE_*`` variable before it starts the
container's command, so ``GRAND_CHALLENGE_MAX_WORKERS`` may never arrive; the evaluator
then sizes its pool itself:

    workers = max(1, min(cases, cpus, floor((memory limit - parent) / case peak)))

- ``cpus``: the CPUs this process may run on (affinity), capped by a cgroup CPU quota
  (``docker run --cpus``: v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
  rounded up.
- memory limit: cgroup v2 ``memory.max``, else v1 ``memory/memory.limit_in_bytes``; none
  (``max``, or v1's huge sentinel) means no memory bound.
- case peak (:func:`case_peak_bytes`): estimated from the two volumes' headers (voxels and
  pixel type, no voxel data read), with a margin; the largest case counts.

``--workers N`` and ``GRAND_CHALLENGE_MAX_WORKERS`` stay explicit overrides, in that
order. :func:`plan_workers` says which rule decided, for the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from evaluation.score import CaseFiles

__all__ = [
    "PROCESS_BASE_BYTES",
    "WorkerPlan",
    "available_cpus",
    "case_peak_bytes",
    "cgroup_cpu_limit",
    "cgroup_memory_limit",
    "plan_workers",
    "retain_freed_memory",
    "volume_bytes",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
WORKERS_ENV = "GRAND_CHALLENGE_MAX_WORKERS"
PROCESS_BASE_BYTES = 192 * 2**20
"""A worker before its case: Python, NumPy, SimpleITK, cc3d, edt (measured ~145 MiB) and headroom."""
PEAK_MARGIN = 1.25
"""Safety factor on the estimated per-case peak (allocator slack, crops, distance transforms)."""
NO_LIMIT_V1 = 2**60
"""cgroup v1 reports 'no limit' as a page-rounded 2**63 - 1; anything this large is no bound."""

_PIXEL_BYTES: Mapping[int, int] = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}


@dataclass(frozen=True)
class WorkerPlan:
    """The pool size and the rule that decided it (one line for the log)."""

    workers: int
    reason: str


# --------------------------------------------------------------------------- allocator

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h> mallopt parameters
RETAINED_BYTES = 2**31 - 1
"""Free memory at the heap's top up to this stays with the process (glibc's trim threshold, a C int)."""


def retain_freed_memory() -> bool:
    """Make glibc's allocator keep and reuse freed memory instead of returning it to the kernel.

    By default every volume-sized block (ITK's image buffers, distance fields) is its own
    ``mmap``, unmapped when freed, so each case faults its memory in again, 4 KiB page by
    page: measured, 77,000 page faults and 0.15 s of system time per bench case against
    0.05 s of actually reading both files. With no ``mmap`` blocks, one arena and no
    trimming, the second case of a process reuses the first one's pages (4 faults).
    Resident memory then stays at the process's peak between cases, which the pool's
    memory bound already assumes. Returns False (and changes nothing) off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return False
    # one arena: a reader thread's volume would otherwise land in its own arena, mmap'ed after all
    done = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
            and mallopt(_M_TRIM_THRESHOLD, RETAINED_BYTES) == 1)
    if not done:
        log.debug("mallopt refused: freed memory goes back to the kernel as usual")
    return done


# --------------------------------------------------------------------------- limits


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The container's memory limit in bytes (cgroup v2, else v1); None when there is none."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(path)
        if text is None:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < NO_LIMIT_V1 else None
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` "quota period", v1 cfs files); None when unlimited."""
    text = _read(root / "cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota_text, period_text = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """CPUs this process may use, and where that figure comes from."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(root)
    if quota is not None and math.ceil(quota) < affinity:
        return max(1, math.ceil(quota)), f"{max(1, math.ceil(quota))} CPUs by the cgroup quota ({quota:g})"
    return max(1, affinity), f"{max(1, affinity)} CPUs"


# --------------------------------------------------------------------------- per-case memory


def volume_bytes(path: Path) -> tuple[int, int, bool]:
    """(voxels, bytes per voxel, NIfTI) of an image file, from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    voxels = math.prod(reader.GetSize())
    per_voxel = _PIXEL_BYTES.get(reader.GetPixelID(), 8) * max(1, reader.GetNumberOfComponents())
    return voxels, per_voxel, path.name.lower().endswith((".nii", ".nii.gz"))


def _read_peak(voxels: int, per_voxel: int, nifti: bool) -> int:
    """Bytes a volume holds while scored: the image (twice while ITK's NIfTI reader copies
    its buffer) and its uint8 label map when the pixel type needs converting."""
    return voxels * per_voxel * (2 if nifti else 1) + (voxels if per_voxel != 1 else 0)


def case_peak_bytes(case: CaseFiles) -> int:
    """Estimated peak memory of a worker scoring ``case``: both volumes are read at once.

    peak = (base + read peak of the ground truth + that of the prediction) * margin, where a
    read peak is the image (x2 for NIfTI) plus a uint8 label map when the pixel type is not
    uint8. A prediction on another grid is resampled onto the ground truth's: one more
    ground-truth-sized volume of the prediction's type. A file whose header cannot be read
    counts as nothing (the scorer records it).
    """
    total = PROCESS_BASE_BYTES
    gt_voxels = 0
    for path in (case.reference_mask, case.prediction_mask):
        if path is None:
            continue
        try:
            voxels, per_voxel, nifti = volume_bytes(path)
        except RuntimeError:
            continue
        total += _read_peak(voxels, per_voxel, nifti)
        if path == case.reference_mask:
            gt_voxels = voxels
        elif voxels != gt_voxels:
            total += gt_voxels * per_voxel
    return int(total * PEAK_MARGIN)


def _resident_bytes() -> int:
    """This (parent) process's resident memory, which the pool's budget must leave to it."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return PROCESS_BASE_BYTES
    return pages * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- the plan


def _explicit(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


def plan_workers(
    cases: Sequence[CaseFiles],
    requested: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
) -> WorkerPlan:
    """The pool size for ``cases``: ``requested`` (``--workers``), else ``GRAND_CHALLENGE_MAX_WORKERS``,
    else bounded by cases, CPUs and memory (see the module docstring)."""
    count = max(1, len(cases))
    if requested is not None:
        return WorkerPlan(min(requested, count), f"--workers {requested}")
    env = os.environ if environ is None else environ
    from_env = _explicit(env.get(WORKERS_ENV))
    if from_env is not None:
        return WorkerPlan(min(from_env, count), f"{WORKERS_ENV}={from_env}")
    cpus, cpu_reason = available_cpus(cgroup_root)
    workers = min(cpus, count)
    reasons = [cpu_reason, f"{len(cases)} cases"]
    limit = cgroup_memory_limit(cgroup_root)
    if limit is None:
        reasons.append("no memory limit")
    elif workers > 1:
        peak = max(case_peak_bytes(case) for case in cases)
        room = max(1, (limit - _resident_bytes()) // peak)
        reasons.append(f"memory limit {limit / 2**30:.2f} GiB / estimated case peak {peak / 2**20:.0f} MiB: "
                       f"room for {room}")
        workers = min(workers, int(room))
    else:
        reasons.append(f"memory limit {limit / 2**30:.2f} GiB")
    return WorkerPlan(max(1, workers), "; ".join(reasons))

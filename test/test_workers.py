"""The evaluator's pool size: CPUs, cgroup quotas and memory limits (v1 and v2), and the overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from evaluation.score import CaseFiles
from evaluation.workers import (
    PEAK_MARGIN,
    PROCESS_BASE_BYTES,
    available_cpus,
    case_peak_bytes,
    cgroup_cpu_limit,
    cgroup_memory_limit,
    plan_workers,
    volume_bytes,
)

GiB = 2**30


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def volume(path: Path, shape: tuple[int, int, int], dtype: type) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, dtype=dtype)), str(path), True)
    return path


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_memory_limit_v2_v1_and_none(tmp_path: Path) -> None:
    assert cgroup_memory_limit(cgroup(tmp_path / "v2", {"memory.max": "2147483648"})) == 2 * GiB
    assert cgroup_memory_limit(cgroup(tmp_path / "v2max", {"memory.max": "max"})) is None
    assert cgroup_memory_limit(cgroup(tmp_path / "v1", {"memory/memory.limit_in_bytes": "1073741824"})) == GiB
    assert cgroup_memory_limit(cgroup(tmp_path / "v1none", {"memory/memory.limit_in_bytes":
                                                            "9223372036854771712"})) is None
    assert cgroup_memory_limit(tmp_path / "nothing") is None
    assert cgroup_memory_limit(cgroup(tmp_path / "junk", {"memory.max": "lots"})) is None


def test_cpu_quota_v2_v1_and_none(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(cgroup(tmp_path / "v2", {"cpu.max": "200000 100000"})) == 2.0
    assert cgroup_cpu_limit(cgroup(tmp_path / "v2max", {"cpu.max": "max 100000"})) is None
    assert cgroup_cpu_limit(cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "150000",
                                                     "cpu/cpu.cfs_period_us": "100000"})) == 1.5
    assert cgroup_cpu_limit(cgroup(tmp_path / "v1none", {"cpu/cpu.cfs_quota_us": "-1",
                                                         "cpu/cpu.cfs_period_us": "100000"})) is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None


def test_cpu_quota_caps_the_affinity(tmp_path: Path, eight_cpus: None) -> None:
    assert available_cpus(cgroup(tmp_path / "q", {"cpu.max": "150000 100000"}))[0] == 2  # --cpus 1.5 -> 2
    assert available_cpus(tmp_path / "none")[0] == 8


def test_case_peak_from_headers(tmp_path: Path) -> None:
    gt = volume(tmp_path / "gt.nii.gz", (40, 50, 60), np.float64)  # VerSe stores its masks as float64
    pred = volume(tmp_path / "pred.mha", (40, 50, 60), np.uint8)
    assert volume_bytes(gt) == (120_000, 8, True) and volume_bytes(pred) == (120_000, 1, False)
    peak = case_peak_bytes(CaseFiles("c", gt, None, pred))
    # ground truth: float64 read twice over (NIfTI) + its uint8 map; prediction: uint8 as it is
    assert peak == int((PROCESS_BASE_BYTES + 120_000 * (8 * 2 + 1) + 120_000) * PEAK_MARGIN)
    other_grid = volume(tmp_path / "small.mha", (20, 25, 30), np.uint8)
    assert case_peak_bytes(CaseFiles("c", gt, None, other_grid)) > case_peak_bytes(CaseFiles("c", gt, None, None))
    (tmp_path / "bad.mha").write_bytes(b"garbage")
    assert case_peak_bytes(CaseFiles("c", gt, None, tmp_path / "bad.mha")) == \
        case_peak_bytes(CaseFiles("c", gt, None, None))


def cases(tmp_path: Path, n: int, shape: tuple[int, int, int] = (64, 64, 64)) -> list[CaseFiles]:
    gt = volume(tmp_path / "gt.mha", shape, np.uint8)
    return [CaseFiles(f"c{i}", gt, None, gt) for i in range(n)]


def test_overrides_win_in_order(tmp_path: Path, eight_cpus: None) -> None:
    many = cases(tmp_path, 10)
    tight = cgroup(tmp_path / "cg", {"memory.max": str(64 * 2**20)})  # far below one case
    assert plan_workers(many, 5, environ={"GRAND_CHALLENGE_MAX_WORKERS": "3"}, cgroup_root=tight) == \
        plan_workers(many, 5, cgroup_root=tight)
    assert plan_workers(many, 5, cgroup_root=tight).workers == 5
    plan = plan_workers(many, environ={"GRAND_CHALLENGE_MAX_WORKERS": "3"}, cgroup_root=tight)
    assert plan.workers == 3 and "GRAND_CHALLENGE_MAX_WORKERS=3" in plan.reason
    assert plan_workers(many[:2], 5, cgroup_root=tight).workers == 2  # never more than cases


def test_no_limit_uses_every_cpu(tmp_path: Path, eight_cpus: None) -> None:
    plan = plan_workers(cases(tmp_path, 20), environ={}, cgroup_root=tmp_path / "none")
    assert plan.workers == 8 and "no memory limit" in plan.reason
    assert plan_workers(cases(tmp_path, 3), environ={}, cgroup_root=tmp_path / "none").workers == 3


def test_memory_limit_bounds_the_pool(tmp_path: Path, eight_cpus: None) -> None:
    many = cases(tmp_path, 20, (128, 256, 256))
    peak = case_peak_bytes(many[0])
    from evaluation.workers import _resident_bytes

    limit = _resident_bytes() + int(3.5 * peak)
    plan = plan_workers(many, environ={}, cgroup_root=cgroup(tmp_path / "cg", {"memory.max": str(limit)}))
    assert plan.workers == 3, plan.reason
    assert "room for 3" in plan.reason and "estimated case peak" in plan.reason
    starving = plan_workers(many, environ={}, cgroup_root=cgroup(tmp_path / "cg2", {"memory.max": str(peak // 2)}))
    assert starving.workers == 1  # never fewer than one: the case may still fit, and the run must go on
    quota = plan_workers(many, environ={}, cgroup_root=cgroup(tmp_path / "cg3", {"memory.max": str(100 * GiB),
                                                                                   "cpu.max": "200000 100000"}))
    assert quota.workers == 2 and "cgroup quota" in quota.reason


SECOND_READ = """
import resource, sys
import SimpleITK as sitk
from evaluation.workers import retain_freed_memory
print(retain_freed_memory() if sys.argv[2] == "retain" else False)
for n in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    image = sitk.ReadImage(sys.argv[1])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del image
print(faults)
"""


def test_retained_memory_serves_the_next_volume_without_page_faults(tmp_path: Path) -> None:
    """The second read of a 64 MiB volume reuses the first one's pages (the bug: a trim threshold
    that overflowed C int to 0 handed every freed volume back, 16,384 faults a read)."""
    path = volume(tmp_path / "v.mha", (256, 256, 1024), np.uint8)
    pages = 256 * 256 * 1024 // os.sysconf("SC_PAGE_SIZE")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    retained, faults = subprocess.run([sys.executable, "-c", SECOND_READ, str(path), "retain"], capture_output=True,
                                      text=True, check=True, env=env).stdout.split()
    if retained != "True":
        pytest.skip("not glibc: the allocator is left as it is")
    assert int(faults) < pages // 20

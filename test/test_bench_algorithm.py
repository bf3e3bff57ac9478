"""bench/algorithm.py: the in-run baselines (I/O floor, an earlier commit) and the ratios it prints."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_support import REPO, bench_module

bench = bench_module("algorithm")


def _run(wall: list[float], rss: list[float | None], process_s: float) -> dict:
    stages = [{"stage": f"s{i}", "wall_s": w, "peak_rss_mib": r}
              for i, (w, r) in enumerate(zip(wall, rss, strict=True))]
    return {"stages": stages, "process_s": process_s}


def test_totals_sum_the_stages_and_take_the_peak() -> None:
    assert bench.totals(_run([1.0, 2.5], [100.0, None], 4.0)) == (3.5, 100.0)


def test_summary_takes_medians_per_kind_and_skips_absent_ones() -> None:
    runs = {"this": [_run([3.0], [500.0], 4.0), _run([9.0], [700.0], 10.0), _run([5.0], [600.0], 6.0)],
            "floor": [_run([0.1], [150.0], 1.0)], "baseline": []}
    s = bench.summary(runs)
    assert (s["this_s"], s["this_process_s"], s["this_mib"]) == (5.0, 6.0, 600.0)
    assert s["floor_process_s"] == 1.0
    assert not any(key.startswith("baseline") for key in s)


def test_ratio_table_divides_by_the_baselines_of_the_same_run_and_checks_the_budget() -> None:
    summaries = {"example": {"this_s": 18.0, "this_process_s": 20.0, "this_mib": 600.0,
                             "floor_s": 0.1, "floor_process_s": 1.0, "floor_mib": 200.0,
                             "baseline_s": 20.0, "baseline_process_s": 22.0, "baseline_mib": 600.0}}
    text = bench.ratio_table(summaries, "abc123")
    assert "x20.0 the I/O floor's process time, x3.00 its memory" in text
    assert "x0.900 the baseline's stage time, x1.000 its memory" in text
    assert "within" in text and "abc123" in text
    summaries["example"]["this_process_s"] = bench.GOAL_S + 1.0
    assert "OVER" in bench.ratio_table(summaries, None)


def test_floor_child_reads_and_writes_the_example_without_models() -> None:
    import json

    done = subprocess.run([sys.executable, str(REPO / "bench" / "algorithm.py"), "--floor-child", str(bench.EXAMPLE)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["size"] == [122, 101, 112]
    assert [r["stage"] for r in result["stages"]] == ["read", "write"]  # no model loaded


def test_repeat_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_an_unknown_baseline_commit_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="--baseline no-such-ref: git worktree failed"), \
            bench.baseline_tree("no-such-ref", tmp_path):
        pass

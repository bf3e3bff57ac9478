"""The container's command line as GC runs it: bad inputs fail cleanly, usage errors exit 2, invoke mode serves.

Bad inputs run ``python -m algorithm`` in a subprocess, as the container does: exit code 1,
exactly one line on stderr that is not a log line (``error: <file>: <problem>``, the last
line), nothing on stdout and nothing at all in the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from algorithm_fixtures import all_files, fixture_model_dir, gc_input, make_phantom
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithm.cli import PIPELINE_SWITCHES
from algorithm.labelling import LABELLERS
from algorithm.models import ModelSource, load_models
from algorithm.pipeline import Options
from algorithm.serve import InvokeServer
from spine.layout import AlgorithmLayout

REPO = Path(__file__).resolve().parents[1]


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("VERSE_GC_API_METHOD", None)
    env.update(extra)
    return env


def run_algorithm(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "algorithm", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment(**env), cwd=REPO)


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def problem_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without log lines (logs go to stderr too); stdout must be empty."""
    assert done.stdout == "", done.stdout
    lines = done.stderr.splitlines()
    problems = [line for line in lines if not LOG_LINE.match(line)]
    return problems


def ct_image(array: np.ndarray, spacing=(0.8, 0.8, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def varied() -> np.ndarray:
    array = np.full((8, 9, 10), -1000, np.int16)
    array[2:6, 3:7, 3:8] = 600
    return array


def write(folder: Path, name: str, image: sitk.Image, *, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / name), compress)
    return folder / name


def truncated(folder: Path, name: str) -> Path:
    path = write(folder, name, ct_image(np.random.default_rng(0).integers(-1000, 1000, (20, 30, 30), np.int16)),
                 compress=name.endswith(".gz"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CT = Path("images") / "ct"
BAD_INPUTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "2-D": (lambda i: write(i / CT, "a.mha", sitk.GetImageFromArray(np.arange(20, dtype=np.int16).reshape(4, 5))),
            "expected a 3-D image, got 2-D"),
    "4-D": (lambda i: write(i / CT, "a.mha", sitk.JoinSeries([ct_image(varied())] * 2)),
            "expected a 3-D image, got 4-D"),
    "RGB": (lambda i: write(i / CT, "a.mha", sitk.Compose([ct_image(varied())] * 3)), "RGB"),
    "zero-size": (lambda i: (i / CT).mkdir(parents=True) or (i / CT / "a.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 0 0 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"),
        "empty image"),
    "zero-byte file": (lambda i: (i / CT).mkdir(parents=True) or (i / CT / "a.mha").write_bytes(b""), "empty file"),
    "constant": (lambda i: write(i / CT, "a.mha", ct_image(np.full((8, 9, 10), 40, np.int16))), "constant image"),
    "NaN voxels": (lambda i: write(i / CT, "a.mha", ct_image(np.where(varied() > 0, np.nan, -1000.0)
                                                             .astype(np.float32))), "voxels are NaN"),
    "NaN voxels, NIfTI": (lambda i: write(i / CT, "a.nii.gz", ct_image(np.where(varied() > 0, np.nan, -1000.0)
                                                                       .astype(np.float32))), "voxels are NaN"),
    "all NaN, NIfTI": (lambda i: write(i / CT, "a.nii", ct_image(np.full((8, 9, 10), np.nan, np.float32))),
                       "720 voxels are NaN"),
    "infinite voxels, NIfTI": (lambda i: write(i / CT, "a.nii.gz", ct_image(np.where(varied() > 0, np.inf, -1000.0)
                                                                            .astype(np.float64))), "voxels are NaN"),
    "spacing too small": (lambda i: write(i / CT, "a.mha", ct_image(varied(), spacing=(0.01, 0.8, 2.0))),
                          "outside [0.05, 10] mm"),
    "spacing too large": (lambda i: write(i / CT, "a.mha", ct_image(varied(), spacing=(0.8, 0.8, 50.0))),
                          "outside [0.05, 10] mm"),
    "20 mm slices": (lambda i: write(i / CT, "a.mha", ct_image(varied(), spacing=(0.8, 0.8, 20.0))),
                     "outside [0.05, 10] mm"),
    "2.4 m wide": (lambda i: write(i / CT, "a.mha", ct_image(np.tile(varied(), (1, 1, 30)), spacing=(8.0, 8.0, 5.0))),
                   "the image is 240 cm along x (across): no CT of a person is"),
    "truncated mha": (lambda i: truncated(i / CT, "a.mha"), "data not read completely"),
    "truncated nii.gz": (lambda i: truncated(i / CT, "a.nii.gz"), "truncated"),
    "no image": (lambda i: (i / CT).mkdir(parents=True), "no inputs.json and no image"),
    "several images": (lambda i: [write(i / CT, n, ct_image(varied())) for n in ("a.mha", "b.mha")],
                       "2 images where one CT is expected"),
    "no ct socket": (lambda i: (i.mkdir(), (i / "inputs.json").write_text(
        json.dumps([{"socket": {"slug": "t2-image", "relative_path": "images/t2"}}]))), "no 'ct-image' socket"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_with_one_line_and_leaves_output_empty(tmp_path: Path, case: str) -> None:
    make, problem = BAD_INPUTS[case]
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    make(inputs)
    outputs.mkdir()
    done = run_algorithm("--input", str(inputs), "--output", str(outputs), "--models", str(fixture_model_dir()))
    lines = problem_lines(done)
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and problem in lines[0], lines[0]
    assert str(inputs) in lines[0]  # names the file or folder
    assert all_files(outputs) == []


def test_missing_input_folder_fails_cleanly(tmp_path: Path) -> None:
    done = run_algorithm("--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"),
                         "--models", str(fixture_model_dir()))
    assert done.returncode == 1 and len(problem_lines(done)) == 1
    assert problem_lines(done)[0].startswith(f"error: {tmp_path / 'nowhere'}: input folder does not exist")
    assert not (tmp_path / "out").exists()


def test_broken_models_fail_cleanly_after_a_good_input(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(fixture_model_dir(), models)
    (models / "segment.onnx").write_bytes(b"\x00garbage")
    gc_input(tmp_path / "input", make_phantom().image)
    done = run_algorithm("--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"),
                         "--models", str(models))
    assert done.returncode == 1 and len(problem_lines(done)) == 1, done.stderr
    assert problem_lines(done)[0].startswith(f"error: {models / 'segment.onnx'}: cannot load ONNX model")
    assert all_files(tmp_path / "output") == []


@pytest.mark.parametrize("args", [
    ["serve", "--port", "70000"],
    ["--overlap", "1.5"],
    ["--device", "tpu"],
    ["--models", "/nonexistent/models"],
    ["predict", "ct.nii.gz"],
    ["--no-such-option"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    from algorithm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("flags", "recentre", "ribs", "sacrum", "fragments", "skull", "skipped", "size"), [
    ([], True, True, True, True, True, True, True),
    (["--no-ribs"], True, False, True, True, True, True, True),
    (["--no-recentre", "--ribs", "--no-sacrum"], False, True, False, True, True, True, True),
    (["--no-fragments"], True, True, True, False, True, True, True),
    (["--no-skull"], True, True, True, True, False, True, True),
    (["--no-fill-skipped"], True, True, True, True, True, False, True),
    (["--no-size-evidence"], True, True, True, True, True, True, False),
])
def test_pipeline_switches_reach_the_options(flags: list[str], recentre: bool, ribs: bool, sacrum: bool,
                                             fragments: bool, skull: bool, skipped: bool, size: bool) -> None:
    from algorithm.cli import _options, build_parser

    options = _options(build_parser().parse_args(["predict", "ct.nii.gz", "--output", "out", *flags]))
    assert (options.recentre, options.rib_evidence, options.sacrum_check, options.edge_fragments,
            options.skull_anchor, options.fill_skipped, options.size_evidence) == (
        recentre, ribs, sacrum, fragments, skull, skipped, size)


def test_the_bone_floor_reaches_the_options_and_is_checked() -> None:
    from algorithm.cli import _options, build_parser
    from algorithm.pipeline import Options

    parse = build_parser().parse_args
    assert _options(parse(["predict", "ct.nii.gz", "--output", "out"])).bone_floor == Options().bone_floor
    assert _options(parse(["predict", "ct.nii.gz", "--output", "out", "--bone-floor", "0.3"])).bone_floor == 0.3
    for bad in ("0", "0.7", "x"):
        with pytest.raises(SystemExit):
            parse(["predict", "ct.nii.gz", "--output", "out", "--bone-floor", bad])
    with pytest.raises(ValueError, match="bone_floor"):
        Options(bone_floor=0.6)


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("0.999", True), ("1", False), ("-0.1", False)])
def test_the_overlap_interval_is_closed_below_and_open_above(value: str, ok: bool) -> None:
    from algorithm.cli import overlap_value

    if ok:
        assert overlap_value(value) == float(value)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=r"overlap must be in \[0, 1\)"):
            overlap_value(value)


def test_bench_real_checks_its_bone_floor_as_predict_does(capsys) -> None:
    from test_support import bench_module

    with pytest.raises(SystemExit):
        bench_module("real").build_parser().parse_args(["--bone-floor", "0.9"])
    assert "bone floor must be in (0, 0.5], got 0.9" in capsys.readouterr().err


def test_bench_real_variants_only_needs_reformats(capsys) -> None:
    """``--variants-only`` leaves out the cases the variants come from: without ``--reformats`` there are none to
    score, one error line before any model loads."""
    from test_support import bench_module

    with pytest.raises(SystemExit):
        bench_module("real").main(["--variants-only"])
    assert "--variants-only needs --reformats" in capsys.readouterr().err


def test_help_lists_the_modes(capsys) -> None:
    from algorithm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(mode in text for mode in ("exec", "serve", "predict"))


# --------------------------------------------------------------------------- invoke mode


def request(url: str, method: str = "GET") -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_invoke_server_health_then_cases(tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    gc_input(inputs, make_phantom().image)
    outputs.mkdir()
    release = threading.Event()

    def load():
        release.wait(30)
        return load_models(ModelSource(fixture_model_dir(), "fixture"), device="cpu")

    server = InvokeServer(("127.0.0.1", 0), AlgorithmLayout(input_dir=inputs, output_dir=outputs), load)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        server.load_in_background()
        assert request(server.url + "/health") == (503, {"status": "loading"})
        assert request(server.url + "/invoke", "POST")[0] == 503
        release.set()
        assert server.loaded.wait(30)
        assert request(server.url + "/health") == (200, {"status": "ready"})
        status, body = request(server.url + "/invoke", "POST")
        assert status == 201, body
        assert body["vertebrae"] == ["T12", "L1", "L2", "L3", "L4", "L5"]
        assert (outputs / "images" / "vertebrae-segmentation" / "output.mha").is_file()
        assert (outputs / "vertebrae-centroids.json").is_file()
        # the next case is unusable: 500 with the reason, nothing written
        shutil.rmtree(outputs)
        outputs.mkdir()
        write(inputs / CT, next((inputs / CT).iterdir()).name, ct_image(np.full((8, 9, 10), 7, np.int16)))
        status, body = request(server.url + "/invoke", "POST")
        assert status == 500 and "constant image" in body["error"]
        assert all_files(outputs) == []
        assert request(server.url + "/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_serve_command_answers_health_and_invoke(tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    gc_input(inputs, make_phantom().image, variant="interface")
    outputs.mkdir()
    port = free_port()
    # no command: VERSE_GC_API_METHOD=invoke (set by the image's build argument) selects serve mode
    process = subprocess.Popen(
        [sys.executable, "-m", "algorithm", "--port", str(port), "--input", str(inputs), "--output", str(outputs),
         "--models", str(fixture_model_dir())], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=environment(VERSE_GC_API_METHOD="invoke"), cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        status, body = request(url + "/invoke", "POST")
        assert status == 201, body
        assert sorted(p.name for p in all_files(outputs)) == ["output.mha", "vertebrae-centroids.json"]
    finally:
        process.terminate()
        process.wait(10)


def test_serve_exits_1_when_models_do_not_load(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(fixture_model_dir(), models)
    (models / "locate.onnx").write_bytes(b"broken")
    done = run_algorithm("serve", "--port", str(free_port()), "--models", str(models), timeout=60)
    assert done.returncode == 1
    lines = problem_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "locate.onnx: cannot load ONNX model" in lines[0]


# --------------------------------------------------------------------------- console edges


@pytest.mark.parametrize("command", [["predict", "ct.nii.gz"], ["exec", "--input", "in"]])
def test_output_that_is_a_file_is_refused_before_any_work(tmp_path: Path, command: list[str]) -> None:
    """Regression: predict ran the whole pipeline, then blamed the input ('[Errno 17] File exists')."""
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for output in (taken, taken / "below"):
        started = time.perf_counter()
        done = run_algorithm(*command, "--output", str(output), "--models", str(tmp_path / "no-models"))
        assert done.returncode == 2, done.stderr
        assert "argument --output" in done.stderr and str(taken) in done.stderr and "not a folder" in done.stderr
        assert "--models" not in done.stderr.splitlines()[-1]  # the first problem found is the output
        assert time.perf_counter() - started < 30


def test_help_names_the_console_script(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from algorithm.cli import main

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/verse-algorithm", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith("usage: verse-algorithm ")
    monkeypatch.setattr(sys, "argv", [str(REPO / "algorithm" / "__main__.py"), "--help"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith("usage: python -m algorithm ")


def nan_ct(folder: Path) -> Path:
    return write(folder, "bad_ct.nii.gz", ct_image(np.where(varied() > 0, np.nan, -1000.0).astype(np.float32)))


@pytest.mark.parametrize("quiet", [False, True])
def test_predict_failure_on_a_pipe_is_one_clean_line_without_a_bar(tmp_path: Path, quiet: bool) -> None:
    ct = nan_ct(tmp_path)
    done = run_algorithm("predict", str(ct), "--output", str(tmp_path / "out"), "--models",
                         str(fixture_model_dir()), *(["-q"] if quiet else []))
    assert done.returncode == 1
    assert "\r" not in done.stderr and "predict:" not in done.stderr  # no bar in a log
    lines = problem_lines(done)
    assert len(lines) == 1 and lines[0].startswith(f"error: {ct}: ") and "NaN or infinite" in lines[0]
    if quiet:
        assert all(" INFO " not in line for line in done.stderr.splitlines())


def run_on_terminal(*args: str) -> tuple[int, str]:
    """Run the algorithm with stderr on a pseudo-terminal; returns the exit code and what it showed."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty has 0 columns
    process = subprocess.Popen([sys.executable, "-m", "algorithm", *args], stdout=subprocess.DEVNULL,
                               stderr=follower, env=environment(COLUMNS="100"), cwd=REPO)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return process.wait(60), shown.decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_predict_bar_on_a_terminal_does_not_count_a_failed_case(tmp_path: Path, quiet: bool) -> None:
    ct = nan_ct(tmp_path)
    code, shown = run_on_terminal("predict", str(ct), "--output", str(tmp_path / "out"), "--models",
                                  str(fixture_model_dir()), *(["-q"] if quiet else []))
    assert code == 1
    error_line = next(line for line in shown.replace("\r", "\n").splitlines() if "error:" in line)
    assert error_line.startswith("error: ")  # on a line of its own, not glued onto the bar
    if quiet:
        assert "predict:" not in shown
    else:
        assert "0/1" in shown and "1/1" not in shown and "1 failed" in shown


def test_long_stages_show_a_bar_on_a_terminal_and_a_line_each_in_a_log(tmp_path: Path) -> None:
    """The issue: locate was silent for 18-48 s. On a terminal each stage's bar counts the patches its models ran;
    in a log (a pipe) there is no bar, one line per stage."""
    ct = write(tmp_path, "sub-phantom_ct.mha", make_phantom().image)
    code, shown = run_on_terminal("predict", str(ct), "--output", str(tmp_path / "tty"), "--models",
                                  str(fixture_model_dir()), "--no-qc")
    assert code == 0, shown
    for stage in ("detect", "locate", "segment"):
        assert re.search(rf"{stage}: \d+ patch", shown), (stage, shown[-3000:])
    done = run_algorithm("predict", str(ct), "--output", str(tmp_path / "log"), "--models", str(fixture_model_dir()),
                         "--no-qc")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and " patch" not in done.stderr
    for stage in ("detect", "locate", "label", "segment", "resample"):
        assert len(re.findall(rf"INFO algorithm.report: stage {stage}: ", done.stderr)) == 1, stage


def test_exec_logs_one_summary_line_per_case_not_the_json_report(tmp_path: Path) -> None:
    gc_input(tmp_path / "input", make_phantom().image)
    done = run_algorithm("--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"),
                         "--models", str(fixture_model_dir()))
    assert done.returncode == 0, done.stderr
    summary = [line for line in done.stderr.splitlines() if " INFO algorithm.pipeline: case " in line]
    assert len(summary) == 1, done.stderr
    assert re.search(r"case \S+: \d+ vertebrae \w+\.\.\w+.*; (plausible|doubtful: .+); \d+\.\d s", summary[0])
    assert '"versions"' not in done.stderr and len(summary[0]) < 600
    verbose = run_algorithm("--input", str(tmp_path / "input"), "--output", str(tmp_path / "verbose"),
                            "--models", str(fixture_model_dir()), "-v")
    assert '"versions"' in verbose.stderr  # -v still has the whole report


@pytest.mark.skipif(not Path("/sys").is_dir() or os.name != "posix", reason="needs /sys")
def test_an_unwritable_output_is_refused_before_the_input_is_read(tmp_path: Path) -> None:
    """The issue: the container found an unwritable /output only after 18 s of pipeline. The output folder is
    probed first (a file created and removed): one line, exit 1, nothing read, no model loaded. ``/sys`` is a
    folder that permission bits call writable (``os.access``, argparse's check) where no file can be created."""
    gc_input(tmp_path / "input", make_phantom().image)
    for command in ([], ["serve"]):
        started = time.perf_counter()
        done = run_algorithm(*command, "--input", str(tmp_path / "input"), "--output", "/sys/verse-gc-output",
                             "--models", str(fixture_model_dir()))
        lines = problem_lines(done)
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: /sys/verse-gc-output: output folder is not writable"), lines[0]
        assert "models from" not in done.stderr and "INFO algorithm.inputs" not in done.stderr
        assert time.perf_counter() - started < 30
    ct = write(tmp_path, "sub-phantom_ct.mha", make_phantom().image)
    done = run_algorithm("predict", str(ct), "--output", "/sys/verse-gc-output", "--models", str(fixture_model_dir()))
    assert done.returncode == 1 and "output folder is not writable" in problem_lines(done)[0]


def test_the_default_output_is_probed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """argparse checks only an --output given; the GC default /output is probed by the mode itself."""
    import algorithm.cli as cli
    from algorithm.outputs import OutputError

    probed: list[Path] = []

    def refuse(folder: Path) -> None:
        probed.append(Path(folder))
        raise OutputError(f"{folder}: output folder is not writable")

    monkeypatch.setattr(cli, "check_writable", refuse)
    monkeypatch.setattr(cli, "read_gc_input", lambda layout: pytest.fail("input read before the output check"))
    gc_input(tmp_path / "input", make_phantom().image)
    assert cli.main(["--input", str(tmp_path / "input")]) == 1
    assert probed == [Path("/output")]
    assert "error: /output: output folder is not writable" in capsys.readouterr().err


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([None, True, False]), min_size=len(PIPELINE_SWITCHES),
                max_size=len(PIPELINE_SWITCHES)), st.sampled_from([None, 0.2, 0.35, 0.5]),
       st.sampled_from([None, *LABELLERS]))
def test_the_bench_runs_predict_with_the_settings_it_was_given(values: list[bool | None], floor: float | None,
                                                              labeller: str | None) -> None:
    """bench/real.py declares the pipeline's settings as predict does (algorithm.cli.add_pipeline_settings), and the
    flags it hands each end-to-end predict process give back exactly the options it measured with."""
    from test_support import bench_module

    from algorithm.cli import PIPELINE_SWITCHES, _options, build_parser

    real = bench_module("real")
    assert len(values) == len(PIPELINE_SWITCHES)
    flags = [f"--{'' if on else 'no-'}{flag}" for (flag, _, _), on in zip(PIPELINE_SWITCHES, values, strict=True)
             if on is not None]
    valued = [*(["--bone-floor", str(floor)] if floor is not None else []),
              *(["--labeller", labeller] if labeller is not None else [])]
    args = real.build_parser().parse_args([*flags, *valued])
    measured = real.pipeline_options(args)
    for (flag, name, _), on in zip(PIPELINE_SWITCHES, values, strict=True):
        assert getattr(measured, name) == (getattr(Options(), name) if on is None else on), flag
    assert measured.bone_floor == (Options().bone_floor if floor is None else floor)
    assert measured.labeller == (Options().labeller if labeller is None else labeller)
    handed = _options(build_parser().parse_args(["predict", "ct.nii.gz", "--output", "out",
                                                 *real.pipeline_flags(measured)]))
    assert handed == replace(measured, overlap=handed.overlap)


def test_exec_with_the_learned_labeller_refuses_an_unusable_label_model_before_any_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``exec`` and ``serve`` take ``--labeller`` as ``predict`` does; with ``learned`` its model is loaded with the
    stage models, so a broken one is one error line at start-up, and nothing is written."""
    import algorithm.cli as cli

    def broken() -> None:
        raise ValueError("algorithm/models/label.onnx: cannot load the chain-context model")

    monkeypatch.setattr(cli, "learned_decoder", broken)
    gc_input(tmp_path / "input", make_phantom().image)
    assert cli.main(["exec", "--labeller", "learned", "--input", str(tmp_path / "input"), "--output",
                     str(tmp_path / "output"), "--models", str(fixture_model_dir())]) == 1
    assert "error: algorithm/models/label.onnx: cannot load the chain-context model" in capsys.readouterr().err
    assert all_files(tmp_path / "output") == []
    assert cli.build_parser().parse_args(["serve", "--labeller", "decoder"]).labeller == "decoder"


def test_a_run_without_a_bone_floor_records_the_floor_it_used() -> None:
    """Options with no bone floor segment at the plain floor everywhere: the benchmark's record and the flags that
    reproduce the run both say that number, never null."""
    from algorithm.cli import pipeline_flags, pipeline_values
    from algorithm.pipeline import Options

    plain = Options(bone_floor=None, segment_floor=0.4)
    assert pipeline_values(plain)["bone_floor"] == 0.4
    flags = pipeline_flags(plain)
    assert flags[flags.index("--bone-floor") + 1] == "0.4"
    assert pipeline_values(Options())["bone_floor"] == Options().bone_floor

"""Every entry point's --help as a user runs it: the usage line names the program as invoked, no
"(default: None)", no raw reStructuredText; and the command-line edges of issue 21 (bare exec, S1 points,
--models against /opt/ml/model)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from algorithm_fixtures import fixture_model_dir, make_phantom

from spine.console import program_name
from spine.gc import Point
from spine.markups import write_markups

REPO = Path(__file__).resolve().parents[1]

ENTRY_POINTS = [
    ("algorithm", []), ("algorithm", ["exec"]), ("algorithm", ["serve"]), ("algorithm", ["predict"]),
    ("evaluation", []), ("evaluation", ["gc"]), ("evaluation", ["folders"]),
    ("export", []), ("export", ["synth"]), ("export", ["train"]), ("export", ["onnx"]),
]


@pytest.mark.parametrize(("module", "command"), ENTRY_POINTS, ids=[" ".join([m, *c]) for m, c in ENTRY_POINTS])
def test_every_help_names_the_program_as_invoked(module: str, command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", module, *command, "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"usage: {' '.join(['python -m', module, *command])} "), text.splitlines()[0]
    assert "verse-" not in text.splitlines()[0]
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "`" not in text, [line for line in text.splitlines() if "`" in line]


@pytest.mark.parametrize(("module", "script"), [("algorithm", "verse-algorithm"), ("evaluation", "verse-evaluate"),
                                                ("export", "verse-export")])
def test_console_scripts_name_themselves(module: str, script: str) -> None:
    assert program_name(module, script, f"/usr/local/bin/{script}") == script
    assert program_name(module, script, f"/repo/{module}/__main__.py") == f"python -m {module}"
    assert program_name(module, script, "-m") == f"python -m {module}"


def test_required_options_show_no_default(capsys) -> None:
    from export.cli import main

    with pytest.raises(SystemExit):
        main(["onnx", "--help"])
    text = capsys.readouterr().out
    checkpoint = text[text.index("--checkpoint CHECKPOINT\n"):text.index("--out OUT")]
    assert "default" not in checkpoint
    assert "(default: 0.0001)" in text  # a real default still shows


def test_bare_algorithm_without_input_hints_at_predict_and_help(tmp_path: Path) -> None:
    from test_algorithm_cli import problem_lines, run_algorithm

    done = run_algorithm("--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    lines = problem_lines(done)
    assert done.returncode == 1 and len(lines) == 1
    assert "input folder does not exist" in lines[0]
    assert "python -m algorithm predict CT --output DIR" in lines[0] and "--help" in lines[0]


def test_a_sacrum_point_in_a_centroid_file_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    """README and code agree: S1 is a VerSe label the model does not segment (skipped, warned); a name that is
    no VerSe label is an error (test_annotation_loop)."""
    from algorithm.cli import main

    phantom = make_phantom()
    ct = tmp_path / "sub-phantom_ct.mha"
    sitk.WriteImage(phantom.image, str(ct))
    lowest = min(phantom.centres_mm.values(), key=lambda p: p[2])
    points = write_markups(tmp_path / "with-s1.mrk.json", [Point("L1", tuple(phantom.centres_mm[20])),
                                                         Point("S1", tuple(lowest - [0.0, 0.0, 5.0]))])
    with caplog.at_level(logging.WARNING, logger="algorithm"):
        assert main(["predict", str(ct), "--centroids", str(points), "--output", str(tmp_path / "out"), "--models",
                     str(fixture_model_dir()), "--device", "cpu", "--no-qc", "-q"]) == 0
    assert any("S1 skipped" in r.getMessage() and str(points) in r.getMessage() for r in caplog.records)
    report = json.loads((tmp_path / "out" / "sub-phantom_report.json").read_text())
    assert [v["name"] for v in report["vertebrae"]] == ["L1"] and "S1" in report["centroids"]["given"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "skipped with a warning" in readme and "not a VerSe label" in readme


def test_models_from_opt_ml_model_win_and_say_so_over_models(tmp_path: Path, caplog) -> None:
    import shutil

    from algorithm.models import find_model_dir
    from spine.layout import AlgorithmLayout

    gc_dir = tmp_path / "opt-ml-model"
    shutil.copytree(fixture_model_dir(), gc_dir)
    with caplog.at_level(logging.WARNING, logger="algorithm"):
        source = find_model_dir(layout=AlgorithmLayout(gc_model_dir=gc_dir), models=fixture_model_dir())
    assert source.directory == gc_dir
    assert any("--models" in r.getMessage() and "not used" in r.getMessage() for r in caplog.records)
    from algorithm.cli import build_parser

    models_help = next(a.help for a in build_parser()._subparsers._group_actions[0].choices["predict"]._actions
                       if "--models" in a.option_strings)
    assert models_help.index("/opt/ml/model") < models_help.index("--models") < models_help.index("$VERSE_GC_MODELS")

"""The annotation loop: predict writes Slicer markups, ``predict --centroids`` segments from corrected
centroids (on real CTs exactly the real-CT benchmark's oracle segmentation), ``--fix`` and spine-level facts
steer the labelling and the report says what they changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from algorithm_fixtures import PHANTOM_LABELS, fixture_model_dir, make_phantom
from test_real_cases import _bench

from algorithm.cli import main
from algorithm.models import find_model_dir, load_models
from export.real_cases import find_real_cases
from spine.gc import Point
from spine.labels import label_of, name_of
from spine.markups import read_markups, write_markups

REAL = {case.name: case for case in find_real_cases()}


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory):
    phantom = make_phantom()
    path = tmp_path_factory.mktemp("phantom") / "sub-phantom_ct.mha"
    sitk.WriteImage(phantom.image, str(path))
    return phantom, path


def _predict(*args: str) -> int:
    return main(["predict", *args, "--device", "cpu", "--no-qc", "-q"])


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "totalsegmentator-example" else pytest.mark.slow)
                                  for n in REAL])
def test_predict_from_ground_truth_centroids_gives_the_oracle_segment_dice(name: str, tmp_path: Path) -> None:
    bench = _bench()
    real = REAL[name]
    case = real.load()
    models = load_models(find_model_dir(), device="cpu")
    row = bench.stage_figures(case, real, models)
    labels = [label_of(n) for n in row["labels"]]
    centroids = write_markups(tmp_path / "truth.mrk.json",
                              [Point(name_of(v), tuple(case.centroids_mm[v]), 1.0) for v in labels])
    assert _predict(str(real.ct), "--centroids", str(centroids), "--output", str(tmp_path / "out")) == 0
    mask = next((tmp_path / "out").glob("*_seg-vert_msk.nii.gz"))
    dices = bench.dice_per_label(sitk.GetArrayFromImage(sitk.ReadImage(str(mask))),
                                 sitk.GetArrayFromImage(case.mask), labels)
    assert float(np.mean(list(dices.values()))) == pytest.approx(row["segment"]["dice"], abs=1e-12)
    # a real segmentation (crops of partial vertebrae score low), not two empty maps agreeing
    assert row["segment"]["dice"] > 0.3


def test_moving_a_point_in_the_markups_file_moves_the_segment(phantom_ct, tmp_path: Path) -> None:
    phantom, ct = phantom_ct
    models = str(fixture_model_dir())
    assert _predict(str(ct), "--output", str(tmp_path / "first"), "--models", models) == 0
    points = read_markups(tmp_path / "first" / "sub-phantom_ctd.mrk.json")
    assert [p.name for p in points] == [name_of(v) for v in PHANTOM_LABELS]
    # The user renames the last two (L4, L5 -> L5, L6) and drops T12, as one would in Slicer.
    edited = [Point(p.name, p.point_mm) for p in points[1:-2]] + [Point("L5", points[-2].point_mm),
                                                                  Point("L6", points[-1].point_mm)]
    corrected = write_markups(tmp_path / "corrected.mrk.json", edited)
    assert _predict(str(ct), "--centroids", str(corrected), "--output", str(tmp_path / "second"),
                    "--models", models) == 0
    report = json.loads((tmp_path / "second" / "sub-phantom_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["segment", "resample", "measure"]  # no detect, locate, label
    assert [v["name"] for v in report["vertebrae"]] == ["L1", "L2", "L3", "L5", "L6"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "second" / "sub-phantom_seg-vert_msk.nii.gz")))
    truth = sitk.GetArrayFromImage(phantom.truth)
    assert set(np.unique(labels)) == {0, 20, 21, 22, 24, 25}
    assert np.mean(labels[truth == 24] == 25) > 0.5  # the true L5 body now carries the user's L6
    # and the markups written this time hold the user's labels, confidence 1
    again = read_markups(tmp_path / "second" / "sub-phantom_ctd.mrk.json")
    assert [(p.name, p.probability) for p in again] == [(p.name, 1.0) for p in edited]


def test_fix_relabels_and_the_report_says_what_changed(phantom_ct, tmp_path: Path) -> None:
    phantom, ct = phantom_ct
    t12 = phantom.centres_mm[19]
    assert _predict(str(ct), "--output", str(tmp_path), "--models", str(fixture_model_dir()),
                    "--fix", "L1=" + ",".join(f"{c:.2f}" for c in t12 + 3.0)) == 0
    report = json.loads((tmp_path / "sub-phantom_report.json").read_text())
    # T12 is now L1 and the rest follow (the lowest becomes L6, or is rejected: a sixth lumbar is rare)
    assert [v["name"] for v in report["vertebrae"]][:5] == ["L1", "L2", "L3", "L4", "L5"]
    constraints = report["label"]["constraints"]
    assert constraints["stated"]["fix"][0]["label"] == "L1"
    assert constraints["stated"]["fix"][0]["distance_mm"] == pytest.approx(3.0 * np.sqrt(3), abs=0.6)
    assert constraints["changed"][0] == {"position_mm": constraints["changed"][0]["position_mm"], "from": "T12",
                                         "to": "L1"}
    assert len(constraints["changed"]) == len(PHANTOM_LABELS)


@pytest.mark.parametrize(("extra", "message"), [
    (["--centroids", "{bad}"], "are not vertebrae"),
    (["--centroids", "{outside}"], "lies outside the CT"),
    (["--centroids", "{good}", "--lumbar", "5"], "which --centroids skips"),
    (["--fix", "L6=0,0,0", "--lumbar", "5"], "contradicts --lumbar 5"),
])
def test_bad_corrections_give_one_error_line_and_no_output(phantom_ct, tmp_path: Path, capsys, extra: list[str],
                                                           message: str) -> None:
    phantom, ct = phantom_ct
    files = {"bad": write_markups(tmp_path / "bad.mrk.json", [Point("vertebra 3", tuple(phantom.centres_mm[20]))]),
             "outside": write_markups(tmp_path / "out.mrk.json", [Point("L1", (0.0, 0.0, 1e4))]),
             "good": write_markups(tmp_path / "good.mrk.json", [Point("L1", tuple(phantom.centres_mm[20]))])}
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in extra]
    assert _predict(str(ct), "--output", str(tmp_path / "out"), "--models", str(fixture_model_dir()), *args) == 1
    err = capsys.readouterr().err  # the progress bar shares stderr: find the error line in it
    assert err.count("error: ") == 1
    line = err[err.index("error: "):].splitlines()[0]
    assert message in line
    if "--centroids" in extra and "lumbar" not in " ".join(extra):
        assert str(files[extra[1][1:-1]]) in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("where", "cause"), [("far", "another scan"), ("ras", "RAS given for LPS")])
def test_a_fix_far_from_every_candidate_is_refused_with_its_likely_cause(phantom_ct, tmp_path: Path, capsys,
                                                                        where: str, cause: str) -> None:
    """A fix 250 mm off (the issue's ``--fix L1=0,0,0``) or a vertebra's RAS coordinates given as LPS: one line
    naming the nearest candidate and its distance, nothing written (it would relabel the whole spine)."""
    phantom, ct = phantom_ct
    l1 = phantom.centres_mm[20]
    point = np.zeros(3) if where == "far" else l1 * np.array([-1.0, -1.0, 1.0])
    distance = min(np.linalg.norm(c - point) for c in phantom.centres_mm.values())
    assert distance > 20.0
    assert _predict(str(ct), "--output", str(tmp_path / "out"), "--models", str(fixture_model_dir()),
                    "--fix", "L1=" + ",".join(f"{c:.2f}" for c in point)) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 1
    line = err[err.index("error: "):].splitlines()[0]
    assert "mm from the nearest vertebra candidate (" in line and cause in line, line
    stated = float(line.split("mm from the nearest")[0].rsplit(" ", 2)[-2])
    assert stated == pytest.approx(distance, abs=6.0)  # candidates sit on the phantom's bodies, within a few mm
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_readme_fix_example_lands_on_the_example_ct_l5(tmp_path: Path) -> None:
    """The README's ``--fix L5=...`` point is the example CT's L5 (the issue: it lay 31.8 mm off, silently)."""
    import re

    root = Path(__file__).resolve().parent.parent
    point = re.search(r"--fix (L5=[-0-9.,]+)`", (root / "README.md").read_text(encoding="utf-8")).group(1)
    ct = root / "examples" / "totalsegmentator-example" / "ct.nii.gz"
    assert _predict(str(ct), "--output", str(tmp_path), "--fix", point) == 0
    report = json.loads((tmp_path / "ct_report.json").read_text())
    assert report["label"]["constraints"]["stated"]["fix"][0]["distance_mm"] < 3.0
    assert report["label"]["constraints"]["changed"] == []  # it states what the model found anyway


@pytest.mark.slow
def test_the_readme_worked_correction_example_prints_what_it_says(tmp_path: Path) -> None:
    """Runs the README's "Correcting a result" bash block as written (in a folder where ``examples/`` is the
    repository's) and compares every list it prints with the list its comment promises, in order."""
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text(encoding="utf-8")
    start = text.index("A worked example on the bundled CT.")
    block = text[text.index("```bash\n", start) + len("```bash\n"):text.index("\n```", text.index("```bash\n", start))]
    promised = [m.group(1) for line in block.splitlines() for m in [re.search(r"#\s*(\[[^\]]*\])", line)] if m]
    assert len(promised) == 2, block
    (tmp_path / "examples").symlink_to(root / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert printed == promised

"""The README's containers-by-hand worked case: ``examples/gc-evaluation/predictions.json`` is what the evaluation
image reads, and the README's block runs as written (with Docker: test_containers) or with the two ``python -m``
commands it names instead of ``docker run`` (here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.cli import main as evaluate
from spine.gc import Point, points_document
from spine.image import Geometry, read_image
from spine.labels import name_of
from spine.verse import read_centroids_mm

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "totalsegmentator-example"
PREDICTIONS = REPO / "examples" / "gc-evaluation" / "predictions.json"


def readme_block() -> str:
    """The bash block after "By hand, a worked case" in the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("```bash\n", text.index("By hand, a worked case")) + len("```bash\n")
    return text[start:text.index("\n```", start)]


def without_docker(block: str) -> str:
    """The block with each ``docker run`` replaced by the ``python -m`` command the README names for it."""
    algorithm = 'docker run --rm --network none -v "$PWD/gc/in:/input:ro" -v "$PWD/gc/out:/output" verse-gc-algorithm'
    assert algorithm in block
    block = block.replace(algorithm, "python -m algorithm --input gc/in --output gc/out")
    block, count = re.subn(r'docker run [^\n]*\\\n[^\n]*verse-gc-evaluation',
                           "python -m evaluation --input gc/eval/in --ground-truth gc/eval/gt "
                           "--output gc/eval/metrics/metrics.json --no-progress", block)
    assert count == 1 and "docker" not in block
    return block


def test_the_example_predictions_json_is_scored_with_its_job_outputs(tmp_path: Path) -> None:
    """The example's own labels as the job's output: the evaluation reads predictions.json, finds the job's
    folder and scores case ``ct`` perfectly."""
    job = json.loads(PREDICTIONS.read_text())[0]
    output = tmp_path / "in" / job["pk"] / "output"
    (output / "images" / "vertebrae-segmentation").mkdir(parents=True)
    shutil.copyfile(EXAMPLE / "seg-vert_msk.nii.gz", output / "images" / "vertebrae-segmentation" / "output.nii.gz")
    truth = read_centroids_mm(EXAMPLE / "seg-vert_ctd.json", Geometry.of(read_image(EXAMPLE / "seg-vert_msk.nii.gz")))
    (output / "vertebrae-centroids.json").write_text(json.dumps(points_document(
        [Point(name_of(label), tuple(float(c) for c in point), 1.0) for label, point in truth.items()])))
    shutil.copyfile(PREDICTIONS, tmp_path / "in" / "predictions.json")
    (tmp_path / "gt").mkdir()
    shutil.copyfile(EXAMPLE / "seg-vert_msk.nii.gz", tmp_path / "gt" / "ct_seg-vert_msk.nii.gz")
    shutil.copyfile(EXAMPLE / "seg-vert_ctd.json", tmp_path / "gt" / "ct_seg-vert_ctd.json")
    assert evaluate(["--input", str(tmp_path / "in"), "--ground-truth", str(tmp_path / "gt"), "--output",
                     str(tmp_path / "metrics.json"), "--no-progress"]) == 0
    case = json.loads((tmp_path / "metrics.json").read_text())["case"]["ct"]
    assert case["status"] == "ok" and case["dice"] == pytest.approx(1.0) and case["id_rate"] == pytest.approx(1.0)
    assert job["pk"] in readme_block()  # the README's block copies the outputs to this job's folder


@pytest.mark.slow
def test_the_readme_by_hand_case_runs_without_docker_as_it_says(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", without_docker(readme_block())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ok"

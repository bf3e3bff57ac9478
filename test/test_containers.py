"""The two Grand Challenge images, built from the Dockerfile and run as GC runs them.

Marked ``container``: run with ``./build.sh && python -m pytest -m container`` (CI does).
Containers get no network, a read-only /input, a tmpfs /tmp, no capabilities and a
memory cap, as on the platform.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from gc_fixtures import make_evaluation_input, make_ground_truth, socket_value

from spine import gc
from spine.image import Geometry, array_of, read_image
from spine.layout import CENTROIDS_OUTPUT, CT_SOCKET, AlgorithmLayout

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "totalsegmentator-example"
VERSE004 = REPO / "test" / "data" / "verse-sub-verse004"


def docker(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.skip("no Docker engine answers (CI starts one with ../shared/ci/docker-up.sh)")


def image(target: str) -> str:
    """The image of ``target``, built by ./build.sh when this machine does not have it yet."""
    tag = f"verse-gc-{target}"
    if docker("image", "inspect", tag, check=False).returncode != 0:
        subprocess.run([str(REPO / "build.sh"), target], check=True, timeout=1800)
    return tag


def writable(path: Path) -> Path:
    """A host folder the container's non-root user may write to, as GC provides /output."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def run_gc(tag: str, mounts: dict[Path, str], *args: str, memory: str = "8g",
           cpus: str | None = None) -> subprocess.CompletedProcess[str]:
    """``docker run`` with GC's restrictions; ``mounts`` maps host folders to container paths."""
    command = ["run", "--rm", "--network", "none", "--memory", memory, "--memory-swap", memory,
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "256",
               "--tmpfs", "/tmp:rw,exec,size=2g", *(["--cpus", cpus] if cpus else [])]
    for host, target in mounts.items():
        command += ["-v", f"{host}:{target}"]
    return docker(*command, tag, *args, check=False)


def test_evaluation_image_scores_a_gc_layout(tmp_path: Path) -> None:
    mask = read_image(VERSE004 / "sub-verse004_seg-vert_msk.nii.gz")
    ctd = VERSE004 / "sub-verse004_seg-subreg_ctd.json"
    labels = array_of(mask)
    shifted = sitk.GetImageFromArray(np.roll(labels, 3, axis=0))
    shifted.CopyInformation(mask)
    ground_truth = make_ground_truth(tmp_path / "gt", [("sub-verse004", mask, ctd), ("case-b", mask, ctd),
                                                      ("case-c", mask, ctd)])
    inputs = make_evaluation_input(tmp_path / "input", [
        ("sub-verse004_ct.nii.gz", mask, None),  # perfect: the ground truth itself
        ("case-b.mha", shifted, None),  # every vertebra shifted by 3 slices (6 mm)
        ("case-c_ct.mha", b"truncated", None),  # unreadable: scored as empty, run goes on
    ])
    output = writable(tmp_path / "output")
    result = run_gc(image("evaluation"), {inputs: "/input:ro", ground_truth: "/opt/ml/input/data/ground_truth:ro",
                                          output: "/output"})
    assert result.returncode == 0, result.stderr[-3000:]

    def no_constants(name: str) -> float:
        raise AssertionError(f"metrics.json holds {name}")

    metrics = json.loads((output / "metrics.json").read_text(), parse_constant=no_constants)
    cases = metrics["case"]
    assert cases["sub-verse004"]["dice"] == pytest.approx(1.0)
    assert cases["sub-verse004"]["id_rate"] == pytest.approx(1.0)
    assert cases["sub-verse004"]["hd95"] == pytest.approx(0.0)
    assert 0.5 < cases["case-b"]["dice"] < 1.0
    assert cases["case-c"]["dice"] == 0.0 and cases["case-c"]["status"] != "ok"
    assert 0.0 < metrics["aggregates"]["dice"]["mean"] < 1.0
    assert metrics["aggregates"]["dice"]["count"] == 3


def clinical_pair(folder: Path) -> tuple[Path, Path]:
    """A 512x512x400 ground truth (.nii.gz, 20 vertebra boxes, 0.7x0.7x1 mm) and a prediction
    (.mha, every box one voxel off): clinical size, 100 MiB per volume in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = np.zeros((400, 512, 512), dtype=np.uint8)
    for n, label in enumerate(range(5, 25)):
        truth[8 + 19 * n:8 + 19 * n + 15, 200:300, 190:330] = label
    prediction = np.roll(truth, 1, axis=0)
    paths = []
    for array, name in ((truth, "gt.nii.gz"), (prediction, "pred.mha")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((0.7, 0.7, 1.0))
        sitk.WriteImage(volume, str(folder / name), True)
        paths.append(folder / name)
    return paths[0], paths[1]


def test_evaluation_image_with_2g_and_2_cpus_scores_20_clinical_cases(tmp_path: Path) -> None:
    """The pool sizes itself from the container's limits (GC strips GRAND_CHALLENGE_MAX_WORKERS):
    20 clinical-size cases under --memory 2g --cpus 2 finish without an OOM kill."""
    truth, prediction = clinical_pair(tmp_path / "volumes")
    cases = [f"sub-clin{n:03d}" for n in range(20)]
    ground_truth = make_ground_truth(tmp_path / "gt", [(case, truth, None) for case in cases])
    inputs = make_evaluation_input(tmp_path / "input", [(f"{case}_ct.mha", prediction, None) for case in cases])
    output = writable(tmp_path / "output")
    result = run_gc(image("evaluation"), {inputs: "/input:ro", ground_truth: "/opt/ml/input/data/ground_truth:ro",
                                          output: "/output"}, memory="2g", cpus="2")
    assert result.returncode == 0, result.stderr[-3000:]  # 137 would be the OOM killer
    plan = next(line for line in result.stderr.splitlines() if "workers (" in line)
    assert "memory limit 2.00 GiB" in plan, plan
    metrics = json.loads((output / "metrics.json").read_text())
    assert sorted(metrics["case"]) == cases
    assert all(record["vertebrae"] == 20 and "no points file" in record["status"]
               for record in metrics["case"].values())
    assert metrics["aggregates"]["cases"]["error"] == 0


def test_evaluation_image_rejects_a_malformed_predictions_json(tmp_path: Path) -> None:
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "predictions.json").write_text("{not json")
    ground_truth = make_ground_truth(tmp_path / "gt", [("sub-verse004", VERSE004 / "sub-verse004_seg-vert_msk.nii.gz",
                                                        None)])
    output = writable(tmp_path / "output")
    result = run_gc(image("evaluation"), {inputs: "/input:ro", ground_truth: "/opt/ml/input/data/ground_truth:ro",
                                          output: "/output"})
    assert result.returncode != 0
    assert "predictions.json" in result.stderr.strip().splitlines()[-1]
    assert list(output.iterdir()) == []


def algorithm_input(root: Path, ct: Path, variant: str = "socket") -> Path:
    """A GC algorithm /input: inputs.json plus the CT as a randomly named .mha under images/ct/."""
    layout = AlgorithmLayout(input_dir=root)
    folder = layout.input_socket_dir(CT_SOCKET.relative_path)
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.ReadImage(str(ct)), str(folder / f"{uuid.uuid4()}.mha"), True)
    value = socket_value(CT_SOCKET.slug, "Image", "Image", CT_SOCKET.relative_path, variant,
                         image={"name": ct.name})
    layout.inputs_json.write_text(json.dumps([value]))
    root.chmod(0o755)
    return root


def test_algorithm_image_meets_the_output_contract_and_feeds_the_evaluation(tmp_path: Path) -> None:
    ct = EXAMPLE / "ct.nii.gz"
    inputs = algorithm_input(tmp_path / "input", ct)
    output = writable(tmp_path / "output")
    result = run_gc(image("algorithm"), {inputs: "/input:ro", output: "/output"})
    assert result.returncode == 0, result.stderr[-3000:]

    layout = AlgorithmLayout(output_dir=output)
    segmentation = read_image(layout.segmentation_path)
    assert segmentation.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(segmentation).same_as(Geometry.of(read_image(ct)), tol_mm=1e-4)
    values = np.unique(array_of(segmentation))
    assert values.min() >= 0 and values.max() <= 28
    document = json.loads(layout.centroids_path.read_text())
    assert set(document) == {"name", "type", "points", "version"} and document["type"] == "Multiple points"
    points = gc.read_points(layout.centroids_path)
    assert all(0.0 <= p.probability <= 1.0 for p in points)

    # The algorithm's outputs, as GC hands them to the evaluation, scored against the example's labels.
    ground_truth = make_ground_truth(tmp_path / "gt", [("ct", EXAMPLE / "seg-vert_msk.nii.gz",
                                                        EXAMPLE / "seg-vert_ctd.json")])
    evaluation_input = make_evaluation_input(tmp_path / "eval-input",
                                             [("ct.nii.gz", layout.segmentation_path, layout.centroids_path)])
    metrics_dir = writable(tmp_path / "metrics")
    scored = run_gc(image("evaluation"), {evaluation_input: "/input:ro",
                                          ground_truth: "/opt/ml/input/data/ground_truth:ro",
                                          metrics_dir: "/output"})
    assert scored.returncode == 0, scored.stderr[-3000:]
    case = json.loads((metrics_dir / "metrics.json").read_text())["case"]["ct"]
    assert case["status"] == "ok" or case["status"].startswith("ok")
    assert 0.0 <= case["dice"] <= 1.0 and 0.0 <= case["id_rate"] <= 1.0
    assert CENTROIDS_OUTPUT.relative_path == "vertebrae-centroids.json"


def test_algorithm_image_refuses_a_2d_image_cleanly(tmp_path: Path) -> None:
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.int16)), str(flat))
    root = tmp_path / "input"
    folder = AlgorithmLayout(input_dir=root).input_socket_dir()
    folder.mkdir(parents=True)
    shutil.copyfile(flat, folder / f"{uuid.uuid4()}.mha")
    output = writable(tmp_path / "output")
    result = run_gc(image("algorithm"), {root: "/input:ro", output: "/output"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "3-D" in last and ".mha" in last
    assert [p for p in output.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("mount", ["ro", "root-owned"])
def test_algorithm_image_refuses_an_unwritable_output_before_inference(tmp_path: Path, mount: str) -> None:
    """An /output the container's user cannot write (mounted read-only, or a root-owned 755 folder) is one error
    line and a non-zero exit before the CT is read or a model loads (the issue: found after 18 s of pipeline)."""
    inputs = algorithm_input(tmp_path / "input", EXAMPLE / "ct.nii.gz")
    output = tmp_path / "output"
    output.mkdir()
    if mount == "ro":
        output.chmod(0o777)
    else:
        output.chmod(0o755)  # owned by the host's user, not the image's
    result = run_gc(image("algorithm"), {inputs: "/input:ro", output: "/output" + (":ro" if mount == "ro" else "")})
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: /output: output folder is not writable"), last
    assert "models from" not in result.stderr and "stage detect" not in result.stderr
    assert list(output.iterdir()) == []


def test_the_readme_by_hand_case_runs_as_written(tmp_path: Path) -> None:
    """The README's two ``docker run`` lines, verbatim, on the bundled example (images built first)."""
    from test_readme_gc_by_hand import readme_block

    image("algorithm"), image("evaluation")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ok"

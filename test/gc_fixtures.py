"""Build Grand Challenge evaluation inputs and VerSe ground truth in a folder, for tests.

Plain importable functions (no pytest) so that the evaluator's tests and the container
test share them::

    from gc_fixtures import make_evaluation_input, make_ground_truth

    gt = make_ground_truth(tmp_path / "gt", [("sub-verse004", mask, centroids_mm)])
    inp = make_evaluation_input(tmp_path / "input", [("sub-verse004_ct.nii.gz", prediction, points)])
    # inp/predictions.json, inp/<pk>/output/images/vertebrae-segmentation/<random>.mha,
    # inp/<pk>/output/vertebrae-centroids.json
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from spine.gc import Point, points_document
from spine.image import Geometry, write_image
from spine.layout import CENTROIDS_OUTPUT, CT_SOCKET, SEGMENTATION_OUTPUT, EvaluationLayout
from spine.verse import centroid_json_name, mask_name, write_centroid_json

__all__ = ["PointsSpec", "make_evaluation_input", "make_ground_truth", "socket_value"]

PointsSpec = Sequence[Point] | Mapping[str, Any] | str | Path | None
"""Points of a job: Point list (written as GC Multiple points), a JSON document, raw text
(e.g. malformed on purpose), a file to copy, or None (no points file)."""

MaskSpec = sitk.Image | Path | bytes | None
"""A job's segmentation: an image (written as .mha), a file to copy, raw bytes (e.g. a
truncated file), or None (the job's output folder stays empty)."""


def socket_value(slug: str, kind: str, super_kind: str, relative_path: str,
                 variant: Literal["socket", "interface"] = "socket", **extra: Any) -> dict[str, Any]:
    """One socket value as GC writes it; ``variant`` picks the newer ``socket`` or older ``interface`` key."""
    socket = {"pk": 1, "title": slug.replace("-", " ").title(), "slug": slug, "kind": kind,
              "super_kind": super_kind, "relative_path": relative_path, "default_value": None}
    return {"pk": str(uuid.uuid4()), "file": None, "image": None, "value": None, variant: socket, **extra}


def _write_points(path: Path, points: PointsSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(points, Path):
        shutil.copyfile(points, path)
    elif isinstance(points, str):
        path.write_text(points, encoding="utf-8")
    elif isinstance(points, Mapping):
        path.write_text(json.dumps(points), encoding="utf-8")
    else:
        path.write_text(json.dumps(points_document(points or [])), encoding="utf-8")


def _write_mask(folder: Path, mask: MaskSpec) -> str | None:
    folder.mkdir(parents=True, exist_ok=True)
    if mask is None:
        return None
    name = f"{uuid.uuid4()}.mha"
    if isinstance(mask, sitk.Image):
        write_image(mask, folder / name)
    elif isinstance(mask, bytes):
        (folder / name).write_bytes(mask)
    else:
        name = f"{uuid.uuid4()}{''.join(Path(mask).suffixes) or '.mha'}"
        shutil.copyfile(mask, folder / name)
    return name


def make_evaluation_input(
    root: str | Path,
    cases: Sequence[tuple[str, MaskSpec, PointsSpec]],
    variant: Literal["socket", "interface"] = "socket",
    *,
    status: str = "Succeeded",
) -> Path:
    """Write a GC evaluation ``/input`` folder under ``root``: ``predictions.json`` plus each job's outputs.

    ``cases``: (input image name, e.g. ``"sub-verse004_ct.nii.gz"``; segmentation; points).
    Returns ``root``.
    """
    root = Path(root)
    layout = EvaluationLayout(input_dir=root)
    jobs = []
    for image_name, mask, points in cases:
        pk = str(uuid.uuid4())
        ct = socket_value(CT_SOCKET.slug, "Image", "Image", CT_SOCKET.relative_path, variant,
                          image={"pk": str(uuid.uuid4()), "name": image_name})
        seg_name = _write_mask(layout.job_output(pk, SEGMENTATION_OUTPUT.relative_path), mask)
        outputs = [socket_value(SEGMENTATION_OUTPUT.slug, "Segmentation", "Image", SEGMENTATION_OUTPUT.relative_path,
                                variant, image={"pk": str(uuid.uuid4()), "name": seg_name} if seg_name else None)]
        if points is not None:
            _write_points(layout.job_output(pk, CENTROIDS_OUTPUT.relative_path), points)
            value = points if isinstance(points, Mapping) else None
            outputs.append(socket_value(CENTROIDS_OUTPUT.slug, "Multiple points", "Value",
                                        CENTROIDS_OUTPUT.relative_path, variant, value=value))
        jobs.append({"pk": pk, "url": f"https://grand-challenge.org/api/v1/algorithms/jobs/{pk}/",
                     "inputs": [ct], "outputs": outputs, "status": status, "rendered_result_text": "",
                     "algorithm_image": "https://grand-challenge.org/api/v1/algorithms/images/0/"})
    root.mkdir(parents=True, exist_ok=True)
    layout.predictions_json.write_text(json.dumps(jobs, indent=2), encoding="utf-8")
    return root


def make_ground_truth(
    root: str | Path,
    cases: Sequence[tuple[str, sitk.Image | Path, Mapping[int, np.ndarray] | Path | None]],
    *,
    suffix: Literal[".nii.gz", ".mha"] = ".nii.gz",
    nested: bool = True,
) -> Path:
    """Write VerSe ground truth under ``root`` (below ``derivatives/<case>/`` when ``nested``).

    ``cases``: (case id; mask image or file to copy; centroids as {label: LPS mm}, a VerSe
    centroid JSON to copy, or None). Returns ``root``.
    """
    root = Path(root)
    for case_id, mask, centroids in cases:
        folder = root / "derivatives" / case_id if nested else root
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / mask_name(case_id).replace(".nii.gz", suffix)
        if not isinstance(mask, sitk.Image) and str(mask).lower().endswith(suffix):
            shutil.copyfile(mask, target)
            geometry = Geometry.of(sitk.ReadImage(str(target)))
        else:
            image = mask if isinstance(mask, sitk.Image) else sitk.ReadImage(str(mask))
            write_image(image, target)
            geometry = Geometry.of(image)
        if isinstance(centroids, Path):
            shutil.copyfile(centroids, folder / centroid_json_name(case_id))
        elif centroids is not None:
            write_centroid_json(folder / centroid_json_name(case_id), dict(centroids), geometry)
    root.mkdir(parents=True, exist_ok=True)
    return root

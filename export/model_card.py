"""Figures for ``algorithm/models/MODEL_CARD.md``: the exported ONNX models on whole cases.

``python -m export.model_card --models algorithm/models --synthetic DIR [--out metrics.json]``

Runs each stage's ONNX file (ONNX Runtime, CPU) the way the card describes, on

- synthetic validation cases (VerSe layout, e.g. ``python -m export synth --seed 5000``), and
- the real labelled CTs at hand (:mod:`export.real_cases`: the bundled example and, with
  ``../shared/data`` or ``$VERSE_GC_DATA``, tptbox-lumbar, verse-sub-verse014 and
  totalsegmentator-aorta), with annotated vertebral-body centres where the case has them and
  centres estimated from the mask otherwise. ``bench/real.py`` measures the whole pipeline on
  the same cases.

Per stage (definitions in :mod:`export.validation`): detect Dice and box recall against the
smoothed spine target; locate per-label channel-argmax distance, identification and label
accuracy (no sequence decoding: the raw network evidence); segment Dice per vertebra with
the patch centred on the reference centroid. Also the ONNX Runtime time per patch.
These measure the stage networks alone, not the full algorithm.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spine.case import Case
from spine.labels import anatomical_rank, name_of
from spine.modelmeta import ModelMeta

from .datasets import STAGE_DEFAULTS, prepare_volume
from .validation import (
    detect_metrics,
    locate_metrics,
    locate_per_label,
    onnx_predictor,
    segment_case_metrics,
    sliding_window,
)

__all__ = ["evaluate_models", "main", "real_cases"]

log = logging.getLogger(__name__)


def real_cases() -> list[Case]:
    """The real labelled CTs at hand (:mod:`export.real_cases`: the bundled example, and those of
    ``../shared/data`` in a developer checkout), with vertebral-body centres."""
    from .real_cases import find_real_cases

    return [real.load() for real in find_real_cases()]


def _load(path: Path) -> tuple[ModelMeta, Any, float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = ModelMeta.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
    predict = onnx_predictor(str(path))
    x = np.zeros((1, len(meta.input_channels), *meta.patch_shape_zyx), np.float32)
    predict(x)
    t0 = time.perf_counter()
    predict(x)
    return meta, predict, time.perf_counter() - t0


def evaluate_models(models: Path, cases: Sequence[Case]) -> dict[str, Any]:
    """Per case and stage: the figures described in the module docstring."""
    result: dict[str, Any] = {"cases": {}, "seconds_per_patch": {}}
    loaded = {}
    for stage in ("detect", "locate", "segment"):
        meta, predict, seconds = _load(models / f"{stage}.onnx")
        loaded[stage] = (meta, predict)
        result["seconds_per_patch"][stage] = seconds
    for case in cases:
        row: dict[str, Any] = {"labels": [name_of(label) for label in sorted(case.centroids_mm, key=anatomical_rank)]}
        for stage, (meta, predict) in loaded.items():
            volume = prepare_volume(case, meta, crop_margin_mm=STAGE_DEFAULTS[stage].crop_margin_mm)
            if stage == "segment":
                dices = segment_case_metrics(predict, volume, meta)
                row["segment"] = {"dice": float(np.mean(list(dices.values()))) if dices else 0.0,
                                  "per_label": {name_of(k): round(v, 4) for k, v in dices.items()}}
                continue
            prob = sliding_window(predict, volume.image[None], meta.patch_shape_zyx,
                                  pad_value=meta.intensity.background)
            if stage == "detect":
                row["detect"] = detect_metrics(prob[0], volume.target)
            else:
                summary = locate_metrics(prob, volume.centroids_zyx, meta.spacing_zyx_mm, meta.channel_labels)
                per_label = locate_per_label(prob, volume.centroids_zyx, meta.spacing_zyx_mm, meta.channel_labels)
                summary["per_label"] = {name_of(k): {key: round(v, 3) for key, v in values.items()}
                                        for k, values in per_label.items()}
                row["locate"] = summary
        result["cases"][case.case_id] = row
        log.info("%s: %s", case.case_id, json.dumps({k: v for k, v in row.items() if k != "labels"})[:400])
    return result


def _aggregate(rows: dict[str, Any]) -> dict[str, float]:
    if not rows:
        return {}
    out: dict[str, float] = {}
    for stage, keys in (("detect", ("dice", "box_recall")),
                        ("locate", ("distance_mm", "id_rate", "label_accuracy", "peak_detection_rate",
                                    "peak_distance_mm", "peak_label_accuracy", "false_peaks")),
                        ("segment", ("dice",))):
        for key in keys:
            out[f"{stage}_{key}"] = float(np.mean([row[stage][key] for row in rows.values()]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="algorithm/models", help="folder with detect/locate/segment.onnx")
    parser.add_argument("--synthetic", help="VerSe-layout folder of synthetic validation cases")
    parser.add_argument("--max-synthetic", type=int, default=6)
    parser.add_argument("--out", help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import onnxruntime  # noqa: F401  (fail early with a clear ImportError)

    from .readers import read_cases

    synthetic = []
    if args.synthetic:
        for case in read_cases(args.synthetic):
            synthetic.append(case)
            if len(synthetic) >= args.max_synthetic:
                break
    report: dict[str, Any] = {}
    if synthetic:
        report["synthetic"] = evaluate_models(Path(args.models), synthetic)
        report["synthetic"]["mean"] = _aggregate(report["synthetic"]["cases"])
    real = real_cases()
    if real:
        report["real"] = evaluate_models(Path(args.models), real)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Recipe (issue 19): the skull-base model, skull.onnx: where the foramen magnum is, the anchor at the chain's head
# (algorithm/skull.py places C1 under it).
#
# Data (export/skull_base.py): the OpenKBP train-split head-and-neck CTs whose clinical spinal-cord contour is
# there (144), the target a Gaussian (sigma 6 mm) at the centre of the contour's top slice; the project's OpenKBP
# dev annotation set (24 CTs, chooses) and the locked validation split are left out. Negatives: patches away from
# it, the same CTs with the head cleared away 30-140 mm under it, and the real CTs without a skull
# (totalsegmentator-example, totalsegmentator-aorta, tptbox-lumbar, verse-sub-verse014). No vertebra label is used.
# 1,600 iterations of batch 4 (48^3 patches at 4 mm), AdamW 2e-3 with cosine decay, seed 0: 22 minutes on two CPU
# cores. The exported model is the last checkpoint; no real case chose it.
#
# Usage (repository root, developer checkout beside ../shared/data):
#   bash export/recipes/skull-base.sh                # train, then export to $OUT
#   RESUME=1 ITERATIONS=2400 bash export/recipes/skull-base.sh   # go on from $RUNS/skull.pt
# Environment: WORK (default /work/data), ITERATIONS (total, default 1600), OUT (default $RUNS/skull.onnx).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/work/data}
RUNS=$WORK/runs/skull
OUT=${OUT:-$RUNS/skull.onnx}
ITERATIONS=${ITERATIONS:-1600}
python -m export.skull_base --out "$RUNS" --iterations "$ITERATIONS" ${RESUME:+--resume}
python -m export.skull_base --out "$RUNS" --export "$OUT"
echo "skull-base model: $OUT (copy it to algorithm/models/skull.onnx; python bench/real.py --openkbp dev)"

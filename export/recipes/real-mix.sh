#!/usr/bin/env bash
# Recipe: the default models from synthetic phantoms plus real labelled CTs (issue 8).
#
# Data: 48 synthetic phantoms with real vertebra shapes (seeds 2000-2047) and the real CTs totalsegmentator-example and
# tptbox-lumbar, each linked 8 times so that about a quarter of the patches are real. Held out of
# training (unseen, for bench/real.py): verse-sub-verse014 (VerSe manual ground truth) and
# totalsegmentator-aorta. Validation during training: synthetic seeds 5000-5002 only, so no real
# case chooses a checkpoint; the exported model is the last checkpoint.
#
# Usage (from the repository root, in a developer checkout beside ../shared/data):
#   bash export/recipes/real-mix.sh                 # CPU: each stage stops at its wall-time cap
#   DEVICE=cuda MINUTES_SCALE=0 bash export/recipes/real-mix.sh   # GPU: full iteration counts, no cap
#   RESUME=1 bash export/recipes/real-mix.sh        # continue from runs/real-mix/<stage>/last.pt
# Environment: WORK (data + runs, default /work/data), DEVICE (auto), OUT (the exported models, default
# $WORK/runs/real-mix/models: compare with bench/real.py, then copy into algorithm/models),
# MINUTES_SCALE (1: caps of 60/25/8 minutes for locate/segment/detect; 0: no cap).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/work/data}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-$WORK/runs/real-mix/models}
SCALE=${MINUTES_SCALE:-1}
RUNS=$WORK/runs/real-mix
RESUME_FLAG=${RESUME:+--resume}
TRAINED_ON="synthetic phantoms with real vertebra shapes (export synth seeds 2000-2047) + real CTs totalsegmentator-example, tptbox-lumbar \
(8 links each); unseen: verse-sub-verse014, totalsegmentator-aorta"

[ -d "$WORK/synth2-train/rawdata" ] || python -m export synth --out "$WORK/synth2-train" --cases 48 --seed 2000 --max-voxels 6000000
[ -d "$WORK/synth2-val/rawdata" ] || python -m export synth --out "$WORK/synth2-val" --cases 3 --seed 5000 --max-voxels 6000000
python -m export.real_cases --out "$WORK/real-train" --cases totalsegmentator-example tptbox-lumbar --copies 8

cap() { if [ "$SCALE" = 0 ]; then echo ""; else echo "--max-minutes $(( $1 * SCALE ))"; fi; }
COMMON=(--data "$WORK/synth2-train" "$WORK/real-train" --val-data "$WORK/synth2-val" --val-cases 3 --batch-size 2
        --seed 0 --device "$DEVICE" --trained-on "$TRAINED_ON" --no-progress)
# shellcheck disable=SC2046
python -m export train locate  "${COMMON[@]}" --out "$RUNS/locate"  --lr 8e-3 --iterations 3000 --val-every 250 $(cap 60) $RESUME_FLAG
# shellcheck disable=SC2046
python -m export train segment "${COMMON[@]}" --out "$RUNS/segment" --lr 5e-3 --iterations 1200 --val-every 200 $(cap 25) $RESUME_FLAG
# shellcheck disable=SC2046
python -m export train detect  "${COMMON[@]}" --out "$RUNS/detect"  --lr 5e-3 --iterations 400 --val-every 200 $(cap 8) $RESUME_FLAG
for stage in locate segment detect; do
  python -m export onnx --checkpoint "$RUNS/$stage/last.pt" --out "$OUT/$stage.onnx"
done
python bench/real.py --models "$OUT" --json "$RUNS/real.json"

#!/usr/bin/env bash
# Recipe (issue 19, measured, not shipped): the outline model fine-tuned with fields of view that end inside the
# patch (export.datasets.VIEW_CUTS: air beyond a plane through the vertebra, the target empty there), in two
# variants, each 800 iterations from the bundled outline.onnx (round 5 of the segment stage) with round 5's
# sagittal rotations, on round 5's data (48 real-shape phantoms, export synth seeds 2000-2047, and the real CTs
# totalsegmentator-example and tptbox-lumbar, 8 links each; synthetic validation seeds 5000-5002 only):
#   A  every side (behind 12-45 mm, beside 15-45 mm, above or below 4-20 mm), --view-cut-p 0.3, seed 6
#   B  beside, above or below only, --view-cut-p 0.3, seed 7
# About 13-14 minutes each on two CPU cores. Then bench/real.py on the reformats (and A on OpenKBP dev) with each
# model in place of outline.onnx. What they gave, and why neither is the bundled model: docs/benchmarks.md
# ("Fields of view that end inside the vertebra").
#
# Usage (repository root, developer checkout beside ../shared/data):
#   bash export/recipes/view-cut.sh                  # both variants, then the reformat bench with each
# Environment: WORK (data + runs, default /work/data), DEVICE (auto), MINUTES (wall-time cap per run, default 40).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/work/data}
DEVICE=${DEVICE:-auto}
RUNS=$WORK/runs/view-cut
ROUND5=algorithm/models/outline.onnx
[ -d "$WORK/synth2-train/rawdata" ] || python -m export synth --out "$WORK/synth2-train" --cases 48 --seed 2000 --max-voxels 6000000
[ -d "$WORK/synth2-val/rawdata" ] || python -m export synth --out "$WORK/synth2-val" --cases 3 --seed 5000 --max-voxels 6000000
python -m export.real_cases --out "$WORK/real-train" --cases totalsegmentator-example tptbox-lumbar --copies 8
TRAINED_ON="the bundled outline model (round 5 of the segment stage: phantoms of 90d8624 + real-shape phantoms \
(export synth seeds 2000-2047) + real CTs totalsegmentator-example, tptbox-lumbar) fine-tuned 800 iterations more with \
fields of view ending inside the patch and sagittal rotations up to 40 degrees on the same data; unseen: \
verse-sub-verse014, totalsegmentator-aorta, every OpenKBP CT"
COMMON=(--data "$WORK/synth2-train" "$WORK/real-train" --val-data "$WORK/synth2-val" --val-cases 3 --batch-size 2
        --device "$DEVICE" --trained-on "$TRAINED_ON" --no-progress --init-from "$ROUND5" --lr 1e-3 --iterations 800
        --val-every 200 --rotate-deg 15 15 40 --view-cut-p 0.3 --max-minutes "${MINUTES:-40}")
python -m export train segment "${COMMON[@]}" --seed 6 --out "$RUNS/every-side"
python -m export train segment "${COMMON[@]}" --seed 7 --out "$RUNS/edges" --view-cut-sides left right superior inferior
for variant in every-side edges; do
  models=$RUNS/models-$variant
  mkdir -p "$models"
  cp algorithm/models/*.onnx "$models/"
  python -m export onnx --checkpoint "$RUNS/$variant/last.pt" --out "$models/outline.onnx" \
    --version "0.1.0+segment.viewcut-$variant.it800"
  python bench/real.py --models "$models" --reformats --json "$RUNS/reformats-$variant.json"
done

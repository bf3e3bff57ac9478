#!/usr/bin/env bash
# Recipe: the chain-context labelling model algorithm/models/label.onnx (issue 22).
#
# Data: the VID Training split (../shared/data/vid-keypoints: 1,947 CTs' real U-Net detections and annotated
# levels; CC BY-SA 4.0, Buergin, Prevost, Stollenga, MICCAI 2023), Pancreas-CT left out (its levels sit one level
# above the anatomy, issue 22): 1,871 scans. Settings: export/label_context.py's defaults (2-layer bidirectional
# GRU, hidden 48, 40 epochs of augmented chains, seed 0; several SEEDS train one network each and export their
# ensemble), chosen by the patient-grouped 5-fold CV of
#   python bench/labelling_real.py --labeller learned        # (the decoder's baseline: --labeller decoder)
# The decoder's evidence weights and calibration written into the model's metadata come from the same CV.
# Training is resumable: the checkpoint beside this file (label-context-checkpoint/label.pt, with optimiser
# state; label-seedK.pt with several SEEDS) is rewritten after every epoch, and a run pointed at it continues
# from its epoch (a finished one just re-exports). About 2 minutes on an idle CPU core (16 on a shared one).
#
# Usage (from the repository root, in a developer checkout beside ../shared/data):
#   bash export/recipes/label-context.sh                  # OUT=algorithm/models/label.onnx
# Environment: DATA (the vid-keypoints folder), CHECKPOINT, SEEDS (default 0), OUT, EVIDENCE_WEIGHT,
# FIXED_EVIDENCE_WEIGHT, CALIBRATION ("A B"), NOTES.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/vid-keypoints}
CHECKPOINT=${CHECKPOINT:-export/recipes/label-context-checkpoint/label.pt}
OUT=${OUT:-algorithm/models/label.onnx}
EVIDENCE_WEIGHT=${EVIDENCE_WEIGHT:-1.0}
FIXED_EVIDENCE_WEIGHT=${FIXED_EVIDENCE_WEIGHT:-1.0}
CALIBRATION=${CALIBRATION:-1.0 0.0}
NOTES=${NOTES:-}
SEEDS=${SEEDS:-0}
# shellcheck disable=SC2086
python -m export label-context --data "$DATA" --exclude-source Pancreas-CT --checkpoint "$CHECKPOINT" --seeds "$SEEDS" \
    --onnx "$OUT" --evidence-weight "$EVIDENCE_WEIGHT" --fixed-evidence-weight "$FIXED_EVIDENCE_WEIGHT" \
    --calibration $CALIBRATION --notes "$NOTES"

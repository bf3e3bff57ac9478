#!/usr/bin/env bash
# Save what Grand Challenge's upload pages take:
#   out/<image>_<date>.tar.gz  the algorithm image (docker save | gzip)
#   out/model.tar.gz           the models, files at the archive's root: GC extracts it to
#                              /opt/ml/model/, which the algorithm prefers over its bundled copy
#
#   ./do_save.sh                      # image verse-gc-algorithm, models from algorithm/models
#   IMAGE=... MODELS=DIR OUT_DIR=... ./do_save.sh
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)"
IMAGE="${IMAGE:-verse-gc-algorithm}"
MODELS="${MODELS:-$SCRIPT_DIR/algorithm/models}"
OUT_DIR="${OUT_DIR:-$SCRIPT_DIR/out}"

fail() { echo "do_save: $*" >&2; exit 1; }

docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "image '$IMAGE' not found: build it first (./build.sh)"
for stage in detect locate segment; do
    [ -s "$MODELS/$stage.onnx" ] || fail "$MODELS/$stage.onnx is missing"
done
mkdir -p "$OUT_DIR"

image_file="$OUT_DIR/${IMAGE//[:\/]/_}_$(date +%Y%m%d_%H%M%S).tar.gz"
echo "=+= saving image $IMAGE -> $image_file"
docker save "$IMAGE" | gzip -c > "$image_file.partial"
mv "$image_file.partial" "$image_file"

members=(detect.onnx locate.onnx segment.onnx)
[ -f "$MODELS/sacrum.onnx" ] && members+=(sacrum.onnx)  # optional: the sacrum check (algorithm/sacrum.py)
[ -f "$MODELS/outline.onnx" ] && members+=(outline.onnx)  # optional: the candidates' outlines (algorithm/models.py)
[ -f "$MODELS/skull.onnx" ] && members+=(skull.onnx)  # optional: the skull base, C1's anchor (algorithm/skull.py)
[ -f "$MODELS/MODEL_CARD.md" ] && members+=(MODEL_CARD.md)
echo "=+= packing ${members[*]} -> $OUT_DIR/model.tar.gz"
tar --create --gzip --owner=0 --group=0 --numeric-owner --mode=a+rX \
    --file "$OUT_DIR/model.tar.gz.partial" --directory "$MODELS" "${members[@]}"
mv "$OUT_DIR/model.tar.gz.partial" "$OUT_DIR/model.tar.gz"

ls -lh "$image_file" "$OUT_DIR/model.tar.gz"

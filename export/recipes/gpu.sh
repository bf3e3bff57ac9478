#!/usr/bin/env bash
# The real-mix recipe (export/recipes/real-mix.sh) on a lent GPU machine (the `device` tool), in one call.
#
# That machine has PyTorch, ONNX, ONNX Runtime, SciPy and tqdm but no SimpleITK, cc3d or edt, and it cannot
# see ../shared. So, here first (a developer checkout beside ../shared, pip reaching PyPI):
#   bash export/recipes/gpu.sh prepare        # wheels into .whl/, real data + template cache into .gpu-data/
# then one device call, carrying both (about 40 MB):
#   run(command="bash export/recipes/gpu.sh train", carry=[".whl", ".gpu-data"], timeout_s=590)
# It trains locate/segment/detect at full iteration counts on CUDA for at most GPU_MINUTES (default 8) in all,
# exports ONNX (parity-checked) and writes models, logs and the real-CT table under $OUT (the device tool's
# output folder). Copy the models into algorithm/models only after bench/real.py here agrees.
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:-}
case "$step" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
  mkdir -p .whl .gpu-data/data .gpu-data/cache
  for pkg in SimpleITK connected-components-3d edt; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg"
  done
  shared=../shared/data
  for d in totalsegmentator-example tptbox-lumbar verse-sub-verse014 totalsegmentator-aorta; do
    cp -r "$shared/$d" .gpu-data/data/
  done
  mkdir -p .gpu-data/base-models  # the recipe's starting point (no git history travels)
  for stage in detect locate segment; do git show "90d8624:algorithm/models/$stage.onnx" > ".gpu-data/base-models/$stage.onnx"; done
  python3 -c "from export.synth_shapes import load_templates; load_templates()"  # fills the cache
  cp ~/.cache/verse-gc/vertebra-templates-*.npz .gpu-data/cache/
  du -sh .whl .gpu-data
  ;;
train)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD VERSE_GC_DATA=$PWD/.gpu-data/data VERSE_GC_CACHE=$PWD/.gpu-data/cache
  export PYTHONUNBUFFERED=1
  out=${OUT:-/tmp/out}
  mkdir -p "$out"
  minutes=${GPU_MINUTES:-8}
  mkdir -p /tmp/work && cp -r .gpu-data/base-models /tmp/work/
  # No VerSe masks travel: the synthesiser reads the template library prepared here.
  VERSE_GC_TEMPLATES=$(ls .gpu-data/cache/vertebra-templates-*.npz | head -n 1)
  export VERSE_GC_TEMPLATES
  # The GPU runs ~20x the CPU's iterations in its share of the minutes.
  WORK=/tmp/work DEVICE=cuda OUT="$out/models" ITERATIONS_SCALE=${ITERATIONS_SCALE:-10} \
    LOCATE_MINUTES=$(( minutes * 5 / 8 )) SEGMENT_MINUTES=$(( minutes * 2 / 8 )) \
    DETECT_MINUTES=$(( minutes - minutes * 7 / 8 )) \
    bash export/recipes/real-mix.sh 2>&1 | tee "$out/train.log"
  cp /tmp/work/runs/real-mix/*/history.jsonl "$out/" 2>/dev/null || true
  ;;
*)
  echo "usage: bash export/recipes/gpu.sh prepare|train" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# The real-mix recipe (export/recipes/real-mix.sh) on a lent GPU machine (the `device` tool), in one call.
#
# That machine has PyTorch, ONNX, ONNX Runtime, SciPy and tqdm but no SimpleITK, cc3d or edt, and it cannot
# see ../shared. So, here first (a developer checkout beside ../shared, pip reaching PyPI):
#   bash export/recipes/gpu.sh prepare        # wheels into .whl/, real data + template cache into .gpu-data/
# then two device calls back to back (SimpleITK's wheel, ~50 MiB, and the data do not fit the 64 MiB of one call; the
# installed packages stay in .site/, an ignored folder the warm machine keeps between calls):
#   run(command="bash export/recipes/gpu.sh install", carry=[".whl"], timeout_s=120)
#   run(command="bash export/recipes/gpu.sh train", carry=[".gpu-data"], timeout_s=590)
# It trains locate/segment/detect at full iteration counts on CUDA for about GPU_MINUTES (default 4) plus eight later
# rounds of half a minute each (second rounds, augmentation, tilt, sacrum, thick slices): about 8 minutes of training and
# one of exports and data, inside the call's 590 s,
# exports ONNX (parity-checked) and writes models and logs under $OUT (the device tool's output folder); the
# real-CT table is then made here with bench/real.py --models (the unseen cases do not travel). Copy the models into algorithm/models only after bench/real.py here agrees.
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:-}
case "$step" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
  grep -qx '/.site/' .git/info/exclude 2>/dev/null || echo '/.site/' >> .git/info/exclude
  mkdir -p .whl .gpu-data/data .gpu-data/cache
  # SimpleITK (~50 MiB) travels alone in the first call; cc3d and edt ride with the data in the second.
  mkdir -p .gpu-data/whl
  for pkg in SimpleITK connected-components-3d edt; do
    dest=.gpu-data/whl; [ "$pkg" = SimpleITK ] && dest=.whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" "$pkg"
  done
  shared=../shared/data
  cp -r "$shared/tptbox-lumbar" .gpu-data/data/  # the example is in the repository; the unseen cases stay here
  mkdir -p .gpu-data/base-models  # the recipe's starting point (no git history travels)
  for stage in detect locate segment; do git show "90d8624:algorithm/models/$stage.onnx" > ".gpu-data/base-models/$stage.onnx"; done
  library=$(python3 -c "from export.real_cases import shared_data_dir as d; from export.synth_shapes import \
load_templates, _cache_file; load_templates(); print(_cache_file(d()))")
  cp "$library" .gpu-data/cache/
  du -sh .whl .gpu-data
  ;;
install)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl
  PYTHONPATH=.site python3 -c "import SimpleITK; print('installed SimpleITK', SimpleITK.Version_VersionString())"
  ;;
train)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .gpu-data/whl/*.whl
  export PYTHONPATH=$PWD/.site:$PWD VERSE_GC_DATA=$PWD/.gpu-data/data VERSE_GC_CACHE=$PWD/.gpu-data/cache
  export PYTHONUNBUFFERED=1
  out=${OUT:-/tmp/out}
  mkdir -p "$out"
  minutes=${GPU_MINUTES:-4}
  mkdir -p /tmp/work && cp -r .gpu-data/base-models /tmp/work/
  # No VerSe masks travel: the synthesiser reads the template library prepared here.
  VERSE_GC_TEMPLATES=$(ls .gpu-data/cache/vertebra-templates-*.npz | head -n 1)
  export VERSE_GC_TEMPLATES
  # The GPU runs ~20x the CPU's iterations in its share of the minutes.
  WORK=/tmp/work DEVICE=${DEVICE:-cuda} OUT="$out/models" ITERATIONS_SCALE=${ITERATIONS_SCALE:-10} \
    LOCATE_MINUTES=$(( minutes * 5 / 8 )) SEGMENT_MINUTES=$(( minutes * 2 / 8 )) \
    DETECT_MINUTES=$(( minutes - minutes * 7 / 8 )) LOCATE2_MINUTES=0.5 SEGMENT2_MINUTES=0.5 LOCATE3_MINUTES=0.5 \
    SEGMENT3_MINUTES=0.5 SEGMENT4_MINUTES=0.5 SEGMENT5_MINUTES=0.5 SACRUM_MINUTES=0.5 SEGMENT6_MINUTES=0.5 \
    bash export/recipes/real-mix.sh 2>&1 | tee "$out/train.log"
  cp /tmp/work/runs/real-mix/*/history.jsonl "$out/" 2>/dev/null || true
  ;;
*)
  echo "usage: bash export/recipes/gpu.sh prepare|install|train" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Build the Grand Challenge images: verse-gc-evaluation and verse-gc-algorithm.
#   ./build.sh                 # both
#   ./build.sh evaluation      # one of them
#   API_METHOD=invoke ./build.sh algorithm
# Builds use the host network (pip needs PyPI); containers themselves run with none.
set -euo pipefail
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(evaluation algorithm)
for target in "${targets[@]}"; do
  case "$target" in
    evaluation|algorithm) ;;
    *) echo "build.sh: unknown target '$target' (evaluation or algorithm)" >&2; exit 2 ;;
  esac
  echo "build.sh: building verse-gc-$target" >&2
  docker build --network host --target "$target" \
    --build-arg "API_METHOD=${API_METHOD:-exec}" \
    --build-arg "VERSE_GC_COMMIT=$(git rev-parse HEAD 2>/dev/null || true)" \
    -t "verse-gc-$target" .
done

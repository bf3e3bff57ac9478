#!/usr/bin/env bash
# Run the built algorithm image locally the way Grand Challenge runs it, then check its outputs.
#
#   ./do_test_run.sh              # examples/totalsegmentator-example (one CT)
#   ./do_test_run.sh DIR          # DIR in GC layout (inputs.json and/or images/ct/<file>),
#                                 # or a folder of CT files (each run as its own case)
#
# Environment: IMAGE (verse-gc-algorithm), MEMORY (8g), OUTPUT_DIR (out/do_test_run).
# GC's flags: no network, /input read-only, only /output and /tmp writable (read-only root
# file system, a throw-away volume on /tmp), no capabilities, no privilege escalation, a
# pids limit, a memory limit, and `--gpus all` only when nvidia-smi works here.
# An image labelled org.grand-challenge.api-method=invoke is started as a server and driven
# through GET /health and POST /invoke from inside the container (the network is off).
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)"
IMAGE="${IMAGE:-verse-gc-algorithm}"
MEMORY="${MEMORY:-8g}"
SOURCE="$(realpath "${1:-$SCRIPT_DIR/examples/totalsegmentator-example}")"
OUTPUT_ROOT="${OUTPUT_DIR:-$SCRIPT_DIR/out/do_test_run}"
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/verse-gc-test-run.XXXXXX")"
NOOP_VOLUME="verse-gc-test-run-tmp-$$"

fail() { echo "do_test_run: $*" >&2; exit 1; }

docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "image '$IMAGE' not found: build it first (./build.sh)"
[ -d "$SOURCE" ] || fail "$SOURCE: no such folder"

GPU_FLAGS=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    GPU_FLAGS=(--gpus all)
    echo "=+= GPU found: running with --gpus all"
else
    echo "=+= no working nvidia-smi: running on the CPU"
fi
API_METHOD="$(docker image inspect --format '{{ index .Config.Labels "org.grand-challenge.api-method" }}' "$IMAGE" \
    2>/dev/null || true)"
API_METHOD="${API_METHOD:-exec}"

cleanup() {
    # Outputs belong to the container's user: make them readable and removable here.
    docker run --rm --quiet --user root --volume "$OUTPUT_ROOT":/output --entrypoint /bin/sh "$IMAGE" \
        -c "chmod -R a+rwX /output" >/dev/null 2>&1 || true
    docker volume rm "$NOOP_VOLUME" >/dev/null 2>&1 || true
    rm -rf "$STAGE"
}
trap cleanup EXIT

# --- the cases, each as a folder in GC layout ---------------------------------------------
CASES=()
if [ -f "$SOURCE/inputs.json" ] || [ -d "$SOURCE/images" ]; then
    CASES+=("$SOURCE")
else
    shopt -s nullglob nocaseglob
    for ct in "$SOURCE"/*.mha "$SOURCE"/*.nii.gz "$SOURCE"/*.nii "$SOURCE"/*.nrrd "$SOURCE"/*.tif "$SOURCE"/*.tiff; do
        case "$(basename "$ct")" in *_msk.*|*_seg-*) continue ;; esac
        name="$(basename "$ct")"
        case_dir="$STAGE/${name%%.*}"
        mkdir -p "$case_dir/images/ct"
        cp "$ct" "$case_dir/images/ct/$name"
        cat > "$case_dir/inputs.json" <<JSON
[{"socket": {"slug": "ct-image", "kind": "Image", "super_kind": "Image", "relative_path": "images/ct"},
  "image": {"name": "$name"}, "file": null, "value": null}]
JSON
        CASES+=("$case_dir")
    done
    shopt -u nullglob nocaseglob
fi
[ "${#CASES[@]}" -gt 0 ] || fail "$SOURCE: no CT image and no GC layout (inputs.json, images/ct/)"
chmod -R a+rX "$STAGE" "${CASES[@]}"

mkdir -p "$OUTPUT_ROOT"
chmod a+rwx "$OUTPUT_ROOT"
docker volume create "$NOOP_VOLUME" >/dev/null

run_flags() {  # $1: input folder, $2: output folder
    echo --rm --network none --read-only --cap-drop=ALL --security-opt=no-new-privileges \
        --pids-limit 256 --memory "$MEMORY" --memory-swap "$MEMORY" \
        --volume "$1":/input:ro --volume "$2":/output --volume "$NOOP_VOLUME":/tmp
}

check_outputs() {  # $1: output folder
    local seg="$1/images/vertebrae-segmentation/output.mha" points="$1/vertebrae-centroids.json"
    [ -s "$seg" ] || fail "missing $seg"
    [ -s "$points" ] || fail "missing $points"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$points" <<'PY' || fail "$points is not a Multiple points document"
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["type"] == "Multiple points" and isinstance(doc["points"], list)
names = ", ".join(p["name"] for p in doc["points"]) or "none"
print(f"=+= {len(doc['points'])} vertebra centroids: {names}")
PY
    fi
    echo "=+= outputs in $1:"
    (cd "$1" && find . -type f | sort)
}

for case_dir in "${CASES[@]}"; do
    out="$OUTPUT_ROOT/$(basename "$case_dir")"
    rm -rf "$out" 2>/dev/null || true
    mkdir -p "$out"
    chmod a+rwx "$out"
    echo "=+= case $case_dir -> $out ($API_METHOD mode)"
    # shellcheck disable=SC2046
    if [ "$API_METHOD" = "invoke" ]; then
        name="verse-gc-test-run-$$"
        docker run --detach --name "$name" $(run_flags "$case_dir" "$out") "${GPU_FLAGS[@]}" "$IMAGE" >/dev/null
        status=0
        docker exec -i "$name" python - <<'PY' || status=$?
import json, time, urllib.error, urllib.request
base = "http://127.0.0.1:4743"
for _ in range(600):
    try:
        if urllib.request.urlopen(base + "/health", timeout=5).status == 200:
            break
    except (urllib.error.URLError, OSError):
        time.sleep(0.5)
else:
    raise SystemExit("server never became healthy")
request = urllib.request.Request(base + "/invoke", data=b"{}", method="POST")
with urllib.request.urlopen(request, timeout=1800) as response:
    print("=+= POST /invoke:", response.status, response.read().decode())
    raise SystemExit(0 if response.status == 201 else 1)
PY
        docker logs "$name" 2>&1 | tail -n 20
        docker stop "$name" >/dev/null 2>&1 || true
        [ "$status" -eq 0 ] || fail "invoke failed for $case_dir"
    else
        docker run $(run_flags "$case_dir" "$out") "${GPU_FLAGS[@]}" "$IMAGE" || fail "the container failed on $case_dir"
    fi
    check_outputs "$out"
done
echo "=+= all ${#CASES[@]} case(s) passed"

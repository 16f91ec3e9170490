#!/usr/bin/env bash
# `make serve`: archives if missing or built from other checkpoints, TorchServe in the background,
# the galaxy-ensemble workflow, the dashboard (when dashboard/app.py exists); prints URLs and the key
# file. Running it again while everything runs only says so. `make stop` (scripts/stop.sh) stops it.
#
#   scripts/serve.sh            # RUN=checkpoints/demo (the shipped demo models) by default;
#                               # ports from TS_*_PORT (8080/8081/8082)
#   DEVICE=cuda scripts/serve.sh   # GPU serving settings (torchserve_ops/archive.py DEVICE_CONFIG)
#   TTA=1 scripts/serve.sh         # every answer the mean over the 8 flips/quarter turns
#   RUNTIME=torch scripts/serve.sh # PyTorch eager instead of the device's default (onnx on a CPU)
#
# Logs and the pid file go to logs/; key_file.json (the API tokens) to the repository root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
RUN="${RUN:-checkpoints/demo}"
DEVICE="${DEVICE:-cpu}"
TTA="${TTA:-}"
RUNTIME="${RUNTIME:-}"
STORE="$ROOT/model_store"
mkdir -p logs "$STORE"

if "$PY" -m torchserve_ops.server status >/dev/null 2>&1; then
    echo "TorchServe is already running: $("$PY" -m torchserve_ops.server status) (make stop first to serve other checkpoints or options)"
else
    models=()  # every checkpoint folder in RUN (b0, b2, convnext...): one archive each, one workflow
    for ckpt in "$RUN"/*/model.pt; do
        [[ -f "$ckpt" ]] && models+=("$(basename "$(dirname "$ckpt")")")
    done
    if (( ${#models[@]} < 2 )); then
        echo "need two or more checkpoints in $RUN (RUN/M/model.pt), found ${#models[@]}: serve the shipped" \
             "demo models (RUN=checkpoints/demo), rebuild them (make demo-models), or train your own (make models)" >&2
        exit 2
    fi
    stale=0
    [[ -f "$STORE/galaxy-ensemble.war" ]] || stale=1
    for m in "${models[@]}"; do
        [[ -f "$STORE/galaxy-$m.mar" ]] || stale=1
    done
    options=(--device "$DEVICE")
    [[ -n "$TTA" && "$TTA" != 0 ]] && options+=(--tta)
    [[ -n "$RUNTIME" ]] && options+=(--runtime "$RUNTIME")
    # torchserve_ops.archive stamps the store with a digest of what it was built from: the checkpoint
    # folders, the run's reports and ensemble settings, the options and the shipped code
    model_list="$(IFS=,; echo "${models[*]}")"
    built_from="$("$PY" -m torchserve_ops.archive --run "$RUN" --models "$model_list" "${options[@]}" --print-built-from)"
    [[ "$(cat "$STORE/.built_from" 2>/dev/null)" == "$built_from" ]] || stale=1
    if (( stale )); then
        echo "building archives from $RUN (${options[*]})"
        "$PY" -m torchserve_ops.archive --run "$RUN" --store "$STORE" --models "$model_list" \
            "${options[@]}" $( [[ -n "${VERSION:-}" ]] && echo --version "$VERSION" )
    fi
    echo "starting TorchServe (log: logs/ts_log.log, logs/torchserve.out)"
    "$PY" -m torchserve_ops.server start --store "$STORE" --workdir "$ROOT"
fi

# The Classify page's "similar galaxies": an index over the real samples, embedded with RUN's models
# (seconds; rebuilt only when the checkpoints change).
"$PY" -m prediction.similarity build --run "$RUN" --if-stale \
    || echo "warning: no similarity index (the Classify page will not show similar galaxies)" >&2

if [[ -f dashboard/app.py && -x scripts/dashboard.sh ]]; then
    TS_KEY_FILE="$ROOT/key_file.json" scripts/dashboard.sh start
fi

cat <<MSG

Inference   http://127.0.0.1:${TS_INFERENCE_PORT:-8080}   (POST /predictions/galaxy-b0, /predictions/galaxy-b2, /wfpredict/galaxy-ensemble)
Management  http://127.0.0.1:${TS_MANAGEMENT_PORT:-8081}
Metrics     http://127.0.0.1:${TS_METRICS_PORT:-8082}/metrics
Tokens      $ROOT/key_file.json   (header "Authorization: Bearer <inference|management key>")
API guide   docs/api.md;  stop with: make stop
MSG

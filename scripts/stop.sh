#!/usr/bin/env bash
# `make stop`: stop the dashboard and TorchServe started by `make serve`; returns once stopped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

if [[ -x scripts/dashboard.sh ]]; then
    scripts/dashboard.sh stop || true
fi
"$PY" -m torchserve_ops.server stop --workdir "$ROOT"

#!/usr/bin/env bash
# Model versions on the running TorchServe (management key from ./key_file.json):
#
#   scripts/versions.sh list [galaxy-b0 galaxy-b2]
#   scripts/versions.sh register galaxy-b0-v2.0.mar      # a file in model_store/
#   scripts/versions.sh set-default galaxy-b0 2.0
#   scripts/versions.sh rollback galaxy-b0 [--to 1.0]
#   scripts/versions.sh promote 1.1                      # every model with 1.1, and the ensemble
#   scripts/versions.sh rollback --all                   # every model back one version, and the ensemble
#   scripts/versions.sh unregister galaxy-b0 2.0
#   scripts/versions.sh refresh-workflow                 # ensemble onto the current defaults
#
# make retrain builds and registers a new version from labels; or build one by hand: .venv/bin/python -m torchserve_ops.archive --run DIR --store model_store \
#     --models b0 --version 2.0 --versioned-name --no-workflow
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec "${PYTHON:-$ROOT/.venv/bin/python}" -m torchserve_ops.versions "$@"

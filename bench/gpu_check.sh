#!/usr/bin/env bash
# The GPU path in one command (<= 5 minutes on one GPU); see bench/gpu_check.py for the parts.
#   bash bench/gpu_check.sh --data /usr/share/datasets/fashion-mnist [--quick] [--steps N]
# Uses .venv/bin/python when the checkout has one, else python3 (a bare machine with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
exec "$PY" bench/gpu_check.py "$@"

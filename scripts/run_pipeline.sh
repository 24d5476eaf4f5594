#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the default pipeline with DVC:
# Fashion-MNIST on the CPU, prepare -> pretrain -> extract -> probe -> report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # dvc.yaml runs `python` and `torchrun` from the venv
start=$(date +%s)
.venv/bin/dvc repro "$@"
echo "==> pipeline finished in $(( $(date +%s) - start )) s; results table:"
cat results/results.md

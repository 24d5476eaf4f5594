#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the default pipeline with DVC:
# Fashion-MNIST on the CPU, prepare -> pretrain -> extract -> probe -> report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$(date +%s)
.venv/bin/dvc repro "$@"
echo "==> pipeline finished in $(( $(date +%s) - start )) s; results table:"
cat results/results.md

#!/usr/bin/env bash
# Set up a fresh machine: Debian's Fashion-MNIST (the default dataset), a virtual
# environment in .venv with PyTorch and the project (library, pipeline tools, test tools).
# Safe to re-run: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
      || echo "warning: could not install dataset-fashion-mnist; the pipeline needs it (tests do not)" >&2
  else
    echo "note: /usr/share/datasets/fashion-mnist is missing; run 'apt-get install dataset-fashion-mnist'" \
         "as root, or set root_path/download in params.yaml (tests do not need it)" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# PyTorch first and pinned: torchvision 0.29.1 needs exactly torch 2.14.1.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "==> installing torch 2.14.1 + torchvision 0.29.1"
  .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
fi
echo "==> installing jepa-pipeline with its pipeline and test extras"
.venv/bin/pip install -q --disable-pip-version-check -e '.[pipeline,test]' 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import jepa, dvc, prefect, hydra, moto, sklearn, xdist" \
  || { echo "error: the environment is incomplete; see the pip output above" >&2; exit 1; }

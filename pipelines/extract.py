"""Stage `extract`: frozen features of the pretrained encoder (`jepa.evaluate.extract`).

    python -m pipelines.extract --params params.yaml --encoder pretrain/encoder \
        --out features/pretrained

Writes `{train,test}_features.npy`, `{train,test}_labels.npy` and `features.json`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from jepa.config import load_params
from jepa.data import DatasetNotFoundError
from jepa.evaluate import extract
from pipelines.common import run_main

log = logging.getLogger("pipelines.extract")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--encoder", type=Path, required=True, help="exported encoder dir")
    parser.add_argument("--out", type=Path, required=True, help="feature directory")
    args = parser.parse_args()
    cfg, _ = load_params(args.params)
    meta = extract(cfg, args.encoder, args.out, kind="pretrained")
    shapes = {split: d["features_shape"] for split, d in meta["splits"].items()}
    log.info("features %s -> %s", shapes, args.out)


if __name__ == "__main__":
    run_main(main, DatasetNotFoundError)

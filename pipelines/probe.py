"""Stage `probe`: linear probe and k-NN on the pretrained features (`jepa.evaluate.probe`).

    python -m pipelines.probe --params params.yaml --features features/pretrained \
        --out eval/pretrained.json --metrics metrics/probe.json

`--out` gets the full record (protocol, per-class accuracy, extraction metadata);
`--metrics` the numbers that `dvc exp show` lists (`jepa.compare.probe_metrics`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from jepa.compare import probe_metrics
from jepa.config import load_params
from jepa.evaluate import probe
from jepa.io import write_json
from pipelines.common import run_main

log = logging.getLogger("pipelines.probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--features", type=Path, required=True, help="from the extract stage")
    parser.add_argument("--out", type=Path, required=True, help="full probe record (JSON)")
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics (JSON)")
    args = parser.parse_args()
    cfg, _ = load_params(args.params)
    metrics = probe(cfg, args.features, args.out)
    write_json(args.metrics, probe_metrics(metrics))
    log.info("linear top-1 %.4f, k-NN top-1 %.4f", metrics["top1"], metrics["knn_top1"])


if __name__ == "__main__":
    run_main(main)

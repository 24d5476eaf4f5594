"""Stage `baselines`: probes on raw pixels and on a random (untrained) encoder.

    python -m pipelines.baselines --params params.yaml --pixels eval/pixels.json \
        --random eval/random.json --metrics metrics/baselines.json

For each kind (`jepa.evaluate.extract(kind=...)` then `probe`), writes the full probe
record to the path given for it, and the headline numbers of both to `--metrics`. The
features go to a temporary directory and are deleted: they are cheap to recompute, and raw
pixels would be the largest files of the pipeline.
The stage depends on the data and architecture parameters only, never on the training
ones, so an `lr` experiment reuses it from the run cache.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from jepa.compare import probe_metrics
from jepa.config import load_params
from jepa.data import DatasetNotFoundError
from jepa.evaluate import extract, probe
from jepa.io import write_json
from pipelines.common import run_main

log = logging.getLogger("pipelines.baselines")
KINDS = ("pixels", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for kind in KINDS:
        parser.add_argument(f"--{kind}", type=Path, required=True, help=f"{kind} probe record")
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics (JSON)")
    args = parser.parse_args()
    cfg, _ = load_params(args.params)
    results = {}
    for kind in KINDS:
        with tempfile.TemporaryDirectory(prefix=f"features-{kind}-") as tmp:
            extract(cfg, None, Path(tmp), kind=kind)
            results[kind] = probe(cfg, Path(tmp), getattr(args, kind))
        log.info("%s: linear top-1 %.4f, k-NN top-1 %.4f", kind, results[kind]["top1"],
                 results[kind]["knn_top1"])  # fmt: skip
    write_json(args.metrics, {kind: probe_metrics(m) for kind, m in results.items()})


if __name__ == "__main__":
    run_main(main, DatasetNotFoundError)

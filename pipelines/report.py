"""Stage `report`: the results table (`jepa.evaluate.write_results`, `jepa.report`).

    python -m pipelines.report --pretrained eval/pretrained.json --pixels eval/pixels.json \
        --random eval/random.json --run pretrain --out results

Reads the three probe records and the training run's `summary.json` and `metrics.jsonl`
(the loss curve; `jepa.train`'s layout under `--run`); writes `results.md`, `results.csv`
and `results.png` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from jepa.evaluate import KINDS, write_results
from pipelines.common import run_main

log = logging.getLogger("pipelines.report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind in KINDS:
        parser.add_argument(f"--{kind}", type=Path, required=True, help=f"{kind} probe record")
    parser.add_argument("--run", type=Path, required=True, help="pretraining output_dir")
    parser.add_argument("--out", type=Path, required=True, help="directory for results.*")
    args = parser.parse_args()
    results = {kind: json.loads(getattr(args, kind).read_text()) for kind in KINDS}
    summary = json.loads((args.run / "summary.json").read_text())
    paths = write_results(results, args.out, summary=summary, run_dir=args.run)
    log.info("wrote %s", ", ".join(paths.values()))


if __name__ == "__main__":
    run_main(main)

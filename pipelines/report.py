"""Stage `report`: the results table (`jepa.report.write_results`).

    python -m pipelines.report --pretrained eval/pretrained.json --pixels eval/pixels.json \
        --random eval/random.json --run pretrain --out results

Reads the three probe records and the training run's `summary.json` and `metrics.jsonl`
(the loss curve; `jepa.runs.RunFiles` under `--run`); writes `results.md`, `results.csv`
and `results.png` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from jepa.evaluate import KINDS
from jepa.report import write_results
from jepa.runs import RunFiles
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
    run = RunFiles(args.run)
    paths = write_results(results, args.out, summary=run.read_summary(), run=run)
    log.info("wrote %s", ", ".join(paths.values()))


if __name__ == "__main__":
    run_main(main)

"""Stage `pretrain`: I-JEPA pretraining (`jepa.train.pretrain`), under torchrun.

    python -m pipelines.torchrun --params params.yaml -m pipelines.pretrain \
        --params params.yaml --manifest data/manifest.json --out pretrain \
        --live pretrain/dvclive --metrics metrics/train.json

Writes under `--out` what `pretrain` writes (`encoder/`, `metrics.jsonl`, `summary.json`),
dvclive plots under `--live`, and to `--metrics` the summary's numbers that `dvc exp show`
lists (`jepa.compare.training_metrics`).

In-progress state (the checkpoint) lives in the run store (`run_store`, default the user
cache), in a directory keyed by the training config's hash and the data manifest's SHA-256
(`jepa.runs.run_store_dir`): outside DVC's outputs and outside the work tree, so neither
`dvc exp run` restoring the workspace nor a queued experiment's temporary copy can touch
it, and rerunning an interrupted experiment resumes it (`jepa.runs.decide_resume`; the
step log and plots are rebuilt from the checkpoint). A finished run's state directory is
removed: the exported encoder is the result.

Before training, the data on disk is checked against the manifest (`jepa.prepare.verify_manifest`):
files that vanished or changed since `prepare` ran fail the stage, naming them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from jepa.checkpoint import CheckpointError
from jepa.compare import training_metrics
from jepa.config import load_params
from jepa.data import DatasetNotFoundError
from jepa.io import DiskFullError, write_json
from jepa.live import LiveLogger
from jepa.prepare import DatasetCheckError, sha256_file, verify_manifest
from jepa.runs import RunLockedError, run_store_dir
from jepa.storage import StorageError
from jepa.train import pretrain
from pipelines.common import run_main

log = logging.getLogger("pipelines.pretrain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--manifest", type=Path, required=True, help="from the prepare stage")
    parser.add_argument("--out", type=Path, required=True, help="training output_dir")
    parser.add_argument("--live", type=Path, required=True, help="dvclive directory")
    parser.add_argument("--metrics", type=Path, required=True, help="what dvc exp show lists")
    args = parser.parse_args()
    cfg, _ = load_params(args.params)
    cfg = cfg.replace(output_dir=str(args.out))
    verify_manifest(cfg, args.manifest)
    state_dir = run_store_dir(cfg.run_store, cfg.training_hash(), sha256_file(args.manifest))
    with LiveLogger(args.live) as live:
        summary = pretrain(cfg, loggers=[live], state_dir=state_dir)
    if os.environ.get("RANK", "0") == "0":
        write_json(args.metrics, training_metrics(summary))
        if summary["steps"] >= summary["total_steps"]:
            shutil.rmtree(state_dir, ignore_errors=True)
        log.info("pretrained %d steps in %.0fs", summary["steps"], summary["wall_time_s"])


if __name__ == "__main__":
    run_main(
        main,
        DatasetNotFoundError,
        DatasetCheckError,
        RunLockedError,
        CheckpointError,
        DiskFullError,
        StorageError,
    )

"""Stage `pretrain`: I-JEPA pretraining (`jepa.train.pretrain`), under torchrun.

    torchrun --standalone --nproc_per_node N -m pipelines.pretrain --params params.yaml \
        --manifest data/manifest.json --out pretrain --live pretrain/dvclive

Writes under `--out` what `pretrain` writes (`encoder/`, `checkpoints/`, `metrics.jsonl`,
`summary.json`) and dvclive plots under `--live`.

Resume or start fresh? dvc.yaml keeps `checkpoints/`, `metrics.jsonl` and the dvclive
directory between runs (`persist: true`), so an interrupted run continues where it
stopped. They may as well hold another experiment's state, or a finished run's. The
stage therefore records in `checkpoints/run.json` what the checkpoint belongs to (the
training config hash and the data manifest's SHA-256) and whether the run finished, and
resumes only an unfinished run of the same config on the same data. Anything else is
moved out of the way (logged with the reason) and training starts at step 0 with
`resume: false`, so the library's config-hash guard never sees a foreign checkpoint.
A finished run's checkpoint is deleted: the exported encoder is the result, and the
stage reruns a finished config only when code or data changed, which must not resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from jepa.config import JEPAConfig
from jepa.data import DatasetNotFoundError
from jepa.io import write_json
from jepa.live import LiveLogger
from jepa.prepare import sha256_file
from jepa.storage import CheckpointMirror
from jepa.train import output_paths, pretrain
from pipelines.common import load_params, run_main

log = logging.getLogger("pipelines.pretrain")
RUN_STATE = "run.json"


def run_identity(cfg: JEPAConfig, manifest: Path) -> dict[str, str]:
    """What a checkpoint must match to be resumed: training config and data."""
    return {"config_hash": cfg.training_hash(), "manifest_sha256": sha256_file(manifest)}


def resume_decision(cfg: JEPAConfig, identity: dict[str, str]) -> tuple[bool, str]:
    """`(resume?, why)` for the state left in `cfg.output_dir` by an earlier run."""
    checkpoint = output_paths(cfg)["checkpoint"]
    state_file = checkpoint.parent / RUN_STATE
    if not cfg.resume:
        return False, "resume is false"
    if not checkpoint.exists():
        return _mirror_decision(cfg, identity)
    if not state_file.is_file():
        return False, f"{checkpoint} has no {RUN_STATE}: not written by this stage"
    state = json.loads(state_file.read_text())
    if state.get("finished"):
        return False, "the previous run finished; rerunning because code, data or outputs changed"
    for key, value in identity.items():
        if state.get(key) != value:
            return False, f"{checkpoint} belongs to another run ({key} {state.get(key)} != {value})"
    return True, f"unfinished run of the same config (hash {identity['config_hash']})"


def _mirror_decision(cfg: JEPAConfig, identity: dict[str, str]) -> tuple[bool, str]:
    """No local checkpoint: resume from the S3 mirror when it holds this config's run
    (a job restarted on another node); the library pulls it."""
    if cfg.checkpoint_uri is None:
        return False, "no checkpoint"
    latest = CheckpointMirror(cfg.checkpoint_uri).latest()
    if latest is None:
        return False, f"no checkpoint, locally or under {cfg.checkpoint_uri}"
    if latest.get("config_hash") != identity["config_hash"]:
        return (
            False,
            f"{cfg.checkpoint_uri} holds another config's run ({latest.get('config_hash')})",
        )
    return True, f"resuming from {cfg.checkpoint_uri} at step {latest['step']}"


def clear_previous_run(cfg: JEPAConfig, live_dir: Path) -> None:
    """Remove a previous run's checkpoints, step log and dvclive files (rank 0 only).

    They stay in the DVC cache of the experiment that produced them.
    """
    paths = output_paths(cfg)
    shutil.rmtree(paths["checkpoint"].parent, ignore_errors=True)
    paths["metrics"].unlink(missing_ok=True)
    shutil.rmtree(live_dir, ignore_errors=True)


def mark_run(cfg: JEPAConfig, identity: dict[str, str], *, finished: bool) -> None:
    checkpoint = output_paths(cfg)["checkpoint"]
    write_json(checkpoint.parent / RUN_STATE, {**identity, "finished": finished})
    if finished:
        checkpoint.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--manifest", type=Path, required=True, help="from the prepare stage")
    parser.add_argument("--out", type=Path, required=True, help="training output_dir")
    parser.add_argument("--live", type=Path, required=True, help="dvclive directory")
    args = parser.parse_args()
    cfg, _ = load_params(args.params)
    cfg = cfg.replace(output_dir=str(args.out))
    is_main = os.environ.get("RANK", "0") == "0"
    identity = run_identity(cfg, args.manifest)
    resume, why = resume_decision(cfg, identity)
    if resume:
        log.info("resuming: %s", why)
    else:
        # Every rank decides alike from the same files; only rank 0 deletes, and no rank
        # reads a checkpoint because resume is off.
        log.info("starting at step 0: %s", why)
        cfg = cfg.replace(resume=False)
        if is_main:
            clear_previous_run(cfg, args.live)
    if is_main:
        mark_run(cfg, identity, finished=False)
    with LiveLogger(args.live) as live:
        summary = pretrain(cfg, loggers=[live])
    if is_main:
        mark_run(cfg, identity, finished=summary["steps"] >= summary["total_steps"])
        log.info("pretrained %d steps in %.0fs", summary["steps"], summary["wall_time_s"])


if __name__ == "__main__":
    run_main(main, DatasetNotFoundError)

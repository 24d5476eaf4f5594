"""I-JEPA pretraining: one training step, one epoch, the whole run.

`pretrain(cfg)` is the library's entry point; `python -m jepa.train` and torchrun
call it through `main()`. Every rank runs the same code; rank 0 alone writes files.
The learning algorithm itself (networks, loss, EMA, parameter groups) is
`jepa.models.IJEPA`; this module drives it over the data.

Resume is exact at optimizer-step granularity: schedules are pure functions of the
global step, masks and crops are pure functions of (seed, epoch, sample index), the
sampler order is a function of (seed, epoch), and the checkpoint carries the model,
optimizer and RNG states and the rows logged so far. A resumed run skips the batches it
already trained on. Whether to resume is `jepa.runs.decide_resume`'s call.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from jepa import checkpoint as ckpt
from jepa import schedules
from jepa.config import JEPAConfig
from jepa.data import PretrainLoader, build_pretrain_loader, pretrain_dataset
from jepa.device import autocast
from jepa.diagnostics import CollapseMonitor, collapse_stats
from jepa.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    value_range,
)
from jepa.export import export_encoder
from jepa.io import DiskFullError, write_json
from jepa.masks import MaskedBatch, build_collator
from jepa.models import IJEPA
from jepa.monitor import KnnMonitor
from jepa.runs import RunFiles, RunLock, decide_resume

log = logging.getLogger("jepa.train")

StepLogger = Callable[[dict], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before saving anything from that step."""


# --------------------------------------------------------------------------- schedules


@dataclass
class Schedule:
    """All per-step hyperparameters, from the global step."""

    cfg: JEPAConfig
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return max(self.cfg.epochs * self.steps_per_epoch, 1)

    def at(self, step: int) -> dict[str, float]:
        c, total = self.cfg, self.total_steps
        warmup = int(round(c.warmup_epochs * self.steps_per_epoch))
        return {
            "lr": schedules.warmup_cosine_lr(
                step,
                warmup_steps=warmup,
                total_steps=total,
                start_lr=c.start_lr,
                lr=c.lr,
                min_lr=c.min_lr,
            ),
            "wd": schedules.weight_decay(step, total, c.weight_decay, c.final_weight_decay),
            "momentum": schedules.ema_momentum(step, total, c.ema[0], c.ema[1], c.ema_schedule),
        }


# --------------------------------------------------------------------------- one step


def build_optimizer(cfg: JEPAConfig, model: IJEPA, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's two parameter groups; lr and weight decay are set per step.

    The fused kernel on the CPU too: one pass over the parameters instead of torch's
    per-tensor loop, the same update up to rounding (timed in `bench/input_path.py`).
    """
    return torch.optim.AdamW(
        model.param_groups(),
        weight_decay=cfg.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )


def set_hyperparams(optimizer: torch.optim.Optimizer, hp: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = hp["lr"]
        if group.get("apply_wd"):
            group["weight_decay"] = hp["wd"]


def to_device(batch: MaskedBatch, device: torch.device) -> MaskedBatch:
    nb = device.type == "cuda"
    return batch._replace(
        images=batch.images.to(device, non_blocking=nb),
        masks_enc=[m.to(device, non_blocking=nb) for m in batch.masks_enc],
        masks_pred=[m.to(device, non_blocking=nb) for m in batch.masks_pred],
    )


def train_step(
    cfg: JEPAConfig,
    model: IJEPA,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[MaskedBatch],
    hp: dict[str, float],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of I-JEPA over `accum_iter` micro-batches.

    For each micro-batch: predict the target blocks' embeddings from the context block
    and regress the target encoder's; then clip, step, and move the target encoder
    towards the context encoder by EMA. Returns the mean loss (a 0-d tensor, not yet
    synchronised across ranks) and the last micro-batch's predictions.
    """
    set_hyperparams(optimizer, hp)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        with model.no_sync(i < len(batches) - 1), autocast(cfg.amp, device):
            loss, predictions = model(batch.images, batch.masks_enc, batch.masks_pred)
        (loss / len(batches)).backward()
        total += loss.detach() / len(batches)
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable()], cfg.clip_grad)
    optimizer.step()
    model.update_target(hp["momentum"])
    return total, predictions


# --------------------------------------------------------------------------- bookkeeping


class RunLog:
    """Rank 0's step log: `metrics.jsonl`, the rows kept for the checkpoint, extra loggers."""

    def __init__(self, path: Path | None, loggers: Sequence[StepLogger] = ()) -> None:
        self.path, self.loggers = path, loggers
        self.rows: list[dict] = []

    def start(self, rows: Sequence[dict]) -> None:
        """Begin with the rows a resumed checkpoint logged so far ([] for a fresh run):
        `metrics.jsonl` is rewritten from them and they are replayed to the loggers, so
        nothing a crashed run logged after its last checkpoint survives."""
        if self.path is None:
            return
        self.rows = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        for row in rows:
            self.write(row)

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        for logger in self.loggers:
            logger(row)


@dataclass
class Run:
    """What one pretraining run works with, and where it stands."""

    cfg: JEPAConfig
    env: DistEnv
    files: RunFiles
    model: IJEPA
    optimizer: torch.optim.Optimizer
    data: PretrainLoader
    log: RunLog
    mirror: object | None  # jepa.storage.CheckpointMirror on rank 0 when configured
    uploader: object | None  # jepa.storage.CheckpointUploader to `mirror`, on rank 0
    knn: KnnMonitor | None  # rank 0's online kNN monitor, when configured
    step: int = 0
    images_seen: int = 0
    last_loss: float = math.nan
    start_time: float = field(default_factory=time.perf_counter)
    monitor: CollapseMonitor = field(default_factory=CollapseMonitor)
    # The latest loss and whether any loss since the last read was non-finite, both still
    # on the device: reading them waits for the device, so it happens only every few steps.
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    last_read_step: int = 0
    monitor_s: float = 0.0  # seconds this process spent in the kNN monitor

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.cfg, self.data.steps_per_epoch)
        self.last_read_step = self.step

    def watch_loss(self, loss: torch.Tensor) -> None:
        """Keep `loss` (0-d, on the device) for the next read, without synchronising."""
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        self.pending = (loss, bad if self.pending is None else self.pending[1] | bad)

    def read_loss(self) -> float:
        """The latest loss, averaged over ranks (every rank must call this at the same step).

        Raises `NonFiniteLossError` if any loss since the last read was NaN or infinite, so
        training stops before a checkpoint from those steps is written.
        """
        loss, bad = self.pending
        self.pending = None
        value, any_bad = all_reduce_mean(torch.stack([loss.float(), bad.float()])).tolist()
        since, self.last_read_step = self.last_read_step, self.step
        if any_bad > 0:
            when = (
                f"at step {self.step}"
                if not math.isfinite(value)
                else (f"between step {since + 1} and step {self.step}")
            )
            raise NonFiniteLossError(
                f"the loss became non-finite {when}; stopping. The last good checkpoint is "
                f"{self.files.checkpoint}. Try a lower lr, clip_grad, or amp: none."
            )
        self.last_loss = value
        return value

    def reads_loss(self) -> bool:
        """Whether this step logs, checks or checkpoints, and so reads the loss."""
        step, cfg = self.step, self.cfg
        every = (cfg.log_every, cfg.diagnostics_every, cfg.checkpoint_every)
        every += (self.data.steps_per_epoch,)
        return step == 1 or step == self.last_step or any(step % n == 0 for n in every)

    @property
    def epoch(self) -> int:
        """Epochs completed (the epoch under way, counting from 0)."""
        return self.step // self.data.steps_per_epoch

    @property
    def last_step(self) -> int:
        total = self.schedule.total_steps
        return total if self.cfg.max_steps is None else min(self.cfg.max_steps, total)


def build_mirror(cfg: JEPAConfig):
    if cfg.checkpoint_uri is None:
        return None
    from jepa.storage import CheckpointMirror

    return CheckpointMirror(cfg.checkpoint_uri)


def build_uploader(mirror, files: RunFiles):
    """The background uploader of the checkpoints to `mirror` (None without one)."""
    if mirror is None:
        return None
    from jepa.storage import CheckpointUploader

    return CheckpointUploader(mirror, files.checkpoint.parent)


def start_run(
    cfg: JEPAConfig, env: DistEnv, loggers: Sequence[StepLogger], state_dir: Path | None
) -> Run:
    """Data, model, optimizer and log of a run, resumed from its checkpoint when there is one."""
    collator = build_collator(cfg)
    data = build_pretrain_loader(
        cfg,
        pretrain_dataset(cfg),
        collator,
        rank=env.rank,
        world_size=env.world_size,
        pin_memory=env.device.type == "cuda",
    )
    model = IJEPA.from_config(cfg).to(env.device)
    model.wrap(distributed=env.is_distributed, compile=cfg.compile)
    files = RunFiles(Path(cfg.output_dir), state_dir)
    mirror = build_mirror(cfg) if env.is_main else None
    run = Run(
        cfg,
        env,
        files,
        model,
        build_optimizer(cfg, model, env.device),
        data,
        RunLog(files.metrics if env.is_main else None, loggers),
        mirror,
        build_uploader(mirror, files),
        KnnMonitor.from_config(cfg) if env.is_main else None,
    )
    rows = restore(run)
    run.log.start(rows)
    if run.step == 0:
        measure_knn(run)  # the curve's first point: the encoder before training
    return run


def restore(run: Run) -> list[dict]:
    """Resume `run` from its checkpoint if `decide_resume` says so; the rows logged so far.

    Rank 0 decides first (it may pull the checkpoint from the S3 mirror); the other ranks
    then find the same file.
    """
    cfg, files = run.cfg, run.files
    decision = None
    if run.env.is_main:
        decision = decide_resume(
            files, resume=cfg.resume, config_hash=cfg.training_hash(), mirror=run.mirror
        )
    barrier()
    if not run.env.is_main:
        decision = decide_resume(files, resume=cfg.resume, config_hash=cfg.training_hash())
    state = None
    if decision.checkpoint is not None:
        state = ckpt.load_checkpoint(decision.checkpoint, cfg=cfg, map_location=run.env.device)
    check_same_start(int(state["step"]) if state else 0, files)
    if state is None:
        return []
    for name, network in run.model.networks().items():
        network.load_state_dict(state[name])
    run.optimizer.load_state_dict(state["optimizer"])
    ckpt.restore_rng_state(state["rng"])
    run.step = run.last_read_step = int(state["step"])
    log.info("resumed from %s at step %d (epoch %d)", decision.checkpoint, run.step, run.epoch)
    return list(state["extra"].get("log", []))


def check_same_start(step: int, files: RunFiles) -> None:
    """Fail on every rank if the ranks would start at different steps: a node whose state
    directory lacks the checkpoint that rank 0 resumes from would silently train apart."""
    first, last = value_range(step)
    if first != last:
        raise RuntimeError(
            f"the ranks found different checkpoints in their state directories (steps {first} "
            f"to {last}; this rank's {files.checkpoint} is at step {step}). On several nodes "
            f"the state directory (run_store) must be one volume that every node sees."
        )


def save_state(run: Run) -> None:
    """Rank 0 writes the checkpoint (atomically) and, when configured, hands it to the
    background uploader (`jepa.storage.CheckpointUploader`): training never waits for S3.

    Weights that went non-finite are never saved: the previous checkpoint stays the
    last good one.
    """
    path = run.files.checkpoint
    params = [p.detach() for _, p in run.model.trainable()]
    if not all(torch.isfinite(n) for n in torch._foreach_norm(params)):
        raise NonFiniteLossError(
            f"weights became non-finite at step {run.step}; not saving them. The last good "
            f"checkpoint is {path}. Try a lower lr, clip_grad, or amp: none."
        )
    try:
        ckpt.save_checkpoint(
            path,
            **run.model.networks(),
            optimizer=run.optimizer,
            step=run.step,
            epoch=run.epoch,
            cfg=run.cfg,
            rng=ckpt.capture_rng_state(),
            extra={"log": run.log.rows},
        )
    except DiskFullError as err:
        resume = "a rerun resumes from the last one saved" if path.exists() else "none saved yet"
        raise DiskFullError(f"checkpoint of step {run.step} not saved ({resume}): {err}") from err
    if run.uploader is not None:
        run.uploader.submit(
            path, step=run.step, epoch=run.epoch, config_hash=run.cfg.training_hash()
        )


# --------------------------------------------------------------------------- the run


def pretrain(
    cfg: JEPAConfig, *, loggers: Sequence[StepLogger] = (), state_dir: Path | None = None
) -> dict:
    """Pretrain an I-JEPA model as `cfg` says; return the run summary.

    Writes, on rank 0, under `cfg.output_dir` (`jepa.runs.RunFiles`): `metrics.jsonl`
    (one JSON row per logged step), `summary.json`, and `encoder/` (the target encoder
    as safetensors + its model arguments); the checkpoint `latest.pt` goes to
    `state_dir` (default `<output_dir>/checkpoints`).

    With `checkpoint_uri`, the last checkpoint's upload is awaited after the outputs are
    written, for at most `checkpoint_upload_timeout_s`; if it fails, `StorageError` names
    the endpoint, and a rerun resumes from the local checkpoint and uploads it again.
    """
    env = init_distributed(cfg.device)
    lock = RunLock(RunFiles(Path(cfg.output_dir), state_dir).checkpoint.parent)
    try:
        with lock if env.is_main else contextlib.nullcontext():
            run = start_run(cfg, env, loggers, state_dir)
            try:
                summary = train_to_the_end(run)
            finally:
                if run.uploader is not None:
                    run.uploader.close()
            barrier()
            return summary
    finally:
        cleanup_distributed()


def train_to_the_end(run: Run) -> dict:
    """Train from `run.step` to `run.last_step`; on rank 0, save, write the summary and
    await the last upload. Returns the summary ({} on other ranks)."""
    while run.step < run.last_step:
        run_epoch(run)
    if not run.env.is_main:
        return {}
    save_state(run)
    summary = write_summary(run)
    if run.uploader is not None:
        run.uploader.wait(run.cfg.checkpoint_upload_timeout_s)
    return summary


def run_epoch(run: Run) -> None:
    """Train from `run.step` to the end of its epoch (or `run.last_step`)."""
    cfg, spe = run.cfg, run.data.steps_per_epoch
    epoch = run.epoch
    run.data.start_epoch(epoch, skip_batches=(run.step - epoch * spe) * cfg.accum_iter)
    stop = min((epoch + 1) * spe, run.last_step)
    bar = tqdm(
        total=stop - run.step,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (run.env.is_main and cfg.progress),
        dynamic_ncols=True,
        leave=False,
    )
    batches = iter(run.data.loader)
    skipped = 0
    while run.step < stop:
        micro = list(itertools.islice(batches, cfg.accum_iter))
        if len(micro) < cfg.accum_iter:
            # Whole batches of unreadable images were left out and the epoch ran dry:
            # count its remaining steps as done so schedules stay aligned to epochs.
            warnings.warn(f"epoch {epoch + 1} ended {stop - run.step} step(s) early", stacklevel=2)
            run.step = stop
            break
        skipped += sum(b.num_skipped for b in micro)
        hp = run.schedule.at(run.step)
        loss, predictions = train_step(cfg, run.model, run.optimizer, micro, hp, run.env.device)
        run.step += 1
        run.images_seen += sum(b.images.size(0) for b in micro) * run.env.world_size
        bar.update(1)
        if record_step(run, micro[-1], loss, predictions, hp):
            ips = run.images_seen / max(time.perf_counter() - run.start_time, 1e-9)
            bar.set_postfix(loss=f"{run.last_loss:.4f}", lr=f"{hp['lr']:.2e}", img_s=f"{ips:.0f}")
        if run.env.is_main and run.step % cfg.checkpoint_every == 0:
            save_state(run)
        _crash_if_requested(run.step)
    bar.close()
    if run.pending is not None:  # the epoch ran dry between two reads
        run.read_loss()
    if skipped and run.env.is_main:
        warnings.warn(f"epoch {epoch + 1}: skipped {skipped} unreadable image(s)", stacklevel=2)
    if run.step % spe == 0 or run.step == run.last_step:
        measure_knn(run)
    if run.env.is_main and run.step % spe == 0:
        save_state(run)


def measure_knn(run: Run) -> None:
    """Log the online kNN monitor's top-1 at this step (rank 0, when configured)."""
    if run.knn is None:
        return
    measured = run.knn.measure(run.model.target_encoder, run.env.device)
    run.monitor_s += measured["monitor_s"]
    run.log.write(
        {"step": run.step, "epoch": round(run.step / run.data.steps_per_epoch, 4)} | measured
    )


def record_step(
    run: Run, batch: MaskedBatch, loss: torch.Tensor, predictions: torch.Tensor, hp: dict
) -> bool:
    """Keep the loss on the device; on steps that log, check or checkpoint, read it (one
    wait for the device), write the log row and, every `diagnostics_every` steps, collapse
    statistics. Returns whether the loss was read."""
    cfg, step = run.cfg, run.step
    run.watch_loss(loss)
    if not run.reads_loss():
        return False
    loss_value = run.read_loss()
    elapsed = time.perf_counter() - run.start_time
    if step % cfg.log_every == 0 or step == 1:
        run.log.write(
            {
                "step": step,
                "epoch": round(step / run.data.steps_per_epoch, 4),
                "loss": loss_value,
                **hp,
                "images_per_s": run.images_seen / max(elapsed, 1e-9),
                "elapsed_s": elapsed,
            }
        )
    if step % cfg.diagnostics_every == 0 or step == 1:
        stats = diagnostics(run, batch, predictions)
        warning = run.monitor.check(stats)
        if warning and run.env.is_main:
            warnings.warn(warning, stacklevel=2)
        run.log.write({"step": step, **stats})
    return True


@torch.no_grad()
def diagnostics(run: Run, batch: MaskedBatch, predictions: torch.Tensor) -> dict[str, float]:
    """Collapse statistics on one batch (see `jepa.diagnostics.collapse_stats`)."""
    with autocast(run.cfg.amp, run.env.device):
        h = run.model.target_features(batch.images.to(run.env.device))
    if not torch.isfinite(h).all():
        raise NonFiniteLossError("the target encoder produced non-finite features; stopping")
    return collapse_stats(h, predictions.float())


def write_summary(run: Run) -> dict:
    """Export the target encoder and write `summary.json` (rank 0)."""
    wall = time.perf_counter() - run.start_time
    diagnostics_rows = [row for row in run.log.rows if "effective_rank" in row]
    monitor_rows = [row for row in run.log.rows if "monitor_knn_top1" in row]
    summary = {
        "steps": run.step,
        "epochs": run.step / run.data.steps_per_epoch,
        "steps_per_epoch": run.data.steps_per_epoch,
        "total_steps": run.schedule.total_steps,
        "wall_time_s": wall,
        "images_per_s": run.images_seen / max(wall, 1e-9),
        "final_loss": run.last_loss,
        "effective_rank": diagnostics_rows[-1]["effective_rank"] if diagnostics_rows else None,
        # The online kNN monitor's last top-1, and its share of this process's wall time.
        "monitor_knn_top1": monitor_rows[-1]["monitor_knn_top1"] if monitor_rows else None,
        "monitor_share": run.monitor_s / max(wall, 1e-9),
        "world_size": run.env.world_size,
        "device": str(run.env.device),
        "config_hash": run.cfg.training_hash(),
    }
    meta = {"config_hash": run.cfg.training_hash(), "step": run.step}
    export_encoder(run.model.target_encoder, run.files.encoder, meta=meta)
    write_json(run.files.summary, summary)
    return summary


def _crash_if_requested(step: int) -> None:
    """Fault injection for resume tests: `JEPA_CRASH_AT_STEP=N` with `JEPA_CRASH_ONCE_FILE=path`
    kills this process (like a preempted node) right after step N, once: the marker file
    records that the crash happened, so the retried run goes on."""
    at, marker = os.environ.get("JEPA_CRASH_AT_STEP"), os.environ.get("JEPA_CRASH_ONCE_FILE")
    if at is None or marker is None or step != int(at) or Path(marker).exists():
        return
    Path(marker).write_text(str(step))
    os._exit(17)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m jepa.train --config params.yaml [--set key=value ...]`, also under torchrun."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", help="flat YAML config (e.g. params.yaml)")
    parser.add_argument("--preset", help="an experiment of jepa/conf (JEPAConfig.preset)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    args = parser.parse_args(argv)
    cfg = (
        JEPAConfig.from_yaml(args.config)
        if args.config
        else JEPAConfig.preset(args.preset or "fmnist_w192")
    )
    overrides = dict(item.split("=", 1) for item in args.set)
    if overrides:
        import yaml

        cfg = cfg.replace(**{k: yaml.safe_load(v) for k, v in overrides.items()})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(json.dumps(pretrain(cfg), indent=2))


if __name__ == "__main__":
    main()

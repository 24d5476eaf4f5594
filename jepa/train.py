"""I-JEPA pretraining: one training step, one epoch, the whole run.

`pretrain(cfg)` is the library's entry point; `python -m jepa.train` and torchrun
call it through `main()`. Every rank runs the same code; rank 0 alone writes files.

Resume is exact at optimizer-step granularity: schedules are pure functions of the
global step, masks and crops are pure functions of (seed, epoch, sample index), the
sampler order is a function of (seed, epoch), and the checkpoint carries the model,
optimizer and RNG states. A resumed run skips the batches it already trained on.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from jepa import checkpoint as ckpt
from jepa import schedules
from jepa.config import JEPAConfig
from jepa.data import (
    DropNoneCollate,
    EpochSampler,
    SeededItems,
    SkipEmptyLoader,
    pretrain_dataset,
    seed_worker,
)
from jepa.diagnostics import CollapseMonitor, collapse_stats
from jepa.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from jepa.ema import ema_update
from jepa.masks import MaskedBatch, build_collator
from jepa.models import (
    VisionTransformer,
    apply_masks,
    build_encoder,
    build_predictor,
    repeat_interleave_batch,
)

log = logging.getLogger("jepa.train")

StepLogger = Callable[[dict], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before saving anything from that step."""


# --------------------------------------------------------------------------- data order


class ResumableSampler(EpochSampler):
    """The pretraining sampler (keys `(index, epoch)`), able to start an epoch part-way."""

    start_index = 0

    def set_start(self, start_index: int) -> None:
        self.start_index = start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


@dataclass
class LoaderBundle:
    loader: DataLoader
    sampler: ResumableSampler
    collator: Callable
    steps_per_epoch: int  # optimizer steps
    local_batch_size: int

    def start_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Point sampler, crops and masks at `epoch`, skipping its first `skip_batches`."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(skip_batches * self.local_batch_size)
        self.collator.set_epoch(epoch)


def build_loader(cfg: JEPAConfig, env: DistEnv) -> LoaderBundle:
    """Pretraining loader for this rank; `cfg.batch_size` is the global batch.

    Crops are seeded per item by (seed, epoch, index) and masks by the collator from the
    same keys, so batches do not depend on the number of workers or on where an epoch
    was resumed. Workers are re-forked each epoch (not persistent) so that they see the
    epoch set on the collator just before.
    """
    if cfg.batch_size % env.world_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by the world size {env.world_size}"
        )
    local_batch = cfg.batch_size // env.world_size
    dataset = pretrain_dataset(cfg)
    sampler = ResumableSampler(
        dataset,
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    collator = build_collator(cfg)
    loader = SkipEmptyLoader(
        SeededItems(dataset, cfg.seed),
        batch_size=local_batch,
        sampler=sampler,
        collate_fn=DropNoneCollate(collator),
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda",
        worker_init_fn=seed_worker,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    steps = sampler.num_samples // local_batch // cfg.accum_iter
    if steps < 1:
        raise ValueError(
            f"the dataset has {len(dataset)} images: too few for one step of batch_size="
            f"{cfg.batch_size} x accum_iter={cfg.accum_iter}; lower batch_size or raise pretrain_subset"
        )
    return LoaderBundle(loader, sampler, collator, steps, local_batch)


# --------------------------------------------------------------------------- models


@dataclass
class Models:
    encoder: nn.Module  # context encoder, possibly DDP/compile-wrapped
    predictor: nn.Module
    target_encoder: VisionTransformer
    raw_encoder: VisionTransformer  # unwrapped, for EMA and checkpoints
    raw_predictor: nn.Module


def build_models(cfg: JEPAConfig, env: DistEnv) -> Models:
    """Context encoder, predictor and a frozen target encoder, placed and wrapped."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    encoder = build_encoder(cfg).to(env.device)
    predictor = build_predictor(cfg).to(env.device)
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad_(False)
    wrapped_enc, wrapped_pred = encoder, predictor
    if env.is_distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped_enc = DistributedDataParallel(encoder, device_ids=ids, static_graph=True)
        wrapped_pred = DistributedDataParallel(predictor, device_ids=ids, static_graph=True)
    if cfg.compile:
        wrapped_enc, wrapped_pred = torch.compile(wrapped_enc), torch.compile(wrapped_pred)
        target = torch.compile(target)
    return Models(wrapped_enc, wrapped_pred, target, encoder, predictor)


def param_groups(*modules: nn.Module) -> list[dict]:
    """Two AdamW groups: weight decay on matrices, none on biases and 1-D parameters."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "apply_wd": True},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: JEPAConfig, models: Models, env: DistEnv) -> torch.optim.AdamW:
    fused = env.device.type == "cuda"
    return torch.optim.AdamW(
        param_groups(models.raw_encoder, models.raw_predictor),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


# --------------------------------------------------------------------------- one step


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


def autocast(cfg: JEPAConfig, device: torch.device):
    """bf16 autocast on CUDA by default; on the CPU only when asked (`amp: bf16`)."""
    enabled = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def jepa_loss(
    models: Models, batch: MaskedBatch, loss_kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA objective on one batch.

    Targets: the target encoder's layer-normed tokens `(B, N, D)`, gathered at each
    target block and repeated per context block. Predictions: the predictor's output
    for the same positions, `(M_tgt*M_ctx*B, K_tgt, D)`. Returns (loss, predictions).
    """
    images, masks_enc, masks_pred = batch.images, batch.masks_enc, batch.masks_pred
    with torch.no_grad():
        h = models.target_encoder(images)
        h = F.layer_norm(h, (h.size(-1),))
        h = apply_masks(h, masks_pred)
        h = repeat_interleave_batch(h, images.size(0), len(masks_enc))
    z = models.encoder(images, masks_enc)
    z = models.predictor(z, masks_enc, masks_pred)
    if loss_kind == "smooth_l1":
        loss = F.smooth_l1_loss(z, h.to(z.dtype))
    else:
        loss = F.mse_loss(z, h.to(z.dtype))
    return loss, z.detach()


def to_device(batch: MaskedBatch, device: torch.device) -> MaskedBatch:
    nb = device.type == "cuda"
    return batch._replace(
        images=batch.images.to(device, non_blocking=nb),
        masks_enc=[m.to(device, non_blocking=nb) for m in batch.masks_enc],
        masks_pred=[m.to(device, non_blocking=nb) for m in batch.masks_pred],
    )


def apply_hyperparams(optimizer: torch.optim.Optimizer, hp: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = hp["lr"]
        if group.get("apply_wd"):
            group["weight_decay"] = hp["wd"]


def optimizer_step(
    cfg: JEPAConfig,
    models: Models,
    optimizer,
    batches: Sequence[MaskedBatch],
    hp: dict[str, float],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward over `accum_iter` micro-batches, clip, step, EMA.

    Returns the mean loss (a 0-d tensor, not yet synchronised) and the last predictions.
    """
    apply_hyperparams(optimizer, hp)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = _no_sync(models, enabled=not last)
        with sync, autocast(cfg, device):
            loss, pred = jepa_loss(models, to_device(batch, device), cfg.loss)
        (loss / len(batches)).backward()
        total += loss.detach() / len(batches)
    if cfg.clip_grad:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    optimizer.step()
    ema_update(models.target_encoder, models.raw_encoder, hp["momentum"])
    return total, pred


class _no_sync:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""

    def __init__(self, models: Models, enabled: bool):
        self.contexts = []
        if enabled:
            for m in (models.encoder, models.predictor):
                inner = getattr(m, "_orig_mod", m)
                if isinstance(inner, DistributedDataParallel):
                    self.contexts.append(inner.no_sync())

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class RunLog:
    """Rank 0's metrics file (`metrics.jsonl`) and extra step loggers."""

    path: Path | None
    loggers: Sequence[StepLogger] = ()
    rows: list[dict] = field(default_factory=list)

    def open(self, resume_step: int) -> None:
        """Keep rows up to `resume_step`: rows a crashed run wrote after its last checkpoint go."""
        if self.path is None:
            return
        kept = []
        if self.path.exists() and resume_step > 0:
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line)["step"] <= resume_step:
                    kept.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(k + "\n" for k in kept))
        self.rows = [json.loads(k) for k in kept]

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        for logger in self.loggers:
            logger(row)


def output_paths(cfg: JEPAConfig) -> dict[str, Path]:
    out = Path(cfg.output_dir)
    return {
        "checkpoint": out / "checkpoints" / "latest.pt",
        "metrics": out / "metrics.jsonl",
        "summary": out / "summary.json",
        "encoder": out / "encoder",
    }


def save_state(cfg: JEPAConfig, models: Models, optimizer, step: int, epoch: int, mirror) -> None:
    """Rank 0 writes the checkpoint (atomically) and mirrors it to S3 when configured.

    Weights that went non-finite are never saved: the previous checkpoint stays the
    last good one.
    """
    path = output_paths(cfg)["checkpoint"]
    params = [p.detach() for p in models.raw_encoder.parameters()] + [
        p.detach() for p in models.raw_predictor.parameters()
    ]
    if not all(torch.isfinite(n) for n in torch._foreach_norm(params)):
        raise NonFiniteLossError(
            f"weights became non-finite at step {step}; not saving them. The last good "
            f"checkpoint is {path}. Try a lower lr, clip_grad, or amp: none."
        )
    ckpt.save_checkpoint(
        path,
        encoder=models.raw_encoder,
        predictor=models.raw_predictor,
        target_encoder=getattr(models.target_encoder, "_orig_mod", models.target_encoder),
        optimizer=optimizer,
        step=step,
        epoch=epoch,
        cfg=cfg,
        rng=ckpt.capture_rng_state(),
    )
    if mirror is not None:
        mirror.push(path, step=step, epoch=epoch, config_hash=cfg.training_hash())


def restore_state(cfg: JEPAConfig, models: Models, optimizer, env: DistEnv, mirror) -> int:
    """Load the latest checkpoint (local, else the S3 mirror) if resuming; return its step."""
    path = output_paths(cfg)["checkpoint"]
    if not cfg.resume:
        return 0
    if not path.exists() and mirror is not None and env.is_main:
        mirror.pull(path)
    barrier()
    if not path.exists():
        return 0
    state = ckpt.load_checkpoint(path, cfg=cfg, map_location=env.device)
    models.raw_encoder.load_state_dict(state["encoder"])
    models.raw_predictor.load_state_dict(state["predictor"])
    getattr(models.target_encoder, "_orig_mod", models.target_encoder).load_state_dict(
        state["target_encoder"]
    )
    optimizer.load_state_dict(state["optimizer"])
    ckpt.restore_rng_state(state["rng"])
    log.info("resumed from %s at step %d (epoch %d)", path, state["step"], state["epoch"])
    return int(state["step"])


def build_mirror(cfg: JEPAConfig):
    if cfg.checkpoint_uri is None:
        return None
    from jepa.storage import CheckpointMirror

    return CheckpointMirror(cfg.checkpoint_uri)


# --------------------------------------------------------------------------- the run


@dataclass
class RunState:
    step: int
    steps_per_epoch: int
    images_seen: int = 0
    start_time: float = field(default_factory=time.perf_counter)
    last_loss: float = math.nan
    monitor: CollapseMonitor = field(default_factory=CollapseMonitor)

    @property
    def epoch(self) -> int:
        """Epochs completed (the epoch under way, counting from 0)."""
        return self.step // self.steps_per_epoch


def pretrain(cfg: JEPAConfig, *, loggers: Sequence[StepLogger] = ()) -> dict:
    """Pretrain an I-JEPA model as `cfg` says; return the run summary.

    Writes, on rank 0, under `cfg.output_dir`: `checkpoints/latest.pt`,
    `metrics.jsonl` (one JSON row per logged step), `summary.json`, and `encoder/`
    (the target encoder as safetensors + its model arguments).
    """
    env = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, env, loggers)
    finally:
        cleanup_distributed()


def _pretrain(cfg: JEPAConfig, env: DistEnv, loggers: Sequence[StepLogger]) -> dict:
    bundle = build_loader(cfg, env)
    models = build_models(cfg, env)
    optimizer = build_optimizer(cfg, models, env)
    mirror = build_mirror(cfg) if env.is_main else None
    step = restore_state(cfg, models, optimizer, env, mirror)
    schedule = Schedule(cfg, bundle.steps_per_epoch)
    paths = output_paths(cfg)
    runlog = RunLog(paths["metrics"] if env.is_main else None, loggers)
    runlog.open(step)
    state = RunState(step=step, steps_per_epoch=bundle.steps_per_epoch)
    last_step = (
        schedule.total_steps if cfg.max_steps is None else min(cfg.max_steps, schedule.total_steps)
    )
    while state.step < last_step:
        run_epoch(cfg, env, bundle, models, optimizer, schedule, state, runlog, mirror, last_step)
    if env.is_main:
        save_state(cfg, models, optimizer, state.step, state.epoch, mirror)
        summary = write_summary(cfg, env, models, state, schedule, paths)
    else:
        summary = {}
    barrier()
    return summary


def run_epoch(
    cfg,
    env,
    bundle: LoaderBundle,
    models: Models,
    optimizer,
    schedule: Schedule,
    state: RunState,
    runlog: RunLog,
    mirror,
    last_step: int,
) -> None:
    """Train from `state.step` to the end of its epoch (or `last_step`)."""
    spe = bundle.steps_per_epoch
    epoch = state.step // spe
    done_in_epoch = state.step - epoch * spe
    bundle.start_epoch(epoch, skip_batches=done_in_epoch * cfg.accum_iter)
    stop = min((epoch + 1) * spe, last_step)
    bar = tqdm(
        total=stop - state.step,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (env.is_main and cfg.progress),
        dynamic_ncols=True,
        leave=False,
    )
    batches = iter(bundle.loader)
    skipped = 0
    while state.step < stop:
        micro = list(itertools.islice(batches, cfg.accum_iter))
        if len(micro) < cfg.accum_iter:
            # Whole batches of unreadable images were left out and the epoch ran dry:
            # count its remaining steps as done so schedules stay aligned to epochs.
            warnings.warn(
                f"epoch {epoch + 1} ended {stop - state.step} step(s) early", stacklevel=2
            )
            state.step = stop
            break
        skipped += sum(b.num_skipped for b in micro)
        hp = schedule.at(state.step)
        loss, pred = optimizer_step(cfg, models, optimizer, micro, hp, env.device)
        state.step += 1
        state.images_seen += sum(b.images.size(0) for b in micro) * env.world_size
        record_step(cfg, env, models, micro[-1], loss, pred, hp, state, runlog, bar)
        if env.is_main and state.step % cfg.checkpoint_every == 0:
            save_state(cfg, models, optimizer, state.step, state.epoch, mirror)
        _crash_if_requested(state.step)
    bar.close()
    if skipped and env.is_main:
        warnings.warn(f"epoch {epoch + 1}: skipped {skipped} unreadable image(s)", stacklevel=2)
    if env.is_main and state.step % spe == 0:
        save_state(cfg, models, optimizer, state.step, state.epoch, mirror)


def record_step(
    cfg,
    env,
    models: Models,
    batch: MaskedBatch,
    loss: torch.Tensor,
    pred: torch.Tensor,
    hp: dict,
    state: RunState,
    runlog: RunLog,
    bar,
) -> None:
    """Check the loss, update the progress bar, write log and diagnostics rows."""
    loss_value = all_reduce_mean(loss.float()).item()
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(
            f"loss became {loss_value} at step {state.step}; stopping. The last good checkpoint is "
            f"{output_paths(cfg)['checkpoint']}. Try a lower lr, clip_grad, or amp: none."
        )
    state.last_loss = loss_value
    elapsed = time.perf_counter() - state.start_time
    ips = state.images_seen / max(elapsed, 1e-9)
    bar.update(1)
    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{hp['lr']:.2e}", img_s=f"{ips:.0f}")
    if state.step % cfg.log_every == 0 or state.step == 1:
        epoch = round(state.step / state.steps_per_epoch, 4)
        runlog.write(
            {
                "step": state.step,
                "epoch": epoch,
                "loss": loss_value,
                **hp,
                "images_per_s": ips,
                "elapsed_s": elapsed,
            }
        )
    if state.step % cfg.diagnostics_every == 0 or state.step == 1:
        stats = diagnostics(models, batch, pred, env.device, cfg)
        warning = state.monitor.check(stats)
        if warning and env.is_main:
            warnings.warn(warning, stacklevel=2)
        runlog.write({"step": state.step, **stats})


@torch.no_grad()
def diagnostics(
    models: Models, batch: MaskedBatch, pred: torch.Tensor, device: torch.device, cfg: JEPAConfig
) -> dict[str, float]:
    """Collapse statistics on one batch (see `jepa.diagnostics.collapse_stats`)."""
    with autocast(cfg, device):
        h = models.target_encoder(batch.images.to(device))
    if not torch.isfinite(h).all():
        raise NonFiniteLossError("the target encoder produced non-finite features; stopping")
    return collapse_stats(F.layer_norm(h.float(), (h.size(-1),)), pred.float())


def write_summary(
    cfg: JEPAConfig,
    env: DistEnv,
    models: Models,
    state: RunState,
    schedule: Schedule,
    paths: dict[str, Path],
) -> dict:
    """Export the target encoder and write `summary.json` (rank 0)."""
    wall = time.perf_counter() - state.start_time
    last_diag = next((r for r in reversed(_rows(paths["metrics"])) if "effective_rank" in r), {})
    summary = {
        "steps": state.step,
        "epochs": state.step / schedule.steps_per_epoch,
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": schedule.total_steps,
        "wall_time_s": wall,
        "images_per_s": state.images_seen / max(wall, 1e-9),
        "final_loss": state.last_loss,
        "effective_rank": last_diag.get("effective_rank"),
        "world_size": env.world_size,
        "device": str(env.device),
        "config_hash": cfg.training_hash(),
    }
    target = getattr(models.target_encoder, "_orig_mod", models.target_encoder)
    ckpt.export_encoder(
        target, paths["encoder"], meta={"config_hash": cfg.training_hash(), "step": state.step}
    )
    tmp = paths["summary"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, paths["summary"])
    return summary


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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

"""Benchmark one I-JEPA training step: ours against an official-style baseline, same masks.

    python bench/train_step.py --preset fmnist_w192 --steps 20
    python bench/train_step.py --config params.yaml --set batch_size=128
    python bench/train_step.py --config vitb16.yaml --device cuda --compile --batch-sizes 64,256

Every variant runs in this process on the same synthetic images and the same sequence of
masks (the collator's, keyed by sample index, a new batch of indices every step):
- `jepa`: fused `scaled_dot_product_attention`, one `_foreach_lerp_` EMA update;
- `jepa compiled` (`--compile`): the same under `torch.compile`;
- `baseline`: attention written out as softmax(QK^T/sqrt(d))V and a per-parameter Python
  EMA loop, as the official code does.

The table gives, per variant and batch size, step time split into mask collation and
model work, images/s, FLOPs per image (`torch.utils.flop_counter`, forward and backward),
the achieved TFLOP/s and their share of the device's peak (MFU), peak memory, and the speed
ratio against the baseline. The peak is the measured rate of a large matmul in the step's
precision on this machine (printed first), and on known GPUs also the vendor's dense
peak. Needs only torch and the library's numeric dependencies (no Hydra with `--config`).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from jepa import ema
from jepa.config import JEPAConfig
from jepa.device import autocast, resolve_device
from jepa.masks import build_collator
from jepa.models import IJEPA, ijepa, vit
from jepa.train import Schedule, build_optimizer, train_step

# Vendors' dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of the name.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`(B, H, N, d)` attention without the fused kernel."""
    attn = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
    return attn.softmax(-1) @ v


@contextlib.contextmanager
def official_style():
    """Swap in the baseline's attention and EMA for the duration of the block."""
    saved_attn, saved_ema = vit.F.scaled_dot_product_attention, ijepa.ema_update
    vit.F.scaled_dot_product_attention = naive_attention
    ijepa.ema_update = ema.ema_update_reference
    try:
        yield
    finally:
        vit.F.scaled_dot_product_attention = saved_attn
        ijepa.ema_update = saved_ema


def load_config(args: argparse.Namespace) -> JEPAConfig:
    """`--config` (a flat YAML, no Hydra) or `--preset`, then `--set` overrides."""
    if args.config:
        cfg = JEPAConfig.from_yaml(args.config)
    else:
        cfg = JEPAConfig.preset(args.preset or "fmnist_w192")
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    return cfg.replace(progress=False, **overrides)


def synthetic_samples(cfg: JEPAConfig, n: int, start: int) -> list[tuple[torch.Tensor, int, int]]:
    g = torch.Generator().manual_seed(start)
    images = torch.randn(n, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g)
    return [(images[i], i % 10, start + i) for i in range(n)]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """This machine's measured rate of a large `size`³ matmul, TFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < 0.5:
        a @ b
        reps += 1
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def step_flops(cfg: JEPAConfig, device: torch.device) -> float:
    """FLOPs of one training step (forward, backward; the optimizer's are negligible)."""
    model = IJEPA.from_config(cfg).to(device)
    batch = build_collator(cfg)(synthetic_samples(cfg, cfg.batch_size, 0))
    images = batch.images.to(device)
    masks = [m.to(device) for m in batch.masks_enc], [m.to(device) for m in batch.masks_pred]
    with FlopCounterMode(display=False) as counter, autocast(cfg.amp, device):
        loss, _ = model(images, *masks)
        loss.backward()
    return float(counter.get_total_flops())


def run_variant(cfg: JEPAConfig, device: torch.device, steps: int, warmup: int) -> dict:
    """Time `steps` optimizer steps after `warmup` untimed ones."""
    model = IJEPA.from_config(cfg).to(device).wrap(distributed=False, compile=cfg.compile)
    optimizer = build_optimizer(cfg, model, device)
    schedule = Schedule(cfg, steps_per_epoch=max(steps + warmup, 1))
    collator = build_collator(cfg)
    collate_ms, step_ms = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        samples = synthetic_samples(cfg, cfg.batch_size, i * cfg.batch_size)
        t0 = time.perf_counter()
        batch = collator(samples)
        t1 = time.perf_counter()
        train_step(cfg, model, optimizer, [batch], schedule.at(i), device)
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            collate_ms.append((t1 - t0) * 1e3)
            step_ms.append((t2 - t1) * 1e3)
    collate, model_ms = statistics.median(collate_ms), statistics.median(step_ms)
    return {
        "collate_ms": collate,
        "model_ms": model_ms,
        "images_per_s": cfg.batch_size / ((collate + model_ms) / 1e3),
        "peak_mb": peak_memory_mb(device),
    }


def uses_bf16(amp: str, device: torch.device) -> bool:
    """Whether `jepa.device.autocast` runs this config's matmuls in bf16."""
    with autocast(amp, device):
        return torch.is_autocast_enabled(device.type)


def time_in_rounds(variants: dict[str, JEPAConfig], device: torch.device, args) -> dict:
    """Each variant timed `args.rounds` times, in turn (A B A B ...), so a machine that
    speeds up or slows down during the run favours none; the median round is kept."""
    rounds: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, cfg in variants.items():
            style = official_style() if name == "baseline" else contextlib.nullcontext()
            with style:
                rounds[name].append(run_variant(cfg, device, args.steps, args.warmup))
    return {
        name: sorted(runs, key=lambda r: r["model_ms"])[len(runs) // 2]
        for name, runs in rounds.items()
    }


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak TFLOP/s, where it comes from): the vendor's bf16 figure on known GPUs, else
    the measured matmul rate."""
    measured = matmul_tflops(device, dtype)
    print(f"measured {dtype} matmul (2048^3) on {device}: {measured:.2f} TFLOP/s")
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_BF16_PEAK_TFLOPS.items():
            if key in name:
                print(f"{name}: dense bf16 peak {peak:.0f} TFLOP/s (vendor figure)")
                return peak, "vendor bf16 peak"
    return measured, "measured matmul rate"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="a flat YAML config (e.g. params.yaml)")
    parser.add_argument("--preset", help="an experiment of jepa/conf (needs Hydra)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 64,256")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    return parser.parse_args()


def print_table(rows: list[dict]) -> None:
    print(
        "| variant | batch | collate ms | model ms | images/s | GFLOP/img | TFLOP/s | MFU "
        "| peak MB | vs baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
        print(
            f"| {r['variant']} | {r['batch']} | {r['collate_ms']:.2f} | {r['model_ms']:.1f} "
            f"| {r['images_per_s']:.1f} | {r['gflop_per_image']:.3f} | {r['tflops']:.3f} "
            f"| {100 * r['mfu']:.1f}% | {r['peak_mb']:.0f} | {ratio} |"
        )


def main() -> None:
    args = parse_args()
    base_cfg = load_config(args)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if uses_bf16(base_cfg.amp, device) else torch.float32
    print(
        f"torch={torch.__version__} cuda={torch.version.cuda} device={device} "
        f"threads={torch.get_num_threads()} amp={base_cfg.amp} ({dtype})"
    )
    peak, peak_source = device_peak(device, dtype)
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [None]
    rows = []
    for batch in batches:
        cfg = base_cfg if batch is None else base_cfg.replace(batch_size=batch)
        print(
            f"config: batch={cfg.batch_size} image={cfg.image_size} patch={cfg.patch_size} "
            f"grid={cfg.grid_size}x{cfg.grid_size} encoder={cfg.embed_dim}x{cfg.depth} "
            f"heads={cfg.num_heads} predictor={cfg.pred_embed_dim}x{cfg.pred_depth}"
        )
        flops = step_flops(cfg, device)
        variants = {"jepa": cfg}
        if args.compile:
            variants["jepa compiled"] = cfg.replace(compile=True)
        if not args.no_baseline:
            variants["baseline"] = cfg
        results = time_in_rounds(variants, device, args)
        base = results.get("baseline")
        for name, r in results.items():
            seconds = (r["collate_ms"] + r["model_ms"]) / 1e3
            rows.append(
                {
                    "variant": name,
                    "batch": cfg.batch_size,
                    **r,
                    "gflop_per_image": flops / cfg.batch_size / 1e9,
                    "tflops": flops / seconds / 1e12,
                    "mfu": flops / seconds / 1e12 / peak,
                    "ratio": (base["collate_ms"] + base["model_ms"]) / 1e3 / seconds
                    if base
                    else None,
                }
            )
    if device.type != "cuda":
        print("(CPU peak memory is the process's maximum RSS so far, not per variant)")
    print(f"MFU is against the {peak_source} ({peak:.2f} TFLOP/s)")
    print_table(rows)
    assert F.scaled_dot_product_attention is not naive_attention  # restored


if __name__ == "__main__":
    main()

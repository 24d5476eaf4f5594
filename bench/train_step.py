"""Benchmark one I-JEPA training step: ours against an official-style baseline.

    python bench/train_step.py --preset fmnist-tiny --steps 20

Both variants run in this process on the same synthetic batch and masks:
- `jepa`: fused `scaled_dot_product_attention`, one `_foreach_lerp_` EMA update;
- `baseline`: attention written out as softmax(QK^T/sqrt(d))V and a per-parameter
  Python EMA loop, as the official code does.
The table gives step time split into mask collation and model work, images/s, peak
memory, and the speed ratio against the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from jepa import ema
from jepa.config import JEPAConfig, preset_names
from jepa.device import resolve_device
from jepa.masks import build_collator
from jepa.models import IJEPA, ijepa, vit
from jepa.train import Schedule, build_optimizer, train_step


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


def synthetic_samples(cfg: JEPAConfig, n: int) -> list[tuple[torch.Tensor, int, int]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g)
    return [(images[i], i % 10, i) for i in range(n)]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(cfg: JEPAConfig, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Time `steps` optimizer steps after `warmup` untimed ones."""
    model = IJEPA.from_config(cfg).to(device).wrap(distributed=False, compile=cfg.compile)
    optimizer = build_optimizer(cfg, model, device)
    schedule = Schedule(cfg, steps_per_epoch=max(steps + warmup, 1))
    collator = build_collator(cfg)
    samples = synthetic_samples(cfg, cfg.batch_size)
    collate_ms, step_ms = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = collator(samples)
        t1 = time.perf_counter()
        train_step(cfg, model, optimizer, [batch], schedule.at(i), device)
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            collate_ms.append((t1 - t0) * 1e3)
            step_ms.append((t2 - t1) * 1e3)
    collate, model = statistics.median(collate_ms), statistics.median(step_ms)
    return {
        "collate_ms": collate,
        "model_ms": model,
        "images_per_s": cfg.batch_size / ((collate + model) / 1e3),
        "collate_share": collate / (collate + model),
        "peak_mb": peak_memory_mb(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="fmnist_w192", choices=preset_names())
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default=None, choices=["auto", "bf16", "none"])
    args = parser.parse_args()
    overrides = {"progress": False}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.amp:
        overrides["amp"] = args.amp
    cfg = JEPAConfig.preset(args.preset, **overrides)
    device = resolve_device(args.device)
    print(
        f"preset={args.preset} batch={cfg.batch_size} grid={cfg.grid_size}x{cfg.grid_size} "
        f"encoder={cfg.embed_dim}/{cfg.depth}/{cfg.num_heads} device={device} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    results = {"jepa": run_variant(cfg, device, args.steps, args.warmup)}
    with official_style():
        results["baseline"] = run_variant(cfg, device, args.steps, args.warmup)
    base = results["baseline"]["collate_ms"] + results["baseline"]["model_ms"]
    if device.type != "cuda":
        print(
            "(CPU peak memory is the process's maximum RSS so far: the baseline row includes the first run)"
        )
    print(
        "| variant  | collate ms | model ms | collate % | images/s | peak MB | speed vs baseline |"
    )
    print(
        "|----------|-----------:|---------:|----------:|---------:|--------:|------------------:|"
    )
    for name, r in results.items():
        ratio = base / (r["collate_ms"] + r["model_ms"])
        print(
            f"| {name:<8} | {r['collate_ms']:10.2f} | {r['model_ms']:8.1f} | {100 * r['collate_share']:8.1f}% "
            f"| {r['images_per_s']:8.1f} | {r['peak_mb']:7.0f} | {ratio:16.2f}x |"
        )
    assert F.scaled_dot_product_attention is not naive_attention  # restored


if __name__ == "__main__":
    main()

"""Benchmark one I-JEPA training step: ours against an official-style baseline, same masks.

    python bench/train_step.py --preset fmnist_w192 --steps 20
    python bench/train_step.py --config params.yaml --set batch_size=128
    python bench/train_step.py --config vitb16.yaml --device cuda --compile --batch-sizes 64,256
    python bench/train_step.py --config params.yaml --no-baseline --vs "pred_depth=2"

Every variant runs in this process on the same synthetic images and the same sequence of
masks (the collator's, keyed by sample index, a new batch of indices every step):
- `jepa`: fused `scaled_dot_product_attention`, one `_foreach_lerp_` EMA update, and the
  last block of the target encoder and of the predictor computing only the tokens the loss
  reads (the targets; the mask tokens);
- `jepa compiled` (`--compile`): the same under `torch.compile`;
- `jepa, eager inference` (`--eager-inference`): the same with the target encoder's blocks
  run eagerly instead of on oneDNN's fused linears (`jepa.models.vit.fused_inference`);
- `jepa, KEY=VALUE ...` (`--vs`): the same code on another recipe (the config with those
  overrides), to weigh a recipe's cost per step against the config's;
- `baseline`: attention written out as softmax(QK^T/sqrt(d))V, a per-parameter Python
  EMA loop, patch tokens left as a transposed view of the convolution's output (so
  every full-image block copies them again), and every token through every block, as the
  official code does;
- `official` (`--official-src DIR`, a checkout of facebookresearch/ijepa): the official
  code's own `VisionTransformer` and `VisionTransformerPredictor`, `apply_masks` and
  `repeat_interleave_batch`, driven as its `train_step` does (smooth L1, AdamW, the
  per-parameter momentum loop), on the same images and masks. Nothing of it is copied here:
  it is imported from DIR at run time.

`--split` also prints where a step of `jepa` spends its time: the target encoder's
forward, the context encoder's and the predictor's forwards, the backward pass, and the
optimizer step with the EMA update.

The table gives, per variant and batch size, step time split into mask collation and
model work, images/s, the variant's own FLOPs per image (`torch.utils.flop_counter`,
forward and backward),
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
from jepa.models.ijepa import LOSSES
from jepa.train import Schedule, build_optimizer, train_step

# Vendors' dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of the name.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`(B, H, N, d)` attention without the fused kernel."""
    attn = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
    return attn.softmax(-1) @ v


def strided_patch_tokens(x: torch.Tensor) -> torch.Tensor:
    """`(B, D, H, W)` → `(B, H*W, D)` as a transposed view, without `vit.patch_tokens`' copy."""
    return x.flatten(2).transpose(1, 2)


def every_token(run_blocks):
    """`run_blocks` computing every token through every block and cutting the rows from
    the outputs after, as the official networks do (the same values, more work)."""

    def run_every_token(blocks, x, *, rows=None, keep=0, **kwargs):
        x, kept = run_blocks(blocks, x, keep=keep, **kwargs)
        if rows is None:
            return x, kept
        return vit.take_rows(x, rows), [vit.take_rows(h, rows) for h in kept]

    return run_every_token


@contextlib.contextmanager
def official_style():
    """Swap in the baseline's attention, EMA, token layout and full last blocks for the
    duration of the block."""
    run_blocks = vit.run_blocks
    saved = vit.F.scaled_dot_product_attention, ijepa.ema_update, vit.patch_tokens
    vit.F.scaled_dot_product_attention = naive_attention
    ijepa.ema_update = ema.ema_update_reference
    vit.patch_tokens = strided_patch_tokens
    vit.run_blocks = every_token(run_blocks)
    try:
        with vit.eager_inference():
            yield
    finally:
        vit.F.scaled_dot_product_attention, ijepa.ema_update, vit.patch_tokens = saved
        vit.run_blocks = run_blocks


class OfficialModel:
    """The official code's networks behind `IJEPA`'s interface (`bench --official-src`)."""

    def __init__(self, cfg: JEPAConfig, src: str, device: torch.device) -> None:
        import copy
        import sys

        sys.path.insert(0, src)
        from src.masks.utils import apply_masks
        from src.models.vision_transformer import VisionTransformer, VisionTransformerPredictor
        from src.utils.tensors import repeat_interleave_batch

        self.apply_masks, self.repeat = apply_masks, repeat_interleave_batch
        torch.manual_seed(cfg.seed)
        self.encoder = VisionTransformer(
            img_size=[cfg.image_size],
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
        ).to(device)
        self.predictor = VisionTransformerPredictor(
            num_patches=cfg.grid_size**2,
            embed_dim=cfg.embed_dim,
            predictor_embed_dim=cfg.pred_embed_dim,
            depth=cfg.pred_depth,
            num_heads=cfg.pred_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
        ).to(device)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def param_groups(self) -> list[dict]:
        named = [*self.encoder.named_parameters(), *self.predictor.named_parameters()]
        decay = [p for n, p in named if "bias" not in n and p.ndim != 1]
        no_decay = [p for n, p in named if "bias" in n or p.ndim == 1]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def step(self, images, masks_enc, masks_pred, optimizer, momentum: float) -> torch.Tensor:
        """One optimizer step as the official `train_step` takes it."""
        with torch.no_grad():
            h = self.target_encoder(images)
            h = F.layer_norm(h, (h.size(-1),))
            h = self.apply_masks(h, masks_pred)
            h = self.repeat(h, len(images), repeat=len(masks_enc))
        z = self.encoder(images, masks_enc)
        z = self.predictor(z, masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for q, k in zip(
                self.encoder.parameters(), self.target_encoder.parameters(), strict=True
            ):
                k.data.mul_(momentum).add_((1.0 - momentum) * q.detach().data)
        return loss


def load_config(args: argparse.Namespace) -> JEPAConfig:
    """`--config` (a flat YAML, no Hydra) or `--preset`, then `--set` overrides."""
    if args.config:
        cfg = JEPAConfig.from_yaml(args.config)
    else:
        cfg = JEPAConfig.preset(args.preset or "fmnist_w192")
    return cfg.replace(progress=False, **parse_overrides(args.set))


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` strings as a dict, each value read as YAML (`2`, `1e-3`, `[0.99, 1.0]`)."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SystemExit(f"error: override {bad[0]!r} is not KEY=VALUE")
    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}


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


def step_flops(
    cfg: JEPAConfig,
    device: torch.device,
    variant: str = "jepa",
    official_src: str | None = None,
    samples: int = 4,
) -> float:
    """FLOPs of one training step of `variant` (forward, backward; the optimizer's are not
    counted), averaged over `samples` steps' mask draws (block sizes, hence token counts,
    vary)."""
    collator, total = build_collator(cfg), 0.0
    if variant == "official":
        official = OfficialModel(cfg, official_src, device)
        optimizer = torch.optim.AdamW(official.param_groups(), lr=cfg.lr)
    else:
        model = IJEPA.from_config(cfg).to(device)
    for k in range(samples):
        batch = collator(synthetic_samples(cfg, cfg.batch_size, k * cfg.batch_size))
        images = batch.images.to(device)
        masks = [m.to(device) for m in batch.masks_enc], [m.to(device) for m in batch.masks_pred]
        # The flop counter has no formula for oneDNN's fused linears: count the eager ops,
        # the same math.
        style = official_style() if variant == "baseline" else vit.eager_inference()
        with style, FlopCounterMode(display=False) as counter, autocast(cfg.amp, device):
            if variant == "official":
                official.step(images, *masks, optimizer, momentum=0.996)
            else:
                loss, _ = model(images, *masks)
                loss.backward()
                model.zero_grad(set_to_none=True)
        total += counter.get_total_flops()
    return total / samples


def run_variant(
    cfg: JEPAConfig, device: torch.device, steps: int, warmup: int, official_src: str | None = None
) -> dict:
    """Time `steps` optimizer steps after `warmup` untimed ones (the official code's modules
    when `official_src` is given)."""
    if official_src:
        official = OfficialModel(cfg, official_src, device)
        optimizer = torch.optim.AdamW(official.param_groups(), lr=cfg.lr)
    else:
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
        if official_src:
            masks = (
                [m.to(device) for m in batch.masks_enc],
                [m.to(device) for m in batch.masks_pred],
            )
            official.step(batch.images.to(device), *masks, optimizer, schedule.at(i)["momentum"])
        else:
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


VARIANT_STYLES = {"baseline": official_style, "jepa, eager inference": vit.eager_inference}


def time_in_rounds(variants: dict[str, JEPAConfig], device: torch.device, args) -> dict:
    """Each variant timed `args.rounds` times, in turn (A B A B ...), so a machine that
    speeds up or slows down during the run favours none; the median round is kept."""
    rounds: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, cfg in variants.items():
            style = VARIANT_STYLES.get(name, contextlib.nullcontext)()
            src = args.official_src if name == "official" else None
            with style:
                rounds[name].append(run_variant(cfg, device, args.steps, args.warmup, src))
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
    parser.add_argument(
        "--eager-inference",
        action="store_true",
        help="also time `jepa` with its no-grad blocks (the target encoder) run eagerly",
    )
    parser.add_argument(
        "--official-src", help="a checkout of facebookresearch/ijepa: time its own modules too"
    )
    parser.add_argument("--split", action="store_true", help="print where a step's time goes")
    parser.add_argument(
        "--vs",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="another recipe to time beside `jepa` in the same rounds: the config with these "
        "overrides (repeatable); with --no-baseline the ratios are against `jepa`",
    )
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


def component_times(cfg: JEPAConfig, device: torch.device, steps: int, warmup: int) -> dict:
    """Median milliseconds of each part of a `jepa` training step."""
    model = IJEPA.from_config(cfg).to(device)
    optimizer = build_optimizer(cfg, model, device)
    collator = build_collator(cfg)
    parts: dict[str, list[float]] = {}

    def lap(name: str, start: float) -> float:
        sync(device)
        now = time.perf_counter()
        parts.setdefault(name, []).append((now - start) * 1e3)
        return now

    for i in range(warmup + steps):
        batch = collator(synthetic_samples(cfg, cfg.batch_size, i * cfg.batch_size))
        images = batch.images.to(device)
        m_ctx = [m.to(device) for m in batch.masks_enc]
        m_tgt = [m.to(device) for m in batch.masks_pred]
        with autocast(cfg.amp, device):
            t = lap("(start)", time.perf_counter())
            targets = model.forward_target(images, m_tgt, len(m_ctx))
            t = lap("target encoder forward", t)
            z = model.encoder(images, m_ctx)
            t = lap("context encoder forward", t)
            predictions = model.predictor(z, m_ctx, m_tgt)
            loss = LOSSES[model.loss_name](predictions, targets.to(predictions.dtype))
            t = lap("predictor forward + loss", t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t = lap("backward (context encoder + predictor)", t)
        optimizer.step()
        model.update_target(0.996)
        lap("optimizer + EMA", t)
    del parts["(start)"]
    return {name: statistics.median(ms[warmup:]) for name, ms in parts.items()}


def print_split(cfg: JEPAConfig, device: torch.device, steps: int, warmup: int) -> None:
    times = component_times(cfg, device, steps, warmup)
    total = sum(times.values())
    print(f"where a `jepa` step (batch {cfg.batch_size}) spends its {total:.1f} ms:")
    print("| part | ms | share |")
    print("|---|---:|---:|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |")


def build_variants(cfg: JEPAConfig, args: argparse.Namespace) -> dict[str, JEPAConfig]:
    """The variants the command line asks for, by name, each with its config."""
    variants = {"jepa": cfg}
    if args.compile:
        variants["jepa compiled"] = cfg.replace(compile=True)
    if args.eager_inference:
        variants["jepa, eager inference"] = cfg
    if not args.no_baseline:
        variants["baseline"] = cfg
    if args.official_src:
        variants["official"] = cfg
    for spec in args.vs:
        variants[f"jepa, {spec}"] = cfg.replace(**parse_overrides(spec.split()))
    return variants


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
        variants = build_variants(cfg, args)
        results = time_in_rounds(variants, device, args)
        flops = {
            name: step_flops(
                variants[name], device, name.removesuffix(" compiled"), args.official_src
            )
            for name in variants
        }
        if args.split:
            print_split(cfg, device, args.steps, args.warmup)
        base = results.get("official") or results.get("baseline")
        if base is None and args.vs:
            base = results["jepa"]
        for name, r in results.items():
            seconds = (r["collate_ms"] + r["model_ms"]) / 1e3
            rows.append(
                {
                    "variant": name,
                    "batch": cfg.batch_size,
                    **r,
                    "gflop_per_image": flops[name] / cfg.batch_size / 1e9,
                    "tflops": flops[name] / seconds / 1e12,
                    "mfu": flops[name] / seconds / 1e12 / peak,
                    "ratio": (base["collate_ms"] + base["model_ms"]) / 1e3 / seconds
                    if base
                    else None,
                }
            )
    if device.type != "cuda":
        print("(CPU peak memory is the process's maximum RSS so far, not per variant)")
    print(f"MFU is against the {peak_source} ({peak:.2f} TFLOP/s)")
    print(
        "vs baseline: the official code's step when --official-src is given, else `baseline`"
        + (", else `jepa`" if args.vs else "")
    )
    print_table(rows)
    assert F.scaled_dot_product_attention is not naive_attention  # restored


if __name__ == "__main__":
    main()

"""Recipe ablation: pretrain one configuration, then probe it under the standard protocol.

    python -m bench.recipe --name lr2e-3 --set lr=2e-3 epochs=3
    python -m bench.recipe --name ema --config params.yaml --set ema=[0.996,1.0] --seeds 0,1

Per run: `jepa.train.pretrain` on the configuration (`--config`, default `params.yaml`,
then `--set` overrides), then `jepa.evaluate.extract` and `jepa.evaluate.probe` of the
exported target encoder: the linear probe fit on the whole training split, its C chosen on
a stratified held-out 10% of it (`val_top1`, what recipes are chosen by), the test split
scored once (`top1`, reported beside), and kNN top-1. The training FLOPs per image come
from torch's flop counter (`bench/train_step.py`), averaged over 8 steps' mask draws, so
arms can be compared at equal compute; the machine's fp32 matmul rate is measured before
and after each run's pretraining, since wall times mean little without it. One JSON line
per run is appended to `--out` (default `bench/results/recipes.jsonl`), and the table of
every run recorded there is printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from jepa.config import JEPAConfig
from jepa.evaluate import extract, probe
from jepa.train import pretrain

RESULTS = Path("bench/results/recipes.jsonl")
FLOP_SAMPLES = 8  # steps whose masks the FLOPs per image are averaged over


def run_arm(cfg: JEPAConfig, work: Path) -> dict:
    """Pretrain `cfg` in `work`, probe its encoder; the figures of one arm."""
    from bench.train_step import matmul_tflops, step_flops

    cfg = cfg.replace(output_dir=str(work / "run"), progress=False, checkpoint_every=10**9)
    flops = step_flops(cfg, torch.device("cpu"), samples=FLOP_SAMPLES) / cfg.batch_size
    # Wall times are only comparable beside the machine's speed, which drifts (CPU steal).
    tflops_before = matmul_tflops(torch.device("cpu"), torch.float32)
    summary = pretrain(cfg)
    tflops_after = matmul_tflops(torch.device("cpu"), torch.float32)
    start = time.perf_counter()
    extract(cfg, work / "run" / "encoder", work / "features", kind="pretrained")
    metrics = probe(cfg, work / "features")
    return {
        "train_s": round(summary["wall_time_s"], 1),
        "images_per_s": round(summary["images_per_s"], 1),
        "steps": summary["steps"],
        "gflop_per_image": round(flops / 1e9, 4),
        "train_tflop": round(flops * summary["steps"] * cfg.batch_size / 1e12, 2),
        "monitor_knn_top1": summary["monitor_knn_top1"],
        "monitor_share": round(summary["monitor_share"], 4),
        "val_top1": round(metrics["val_top1"], 4),
        "top1": round(metrics["top1"], 4),
        "knn_top1": round(metrics["knn_top1"], 4),
        "eval_s": round(time.perf_counter() - start, 1),
        "fp32_tflops": [round(tflops_before, 3), round(tflops_after, 3)],
    }


def rate_text(row: dict) -> str:
    """A row's fp32 matmul rates, before–after its pretraining ("?" for rows without)."""
    return "–".join(f"{t:.3f}" for t in row.get("fp32_tflops", [])) or "?"


def print_table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(
        "| arm | seed | steps | TFLOP | train s | fp32 TFLOP/s | val top-1 | test top-1 | kNN "
        "| monitor kNN |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['seed']} | {r['steps']} | {r['train_tflop']} | {r['train_s']} "
            f"| {rate_text(r)} | {100 * r['val_top1']:.1f} | {100 * r['top1']:.1f} "
            f"| {100 * r['knn_top1']:.1f} | {100 * (r['monitor_knn_top1'] or 0):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="the arm's name in the table")
    parser.add_argument("--config", default="params.yaml", help="flat YAML config")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each seed's run and features in DIR/<name>-seed<seed> (default: deleted)",
    )
    args = parser.parse_args()
    from bench.train_step import parse_overrides

    overrides = parse_overrides(args.set)
    base = JEPAConfig.from_yaml(args.config).replace(**overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.keep is not None:
            work = args.keep / f"{args.name}-seed{seed}"
            work.mkdir(parents=True, exist_ok=False)
            figures = run_arm(base.replace(seed=seed), work)
        else:
            with tempfile.TemporaryDirectory(prefix="recipe-") as work:
                figures = run_arm(base.replace(seed=seed), Path(work))
        row = {"name": args.name, "seed": seed, "overrides": overrides, **figures}
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)  # a long sweep shows each run as it ends
    print_table(args.out)


if __name__ == "__main__":
    main()

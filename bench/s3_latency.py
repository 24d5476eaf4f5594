"""Benchmark: does a slow S3 endpoint slow training? Step time with checkpoint uploads to a
loopback endpoint that answers every request after `--delay` seconds, against no mirror.

    python bench/s3_latency.py                      # the pipeline's model (params.yaml), 2 s
    python bench/s3_latency.py --config params.yaml --steps 40 --checkpoint-every 2 --delay 2

Everything runs in this process: a moto S3 server on 127.0.0.1 behind the test suite's
delaying proxy (`tests/s3server.py`, `tests/s3proxy.py`; needs moto), and `jepa.train.pretrain`
on generated Fashion-MNIST-format images. The variants alternate in rounds (median of
`--rounds`); each mirrored round uses a fresh S3 prefix, so no round resumes another's run.
Step time is the median gap between consecutive steps' `elapsed_s` in the step log (every
step logged; the first `--skip` steps left out), so it includes the checkpoint saves and
whatever the background uploader costs the training thread, but not the start nor the end,
where the last upload is awaited (the `start + end s` column: setup, the start's look for a
mirrored checkpoint, and that wait; `uploads` counts the checkpoint PUTs that reached S3). The machine's fp32
matmul rate is printed first, as `bench/train_step.py` does, to compare machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]

from fmnist_data import write_tiny_fmnist  # noqa: E402
from s3proxy import FaultyProxy  # noqa: E402
from s3server import CLEARED_ENV, FAKE_ENV, running_s3_server  # noqa: E402
from train_step import matmul_tflops  # noqa: E402

from jepa.config import JEPAConfig  # noqa: E402
from jepa.train import pretrain  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params.yaml", help="flat YAML config")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds per S3 request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", type=int, default=3, help="first steps left out (warm-up)")
    return parser.parse_args()


def bench_config(args: argparse.Namespace, data: Path, out: Path) -> JEPAConfig:
    """The config file's model and batch on `data`, `args.steps` steps, every step logged."""
    cfg = JEPAConfig.from_yaml(args.config)
    return cfg.replace(
        root_path=str(data), pretrain_subset=None, epochs=1000, max_steps=args.steps,
        checkpoint_every=args.checkpoint_every, log_every=1, diagnostics_every=10**6,
        knn_monitor_images=0, num_workers=0, progress=False, device="cpu", output_dir=str(out),
    )  # fmt: skip


def step_times(out: Path, skip: int) -> list[float]:
    """Seconds between consecutive logged steps, after the first `skip`."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if "elapsed_s" in r][skip:]
    return [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)]


def run_once(cfg: JEPAConfig, skip: int) -> dict:
    start = time.perf_counter()
    summary = pretrain(cfg)
    total = time.perf_counter() - start
    gaps = step_times(Path(cfg.output_dir), skip)
    return {
        "step_s": statistics.median(gaps),
        "mean_s": statistics.fmean(gaps),
        "outside_s": total - summary["wall_time_s"],
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    measured = matmul_tflops(torch.device("cpu"), torch.float32)
    print(f"measured torch.float32 matmul (2048^3) on cpu: {measured:.2f} TFLOP/s")
    for name in CLEARED_ENV:  # nothing may send this process to another endpoint
        os.environ.pop(name, None)
    os.environ.update(FAKE_ENV)
    results: dict[str, list[dict]] = {"no mirror": [], f"mirror, {args.delay:g} s/request": []}
    with tempfile.TemporaryDirectory() as tmp, running_s3_server() as s3:
        tmp = Path(tmp)
        bucket = s3.create_bucket()
        data = write_tiny_fmnist(tmp / "data", num_train=640, num_test=64)
        with FaultyProxy(s3.endpoint_url, delay_s=args.delay) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint_url
            for round_ in range(args.rounds):
                for name in results:
                    out = tmp / f"{round_}-{len(results[name])}-{name[:6]}"
                    cfg = bench_config(args, data, out)
                    if name != "no mirror":
                        cfg = cfg.replace(checkpoint_uri=f"s3://{bucket}/round-{round_}")
                    before = proxy.count("PUT", "latest.pt")
                    result = run_once(cfg, args.skip)
                    result["uploads"] = proxy.count("PUT", "latest.pt") - before
                    results[name].append(result)
    baseline = statistics.median(r["step_s"] for r in results["no mirror"])
    checkpoints = args.steps // args.checkpoint_every
    print(
        f"\n{args.steps} steps of {Path(args.config).name}'s model (batch {cfg.batch_size}), a "
        f"checkpoint every {args.checkpoint_every} ({checkpoints}+), median of {args.rounds} rounds"
    )
    print(
        "| variant | step ms (median) | step ms (mean) | vs no mirror | uploads | start + end s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        step, mean, uploads, outside = (
            statistics.median(r[key] for r in rows)
            for key in ("step_s", "mean_s", "uploads", "outside_s")
        )
        print(
            f"| {name} | {1e3 * step:.1f} | {1e3 * mean:.1f} | {step / baseline:.3f}x "
            f"| {uploads:g} | {outside:.1f} |"
        )


if __name__ == "__main__":
    main()

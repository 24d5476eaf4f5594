"""Time the evaluation of exported encoders, alternating in one process.

    .venv/bin/python bench/eval_cost.py --encoder 4-deep=/tmp/a/pretrain/encoder \\
        --encoder 3-deep=pretrain/encoder --rounds 2

Evaluation is what the pipeline's `extract` and `probe` stages do with one encoder:
`jepa.evaluate.extract` of the whole training and test splits, then `jepa.evaluate.probe`
(the L-BFGS probe under the standard protocol, and kNN). Each encoder is read with
`params.yaml`'s dataset and evaluation settings; `probe_last_blocks` follows the
encoder's depth (all of its blocks, at most 4), as each default probes its own encoder.
`--amp none,bf16` times every encoder under each precision of its forward passes
(`jepa.device.autocast`), with the probe's figures beside; `--batch-size 128,32` under
each extraction batch size (`eval_batch_size`); `--eager-inference` also with the encoder's
blocks run eagerly instead of on oneDNN's fused linears (`jepa.models.vit.fused_inference`),
the same math. The first encoder, under the first
precision and batch size, is the baseline. Rounds alternate the encoders so that a
machine whose speed drifts (CPU steal) hits them alike; the table gives the median seconds of each part
and the ratio to the baseline, beside the machine's fp32 matmul rate before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

try:  # run as `python bench/eval_cost.py` (the bench folder on sys.path) or as a module
    from train_step import matmul_tflops
except ImportError:  # pragma: no cover
    from bench.train_step import matmul_tflops

from jepa.config import AMP_MODES, JEPAConfig, load_params
from jepa.evaluate import extract, probe
from jepa.export import load_encoder
from jepa.models.vit import eager_inference


def parse_encoder(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--encoder {text!r}: expected NAME=PATH")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"--encoder {text!r}: {path} does not exist")
    return name, Path(path)


def parse_amps(text: str) -> list[str]:
    amps = text.split(",")
    unknown = [amp for amp in amps if amp not in AMP_MODES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--amp {text!r}: {', '.join(map(repr, unknown))} is not one of "
            f"{', '.join(map(repr, AMP_MODES))}"
        )
    return amps


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(item) for item in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"--batch-size {text!r}: expected positive integers separated by commas, e.g. 128,32"
        )
    return sizes


def evaluate_once(cfg: JEPAConfig, encoder: Path, work: Path) -> dict[str, float]:
    """Seconds of extraction and of probe + kNN, and the probe's figures, for one encoder."""
    start = time.perf_counter()
    extract(cfg, encoder, work, kind="pretrained")
    extracted = time.perf_counter()
    metrics = probe(cfg, work)
    done = time.perf_counter()
    return {
        "extract_s": extracted - start,
        "probe_s": done - extracted,
        "total_s": done - start,
        "val_top1": metrics["val_top1"],
        "top1": metrics["top1"],
    }


def build_arms(
    base: JEPAConfig,
    encoders: list[tuple[str, Path]],
    amps: list[str],
    sizes: list[int],
    eager: bool = False,
) -> tuple[list[tuple[str, Path, bool]], dict[str, JEPAConfig]]:
    """`(arm name, encoder path, eager)` for every encoder x precision x batch size (x
    fused and eager inference, with `eager`), in that order, and each arm's config (the
    depth and probed blocks follow the encoder)."""
    arms, configs = [], {}
    for name, path in encoders:
        depth = load_encoder(path).model_args()["depth"]
        for amp, size, run_eager in itertools.product(amps, sizes, (False, True)[: 1 + eager]):
            arm = name + ("" if len(amps) == 1 else f", amp={amp}")
            arm += "" if len(sizes) == 1 else f", batch {size}"
            arm += ", eager inference" if run_eager else ""
            arms.append((arm, path, run_eager))
            configs[arm] = base.replace(
                depth=depth,
                target_last_blocks=min(base.target_last_blocks, depth),
                probe_last_blocks=min(depth, 4),
                amp=amp,
                eval_batch_size=size,
            )
    return arms, configs


def print_table(
    arms: list[tuple[str, Path, bool]],
    configs: dict[str, JEPAConfig],
    times: dict[str, list[dict[str, float]]],
) -> None:
    """One row per arm: the median seconds of each part, the ratio to the first arm, and
    the probe's figures."""
    print(
        "| encoder | blocks probed | extract s | probe + kNN s | total s | vs baseline | val top-1 | test top-1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    baseline = None
    for name, _, _ in arms:
        med = {k: statistics.median(t[k] for t in times[name]) for k in times[name][0]}
        baseline = baseline or med["total_s"]
        print(
            f"| {name} | {configs[name].probe_last_blocks} | {med['extract_s']:.1f} "
            f"| {med['probe_s']:.1f} | {med['total_s']:.1f} | {med['total_s'] / baseline:.2f}× "
            f"| {100 * med['val_top1']:.2f} | {100 * med['top1']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--encoder", type=parse_encoder, action="append", required=True, help="NAME=PATH"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--amp",
        type=parse_amps,
        default=[],
        help="comma-separated precisions to time each encoder under (default: params' amp)",
    )
    parser.add_argument(
        "--batch-size",
        type=parse_sizes,
        default=[],
        help="comma-separated extraction batch sizes (default: params' eval_batch_size)",
    )
    parser.add_argument(
        "--eager-inference",
        action="store_true",
        help="also time each arm with the encoder's blocks run eagerly (not fused)",
    )
    args = parser.parse_args()

    base = load_params(args.params)[0].replace(progress=False)
    arms, configs = build_arms(
        base,
        args.encoder,
        args.amp or [base.amp],
        args.batch_size or [base.eval_batch_size],
        args.eager_inference,
    )
    cpu = torch.device("cpu")
    rate_before = matmul_tflops(cpu, torch.float32)
    times: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, path, run_eager in arms:
                work = Path(tmp) / f"{name}-{r}"
                with eager_inference() if run_eager else contextlib.nullcontext():
                    times[name].append(evaluate_once(configs[name], path, work))
                print(f"round {r + 1}: {name} {times[name][-1]['total_s']:.1f} s", flush=True)
    rate_after = matmul_tflops(cpu, torch.float32)

    print(f"\nfp32 matmul {rate_before:.3f} TFLOP/s before, {rate_after:.3f} after")
    print(f"median of {args.rounds} alternating rounds; the first encoder is the baseline\n")
    print_table(arms, configs, times)


if __name__ == "__main__":
    main()

"""Time the linear-probe backends on real features, the standard protocol, one process.

    .venv/bin/python bench/probe.py --features features/pretrained   # after `dvc repro`
    .venv/bin/python bench/probe.py --features features/pretrained --pixels

The protocol is `jepa.probe.linear_probe`'s (C chosen on a stratified 10% of the TRAINING
split, refit on all of it, the test split read once): sklearn's L-BFGS first (the
accuracy baseline), then the lbfgs backend driven by `torch.optim.LBFGS` (the speed
baseline: the probe's minimiser until 2026-12-07), then the lbfgs backend as it runs
(`jepa.lbfgs`) at torch's thread count and on one thread. With
`--pixels` the raw-pixel features of the same dataset (the pipeline's baseline) are probed
too, read from `params.yaml`'s dataset. Prints one table: seconds, top-1, the chosen C and
each backend's top-1 difference from sklearn, beside the machine's fp32 matmul rate and
the seconds a fresh process spends importing `torch._dynamo` (which `torch.optim` does).

A second table times one evaluation of the L-BFGS objective (penalised cross-entropy and
its gradient) on the standardised training features: autograd's forward and backward, the
baseline, against `probe.MultinomialObjective` at several chunk sizes, alternating, median
of 5 rounds of 10 evaluations each.

A third table checks convergence along the C grid (`--grid`, default the protocol's): the
probe's `LbfgsFitter` at its default tolerance against the same fitter at a tolerance of
1e-6 with ten times the iterations (the reference), each warm-started along the grid as
the protocol is: validation top-1 at every C, L-BFGS iterations, and the grid's seconds.

A fourth table times `probe.knn_accuracy` (the pipeline's k-NN, k = 20) at several chunk
sizes, 1024 rows (the chunk before 2026-12-06) the baseline, alternating, median of 3
rounds; each must give the baseline's top-1. `--tables knn` runs that table alone.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning

from jepa import lbfgs, probe
from jepa.features import load_features

try:  # run as `python bench/probe.py` (the bench folder on sys.path) or as a module
    from startup import REPO, seconds
    from train_step import matmul_tflops
except ImportError:  # pragma: no cover
    from bench.startup import REPO, seconds
    from bench.train_step import matmul_tflops


def pixel_features(params: Path) -> tuple[np.ndarray, ...]:
    """The pixel baseline's features `(train_x, train_y, test_x, test_y)` for `params`."""
    from jepa.config import load_params
    from jepa.data import build_dataset
    from jepa.evaluate import PixelEncoder
    from jepa.features import extract_features

    cfg, _ = load_params(params)
    out = []
    for split in ("train", "test"):
        loader = torch.utils.data.DataLoader(
            build_dataset(cfg, split, train_transform=False), batch_size=1024
        )
        out += extract_features(PixelEncoder(), loader, progress=False)
    return tuple(out)


def torch_optim_minimize(
    function, x: torch.Tensor, *, max_iter: int, tolerance_grad: float, history_size: int
) -> lbfgs.Result:
    """`jepa.lbfgs.minimize`'s interface driven by `torch.optim.LBFGS`, as the probe
    minimised until 2026-12-07: the baseline of the backends table."""
    point = x.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [point],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=1e-10,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        value, point.grad = function(point.detach())
        return value

    optimizer.step(closure)
    value, gradient = function(point.detach())
    iterations = int(optimizer.state[point]["n_iter"])
    return lbfgs.Result(point.detach(), float(value), gradient, iterations, evaluations)


def time_backends(name: str, data: tuple[np.ndarray, ...], threads: int) -> list[dict]:
    """sklearn (the accuracy reference), the lbfgs backend driven by `torch.optim.LBFGS`
    (the speed baseline), and the lbfgs backend as it runs, on all threads and on one."""
    train_x, train_y, test_x, test_y = data
    train_x = np.asarray(train_x, dtype=np.float32)
    # Imported before timing, so that no row pays the import (printed beside the table).
    importlib.import_module("torch._dynamo")
    runs = [
        ("sklearn", None, None),
        ("lbfgs, torch.optim", None, torch_optim_minimize),
        ("lbfgs", None, None),
        ("lbfgs", 1, None),
    ]
    rows, reference = [], None
    for label, thread_count, minimizer in runs:
        backend = label.split(",")[0]
        options = {"minimizer": minimizer} if minimizer else {}
        with probe.torch_threads(thread_count), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            metrics = probe.linear_probe(
                train_x, train_y, test_x, test_y, backend=backend, **options
            )
            seconds = time.perf_counter() - start
        reference = metrics["top1"] if reference is None else reference
        rows.append(
            {
                "features": f"{name} ({train_x.shape[1]}-d)",
                "backend": label
                + ("" if backend == "sklearn" else f", {thread_count or threads} thr"),
                "seconds": seconds,
                "top1": metrics["top1"],
                "C": metrics["hyperparameters"]["C"],
                "vs sklearn": metrics["top1"] - reference,
            }
        )
    return rows


def autograd_objective(inputs: torch.Tensor, labels: torch.Tensor, penalty: float):
    """The objective as the probe computed it before `MultinomialObjective`: autograd."""

    def evaluate(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight = weight.detach().requires_grad_()
        bias = bias.detach().requires_grad_()
        loss = F.cross_entropy(F.linear(inputs, weight, bias), labels)
        loss = loss + penalty * weight.square().sum()
        loss.backward()
        return loss.detach(), weight.grad, bias.grad

    return evaluate


def time_objectives(name: str, data: tuple[np.ndarray, ...], rounds: int = 5, calls: int = 10):
    """Median ms per objective evaluation of autograd and of the chunked objective."""
    train_x, train_y = np.asarray(data[0], dtype=np.float32), np.asarray(data[1])
    mean, std = probe.feature_moments(probe.Rows(train_x))
    inputs = (torch.from_numpy(train_x) - torch.from_numpy(mean)) / torch.from_numpy(std)
    labels = torch.from_numpy(train_y.astype(np.int64))
    classes = int(labels.max()) + 1
    generator = torch.Generator().manual_seed(0)
    weight = 0.01 * torch.randn(classes, inputs.shape[1], generator=generator)
    bias = torch.zeros(classes)
    penalty = 1.0 / (2.0 * 0.1 * len(labels))  # C = 0.1
    variants = {"autograd (baseline)": autograd_objective(inputs, labels, penalty)}
    for mib in (1, 4, 16):
        variants[f"chunked, {mib} MiB"] = probe.MultinomialObjective(
            inputs, labels, penalty, chunk_bytes=mib << 20
        )
    reference = variants["autograd (baseline)"](weight, bias)
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, function in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                result = function(weight, bias)
            times[key].append(1000 * (time.perf_counter() - start) / calls)
            for got, want in zip(result, reference, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    base = statistics.median(times["autograd (baseline)"])
    return [
        {
            "features": f"{name} ({inputs.shape[0]} x {inputs.shape[1]})",
            "objective": key,
            "ms": statistics.median(values),
            "speed-up": base / statistics.median(values),
        }
        for key, values in times.items()
    ]


KNN_CHUNKS = (1024, 2048, 4096)  # the first is the baseline


def time_knn(name: str, data: tuple[np.ndarray, ...], rounds: int = 3) -> list[dict]:
    """Median seconds of `probe.knn_accuracy` at each of `KNN_CHUNKS`, alternating."""
    train_x, train_y, test_x, test_y = (np.asarray(a) for a in data)
    times: dict[int, list[float]] = {size: [] for size in KNN_CHUNKS}
    top1: dict[int, float] = {}
    for _ in range(rounds):
        for size in KNN_CHUNKS:
            start = time.perf_counter()
            result = probe.knn_accuracy(train_x, train_y, test_x, test_y, batch_size=size)
            times[size].append(time.perf_counter() - start)
            top1.setdefault(size, result["knn_top1"])
            if result["knn_top1"] != top1[KNN_CHUNKS[0]]:
                raise AssertionError(f"k-NN at chunk {size} disagrees with the baseline")
    base = statistics.median(times[KNN_CHUNKS[0]])
    return [
        {
            "features": f"{name} ({len(train_x)} bank x {len(test_x)} queries)",
            "chunk": size,
            "seconds": statistics.median(values),
            "speed-up": base / statistics.median(values),
            "top1": top1[size],
        }
        for size, values in times.items()
    ]


REFERENCE_TOLERANCE = 1e-6  # the convergence table's reference fit


def convergence(name: str, data: tuple[np.ndarray, ...], grid: list[float]) -> list[dict]:
    """Validation top-1 along `grid` for the default fitter and a tightly converged one."""
    train_x, train_y = np.asarray(data[0], dtype=np.float32), np.asarray(data[1])
    fit_idx, val_idx = probe.stratified_holdout(train_y, 0.1, 0)
    fit_part, val_part = probe.Rows(train_x, fit_idx), probe.Rows(train_x, val_idx)
    fitters = {
        f"default ({probe.LBFGS_TOLERANCE:g})": probe.LbfgsFitter(),
        f"reference ({REFERENCE_TOLERANCE:g})": probe.LbfgsFitter(
            tolerance=REFERENCE_TOLERANCE, max_iter=10 * probe.LBFGS_MAX_ITER
        ),
    }
    rows = []
    for label, fitter in fitters.items():
        start, accuracies = time.perf_counter(), []
        for c in grid:
            scorer = fitter(fit_part, train_y[fit_idx], {"C": c})
            scores = probe.predict_scores(scorer, val_part)
            accuracies.append(probe.top1_accuracy(scores, train_y[val_idx]))
        rows.append(
            {
                "features": f"{name} ({train_x.shape[1]}-d)",
                "fitter": label,
                "seconds": time.perf_counter() - start,
                "iterations": fitter.iterations,
                "val": accuracies,
            }
        )
    return rows


def print_tables(
    rows: list[dict],
    objective_rows: list[dict],
    convergence_rows: list[dict],
    knn_rows: list[dict],
    grid: list[float],
) -> None:
    """Print each table that has rows."""
    if rows:
        print(
            f"\n{'features':<24} {'backend':<26} {'seconds':>8} {'top1 %':>8} {'C':>7} "
            f"{'vs sklearn':>11}"
        )
    for row in rows:
        print(
            f"{row['features']:<24} {row['backend']:<26} {row['seconds']:>8.1f} "
            f"{100 * row['top1']:>8.2f} {row['C']:>7.3g} {100 * row['vs sklearn']:>+10.2f}"
        )
    if objective_rows:
        print("\n| features | objective (loss and gradient) | ms per evaluation | speed-up |")
        print("|---|---|---:|---:|")
    for row in objective_rows:
        print(
            f"| {row['features']} | {row['objective']} | {row['ms']:.1f} | {row['speed-up']:.2f}x |"
        )
    if convergence_rows:
        header = " | ".join(f"C {c:g}" for c in grid)
        print(f"\n| features | fitter | seconds | {header} |")
        print("|---|---|---:|" + "---:|" * len(grid))
    for row in convergence_rows:
        cells = " | ".join(
            f"{100 * v:.2f} ({n})" for v, n in zip(row["val"], row["iterations"], strict=True)
        )
        print(f"| {row['features']} | {row['fitter']} | {row['seconds']:.1f} | {cells} |")
    if convergence_rows:
        print("(validation top-1 %, in parentheses the fit's L-BFGS iterations)")
    if knn_rows:
        print("\n| features | k-NN chunk (rows) | seconds | speed-up | kNN top-1 % |")
        print("|---|---:|---:|---:|---:|")
    for row in knn_rows:
        print(
            f"| {row['features']} | {row['chunk']} | {row['seconds']:.2f} "
            f"| {row['speed-up']:.2f}x | {100 * row['top1']:.2f} |"
        )


TABLES = ("backends", "objective", "convergence", "knn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, help="a feature directory (train/test .npy)")
    parser.add_argument("--pixels", action="store_true", help="also the raw-pixel baseline")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--grid",
        type=float,
        nargs="+",
        default=list(probe.DEFAULT_C_GRID),
        help="the Cs of the convergence table (default: the protocol's grid)",
    )
    parser.add_argument(
        "--tables",
        default=",".join(TABLES),
        help=f"comma-separated tables to run (default: all of {', '.join(TABLES)})",
    )
    args = parser.parse_args()
    tables = set(args.tables.split(","))
    if tables - set(TABLES):
        parser.error(f"--tables: unknown {sorted(tables - set(TABLES))}; choose from {TABLES}")
    if args.features is None and not args.pixels:
        parser.error("give --features DIR, --pixels, or both")
    threads = torch.get_num_threads()
    rate = matmul_tflops(torch.device("cpu"), torch.float32)
    rows, objective_rows, convergence_rows, knn_rows = [], [], [], []
    sources = []
    if args.features is not None:
        data = (*load_features(args.features, "train"), *load_features(args.features, "test"))
        sources.append((args.features.name, data))
    if args.pixels:
        sources.append(("pixels", pixel_features(args.params)))
    for name, data in sources:
        if "objective" in tables:
            objective_rows += time_objectives(name, data)
        if "backends" in tables:
            rows += time_backends(name, data, threads)
        if "convergence" in tables:
            convergence_rows += convergence(name, data, args.grid)
        if "knn" in tables:
            knn_rows += time_knn(name, data)
    print(f"machine: fp32 matmul {rate:.3f} TFLOP/s, torch threads {threads}")
    if rows:
        print(
            f"a fresh process imports torch._dynamo, which any torch.optim optimizer does, in "
            f"{seconds(REPO, 'import torch._dynamo', setup='import torch'):.2f} s "
            "(not in the table: this process imported it once)"
        )
    print_tables(rows, objective_rows, convergence_rows, knn_rows, args.grid)


if __name__ == "__main__":
    main()

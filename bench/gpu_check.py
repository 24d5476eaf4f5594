"""One prepared check of the GPU path; prints one table. `bench/gpu_check.sh` runs it.

    bash bench/gpu_check.sh --data /usr/share/datasets/fashion-mnist   # <= 5 min on one GPU
    bash bench/gpu_check.sh --data DIR --quick                          # seconds, any machine

Parts (each a row of the table; on a machine without CUDA the GPU parts are skipped, each
named, and the rest runs small, so CI keeps the script alive):
1. the CUDA tests (`tests/test_cuda.py`, pytest marker `cuda`), with pytest when it is
   installed and with a minimal runner otherwise;
2. `bench/train_step.py` for ViT-S/16 and ViT-B/16 at 224 px in bf16, at batch 64 and at
   the largest batch that fits comfortably (peak memory under 60% of the GPU's), eager
   and compiled, against the official-style baseline: images/s, MFU, peak memory;
3. the data-wait share of the step on a generated JPEG image folder at 224 px, through
   the real decode + crop path with the default worker count;
4. a short pretraining and evaluation through the library's own commands (`jepa train`,
   then `jepa eval`) on `--data`, ending with the results table; every logged loss must be
   finite.

Needs only torch, torchvision, numpy, scikit-learn, safetensors, tqdm, PyYAML and
matplotlib (no DVC, Prefect, Hydra or boto3): configs are the flat YAML files in
`bench/configs/`, composed from `jepa/conf` (tests/test_hydra.py checks they still are):

    python -m pipelines.compose experiment=seed_vitb16 --out bench/configs/vitb16_224.yaml
    python -m pipelines.compose experiment=seed_vitb16 model=vit_small --out bench/configs/vits16_224.yaml
    python -m pipelines.compose epochs=3 --out bench/configs/fmnist_e2e.yaml
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bench" / "configs"
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import train_step as bench  # noqa: E402  (bench/train_step.py)

from jepa.config import JEPAConfig  # noqa: E402
from jepa.runs import RunFiles  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def row(check: str, result: str, detail: str = "") -> None:
    ROWS.append((check, result, detail))
    print(f"[{result}] {check}: {detail}", flush=True)


def skip_without_cuda(check: str) -> bool:
    if torch.cuda.is_available():
        return False
    row(check, "skipped", "no CUDA device visible")
    return True


# ---- 1. the CUDA tests ------------------------------------------------------------------------


def cuda_tests() -> None:
    import test_cuda

    names = [n for n in dir(test_cuda) if n.startswith("test_")]
    if not torch.cuda.is_available():
        for name in names:
            row(f"cuda test {name}", "skipped", "no CUDA device visible")
        return
    if importlib.util.find_spec("pytest") is not None:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests/test_cuda.py")],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        row("cuda tests (pytest -m cuda)", "pass" if done.returncode == 0 else "FAIL", tail)
        if done.returncode:
            print(done.stdout[-6000:], done.stderr[-3000:])
        return
    for name in names:  # no pytest here: call each test with a fresh tmp_path
        with tempfile.TemporaryDirectory() as tmp:
            fn = getattr(test_cuda, name)
            kwargs = (
                {"tmp_path": Path(tmp)} if "tmp_path" in inspect.signature(fn).parameters else {}
            )
            try:
                fn(**kwargs)
                row(f"cuda test {name}", "pass")
            except Exception as err:  # report every test, then fail the check
                traceback.print_exc()
                row(f"cuda test {name}", "FAIL", f"{type(err).__name__}: {err}"[:200])


# ---- 2. the training-step benchmark ------------------------------------------------------------


def bench_config(name: str, batch: int) -> JEPAConfig:
    cfg = JEPAConfig.from_yaml(CONFIGS / f"{name}.yaml")
    return cfg.replace(batch_size=batch, progress=False, amp="bf16", device="cuda")


def largest_batch(name: str, device: torch.device, limit: int = 2048) -> int:
    """The largest power-of-two batch whose step peaks under 60% of the GPU's memory."""
    total = torch.cuda.get_device_properties(device).total_memory
    best, batch = 64, 64
    while batch <= limit:
        torch.cuda.empty_cache()
        try:
            peak = bench.run_variant(bench_config(name, batch), device, steps=1, warmup=1)[
                "peak_mb"
            ]
        except torch.cuda.OutOfMemoryError:
            break
        if peak * 2**20 > 0.6 * total:
            break
        best, batch = batch, batch * 2
    torch.cuda.empty_cache()
    return best


def step_benchmark(steps: int) -> None:
    if skip_without_cuda("train_step bench ViT-S/16, ViT-B/16 at 224 (bf16)"):
        return
    device = torch.device("cuda")
    peak, source = bench.device_peak(device, torch.bfloat16)
    for name in ("vits16_224", "vitb16_224"):
        for batch in sorted({64, largest_batch(name, device)}):
            cfg = bench_config(name, batch)
            flops = bench.step_flops(cfg, device)
            results = {
                "eager": bench.run_variant(cfg, device, steps, 3),
                "compiled": bench.run_variant(cfg.replace(compile=True), device, steps, 3),
            }
            with bench.official_style():
                results["baseline"] = bench.run_variant(cfg, device, steps, 3)
            base_s = (results["baseline"]["model_ms"] + results["baseline"]["collate_ms"]) / 1e3
            for variant, r in results.items():
                seconds = (r["model_ms"] + r["collate_ms"]) / 1e3
                mfu = flops / seconds / 1e12 / peak
                row(
                    f"step {name} batch {batch} {variant}",
                    "measured",
                    f"{r['images_per_s']:.0f} img/s, MFU {100 * mfu:.1f}% of {peak:.0f} TFLOP/s "
                    f"({source}), peak {r['peak_mb']:.0f} MB, {base_s / seconds:.2f}x baseline",
                )


# ---- 3. data wait ---------------------------------------------------------------------------


def write_jpeg_folder(root: Path, num_images: int, side: int = 256) -> Path:
    """`root/train/<class>/<i>.jpg`: smooth random images, two classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(num_images):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side + side // 4), Image.BILINEAR).save(
            folder / f"{i}.jpg", quality=90
        )
    return root


def data_wait() -> None:
    """Share of the step spent waiting for the next batch (decode + crop + masks)."""
    from jepa.data import build_pretrain_loader, pretrain_dataset
    from jepa.masks import build_collator
    from jepa.models import IJEPA
    from jepa.train import Schedule, build_optimizer, train_step

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name, batch, steps = ("vitb16_224", 64, 30) if cuda else ("vits16_224", 4, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpeg_folder(Path(tmp), batch * (steps + 3) if cuda else 16)
        cfg = JEPAConfig.from_yaml(CONFIGS / f"{name}.yaml").replace(
            dataset="imagefolder", root_path=str(root), batch_size=batch, progress=False,
            device=str(device), **({} if cuda else {"model": "custom", "depth": 1, "num_workers": 0}),
        )  # fmt: skip
        data = build_pretrain_loader(
            cfg, pretrain_dataset(cfg), build_collator(cfg), pin_memory=cuda
        )
        model = IJEPA.from_config(cfg).to(device)
        optimizer = build_optimizer(cfg, model, device)
        schedule = Schedule(cfg, data.steps_per_epoch)
        data.start_epoch(0)
        batches = iter(data.loader)
        wait = total = 0.0
        for i in range(min(steps + 3, data.steps_per_epoch)):
            t0 = time.perf_counter()
            micro = next(batches)
            t1 = time.perf_counter()
            train_step(cfg, model, optimizer, [micro], schedule.at(i), device)
            bench.sync(device)
            if i >= 3 or not cuda:  # the first batches pay for starting the workers
                wait, total = wait + t1 - t0, total + time.perf_counter() - t0
    where = "GPU" if cuda else "CPU (small, to keep the path alive)"
    row(
        f"data wait, JPEG folder at 224, {cfg.num_workers} workers, {name}",
        "measured",
        f"{100 * wait / total:.1f}% of the step on {where}",
    )


# ---- 4. end to end through the CLI ------------------------------------------------------------


def end_to_end(data: Path, quick: bool, work: Path) -> None:
    cuda = torch.cuda.is_available()
    cfg = JEPAConfig.from_yaml(CONFIGS / "fmnist_e2e.yaml").replace(
        root_path=str(data), output_dir=str(work / "run"), device="auto", progress=False
    )
    if quick or not cuda:
        cfg = cfg.replace(max_steps=4, pretrain_subset=512, probe_subset=512, log_every=1)
    config = work / "e2e.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cli = [sys.executable, "-m", "jepa.cli"]
    start = time.perf_counter()
    for args in (["train", "--config", str(config)],
                 ["eval", "--config", str(config), "--read_checkpoint", str(work / "run")]):  # fmt: skip
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, cwd=work)
        if done.returncode:
            row(f"end to end: jepa {args[0]}", "FAIL", done.stderr.strip()[-300:])
            print(done.stdout[-3000:], done.stderr[-6000:])
            return
    losses = [r["loss"] for r in RunFiles(work / "run").read_metrics() if "loss" in r]
    finite = all(math.isfinite(v) for v in losses)
    table = (work / "run" / "eval" / "results.md").read_text()
    print(table)
    row(
        "end to end: jepa train + jepa eval" + (" (bf16 on the GPU)" if cuda else " (CPU)"),
        "pass" if finite and losses else "FAIL",
        f"{len(losses)} logged losses, all finite: {finite}; "
        f"{time.perf_counter() - start:.0f} s; table {work / 'run' / 'eval' / 'results.md'}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="Fashion-MNIST IDX files (the folder holding train-images-idx3-ubyte[.gz])")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a seconds-long run of every part")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per bench variant")
    parser.add_argument("--work", type=Path, default=None, help="keep outputs here")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="jepa-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = {
        "cuda tests": cuda_tests,
        "train_step bench": lambda: step_benchmark(args.steps),
        "data wait": data_wait,
        "end to end": lambda: end_to_end(args.data, args.quick, work),
    }
    for name, part in parts.items():
        try:
            part()
        except Exception as err:  # one broken part must not hide the others' rows
            traceback.print_exc()
            row(name, "FAIL", f"{type(err).__name__}: {err}"[:300])
    print("\n| check | result | detail |\n|---|---|---|")
    for check, result, detail in ROWS:
        print(f"| {check} | {result} | {detail} |")
    return 1 if any(result == "FAIL" for _, result, _ in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())

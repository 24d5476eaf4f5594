"""Time the work around the model's matmuls: item transforms, the optimizer step, extraction.

    .venv/bin/python bench/input_path.py --config params.yaml
    .venv/bin/python bench/input_path.py --config params.yaml --set embed_dim=192 depth=6

Each row is a baseline and the variant the library now uses, timed back to back in this
process on the same inputs (the last row in child processes, see below):

- item transform, ms per image of the configured dataset's training images (in-process
  loading pays it inside every step): the full torchvision v2 pipeline against
  `jepa.data.SizedImageShortcut`, which skips the resize and the whole-area crop that leave
  images of the model's size unchanged (checked bit for bit here);
- training batch loading, ms per batch (collated): each item through the shortcut under its
  own seeded generator, against the whole batch through its batch form
  (`SeededItems.__getitems__`, the same items bit for bit, checked here);
- AdamW step of the configured model, ms: torch's per-tensor loop (its CPU default) against
  the fused kernel `jepa.train.build_optimizer` asks for;
- feature extraction (`forward_features` over the last `probe_last_blocks` blocks, no
  gradients), images/s: batches of 512 against `eval_batch_size` (the experiments use 128:
  larger batches' activations no longer fit the allocator's reused heap, and every batch
  faults fresh pages in); and, at `eval_batch_size`, patch tokens left as a transposed view
  of the convolution's output (the official code's layout, which every residual sum
  inherits) against `jepa.models.vit.patch_tokens`' contiguous copy (same features bit
  for bit, checked here). The two layouts alternate over `ROUNDS` rounds; the best of each
  is reported. Last, the extraction of the test split as the pipeline runs it (loader,
  forward, features written to disk) with glibc's default allocator against
  `jepa.device.keep_freed_memory`: a process-wide setting with no way back, so each of the
  `ROUNDS` rounds runs two fresh child processes, one after the other, of 3 passes each;
  the median pass of each is reported.

The machine's fp32 matmul rate is printed first, so absolute figures can be compared.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch.utils.data import default_collate

from jepa import features
from jepa.data import (
    SeededItems,
    SizedImageShortcut,
    build_dataset,
    build_eval_loader,
    pretrain_dataset,
    pretrain_transform,
)
from jepa.device import keep_freed_memory
from jepa.evaluate import random_encoder
from jepa.models import IJEPA, vit
from jepa.train import build_optimizer

try:  # run as `python bench/input_path.py` (the bench folder on sys.path) or as a module
    from train_step import load_config, matmul_tflops, strided_patch_tokens
except ImportError:  # pragma: no cover
    from bench.train_step import load_config, matmul_tflops, strided_patch_tokens

ROUNDS = 3  # alternating rounds of the token-layout comparison


def per_call_ms(fn: Callable[[], object], *, min_s: float = 1.0, min_calls: int = 3) -> float:
    """Milliseconds per call of `fn` after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_s:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def transform_rows(cfg, images: torch.Tensor) -> list[tuple[str, str, float, float]]:
    transform = pretrain_transform(cfg)
    if not isinstance(transform, SizedImageShortcut):
        return [("item transform", "no shortcut at this crop_scale", float("nan"), float("nan"))]
    for image in images[:64]:
        torch.manual_seed(0)
        expected = transform.full(image)
        if not torch.equal(transform(image), expected):
            raise AssertionError("the transform shortcut changed an image; please report")

    def each(fn):
        return lambda: [fn(image) for image in images]

    full = per_call_ms(each(transform.full)) / len(images)
    short = per_call_ms(each(transform)) / len(images)
    return [("item transform (ms/image)", "v2 pipeline -> shortcut", full, short)]


def batch_loading_row(cfg) -> tuple[str, str, float, float]:
    """ms to load one training batch of `cfg.batch_size` items of `pretrain_dataset` (a
    `Subset` view under `pretrain_subset`): item by item, each under its own seeded
    generator, against `SeededItems.__getitems__` (one batched transform)."""
    items = SeededItems(pretrain_dataset(cfg), cfg.seed)
    keys = [(index, 1) for index in range(0, len(items), len(items) // cfg.batch_size)]
    keys = keys[: cfg.batch_size]
    by_item = [items[key] for key in keys]
    batched = items.__getitems__(keys)
    for (a, label_a, index_a), (b, label_b, index_b) in zip(by_item, batched, strict=True):
        if not torch.equal(a, b) or (label_a, index_a) != (label_b, index_b):
            raise AssertionError("batched loading changed an item; please report")
    return (
        f"training batch loading (ms/batch of {cfg.batch_size})",
        "item by item -> batched transform",
        per_call_ms(lambda: default_collate([items[key] for key in keys])),
        per_call_ms(lambda: default_collate(items.__getitems__(keys))),
    )


def optimizer_rows(cfg) -> list[tuple[str, str, float, float]]:
    model = IJEPA.from_config(cfg)
    times = []
    for library in (False, True):
        clone = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(0)
        for p in clone.parameters():
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=generator)
        if library:
            optimizer = build_optimizer(cfg, clone, torch.device("cpu"))
        else:
            optimizer = torch.optim.AdamW(
                clone.param_groups(), weight_decay=cfg.weight_decay, foreach=False
            )
        times.append(per_call_ms(optimizer.step))
    return [("AdamW step (ms)", "per-tensor loop -> fused", *times)]


def extraction_rows(cfg) -> list[tuple[str, str, float, float]]:
    encoder = random_encoder(cfg)
    rates = []
    for batch in (512, cfg.eval_batch_size):
        images = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size)

        @torch.no_grad()
        def forward(images=images):
            encoder.forward_features(images, cfg.probe_last_blocks)

        rates.append(batch / per_call_ms(forward, min_s=3.0) * 1e3)
    label = f"batch 512 -> {cfg.eval_batch_size}"
    return [("extraction (images/s)", label, *rates), layout_row(cfg, encoder)]


def layout_row(cfg, encoder: torch.nn.Module) -> tuple[str, str, float, float]:
    """Extraction images/s with strided patch tokens against contiguous ones, alternating."""
    images = torch.randn(cfg.eval_batch_size, cfg.in_chans, cfg.image_size, cfg.image_size)
    contiguous = vit.patch_tokens

    @torch.no_grad()
    def forward():
        return encoder.forward_features(images, cfg.probe_last_blocks)

    outputs, rates = {}, {True: [], False: []}
    try:
        for _ in range(ROUNDS):
            for strided in (True, False):
                vit.patch_tokens = strided_patch_tokens if strided else contiguous
                outputs[strided] = forward()
                rates[strided].append(len(images) / per_call_ms(forward, min_s=3.0) * 1e3)
    finally:
        vit.patch_tokens = contiguous
    if not torch.equal(outputs[True], outputs[False]):
        raise AssertionError("the token layout changed the features; please report")
    return (
        "extraction (images/s)",
        "strided -> contiguous tokens",
        max(rates[True]),
        max(rates[False]),
    )


def allocator_row(cfg, args: list[str]) -> tuple[str, str, float, float]:
    """Extraction images/s with glibc's default allocator against
    `jepa.device.keep_freed_memory`. The setting is process-wide and has no way back, so
    each round runs `extraction_rates` in two fresh child processes, one after the other."""
    rates = {"default": [], "kept": []}
    for _ in range(ROUNDS):
        for allocator in rates:
            child = [sys.executable, __file__, *args, "--extraction-child", allocator]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            rates[allocator] += [float(rate) for rate in out.split()]
    label = "glibc default -> freed memory kept (median)"
    return ("extraction (images/s)", label, *map(statistics.median, rates.values()))


def extraction_rates(cfg, allocator: str, passes: int = 3) -> list[float]:
    """Images/s of `passes` extractions of the test split (`write_features_to_disk`, as the
    pipeline's extract stage runs it) by the random encoder. With the default allocator
    their speed varies with the heap's history, hence several passes and the median."""
    if allocator == "default":  # this child process only
        features.keep_freed_memory = lambda: False
    elif not keep_freed_memory():
        raise SystemExit("keep_freed_memory() does not apply here (glibc on Linux only)")
    encoder = random_encoder(cfg)
    loader = build_eval_loader(cfg, build_dataset(cfg, "test", train_transform=False))
    rates = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(passes):
            start = time.perf_counter()
            rows = features.write_features_to_disk(
                encoder, loader, out, "test", num_last_blocks=cfg.probe_last_blocks, progress=False
            )
            rates.append(rows / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="params.yaml", help="a flat YAML config")
    parser.add_argument("--preset", help="an experiment of jepa/conf (needs Hydra)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument("--extraction-child", choices=("default", "kept"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = load_config(args)
    if args.extraction_child:  # a child process of allocator_row
        print(*extraction_rates(cfg, args.extraction_child))
        return
    print(
        f"fp32 matmul: {matmul_tflops(torch.device('cpu'), torch.float32):.3f} TFLOP/s, "
        f"{torch.get_num_threads()} threads"
    )
    dataset = build_dataset(cfg, "train", train_transform=False)
    if not hasattr(dataset, "images"):
        raise SystemExit(
            f"dataset={cfg.dataset!r} is read from files; this bench times the "
            "in-memory datasets (fashion_mnist, cifar10)"
        )
    images = dataset.images[:2000]
    rows = [
        *transform_rows(cfg, images),
        batch_loading_row(cfg),
        *optimizer_rows(cfg),
        *extraction_rows(cfg),
        allocator_row(cfg, sys.argv[1:]),
    ]
    print("| work | baseline -> library | baseline | library | speed-up |")
    print("|---|---|---:|---:|---:|")
    for work, change, before, after in rows:
        faster = after / before if "images/s" in work else before / after
        print(f"| {work} | {change} | {before:.3f} | {after:.3f} | {faster:.2f}x |")


if __name__ == "__main__":
    main()

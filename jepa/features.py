"""Frozen-encoder features for evaluation, in memory or on disk.

Features are pooled encoder outputs (`encoder.forward_features`), float32 `(N, D)`, with
int64 labels `(N,)`. On disk a split is two `.npy` files, `{split}_features.npy` and
`{split}_labels.npy`, so `np.load(..., mmap_mode="r")` maps them without reading them into
memory, plus one `features.json` describing every split and the encoder that produced it.
Every file is written atomically (`jepa.io`), so a reader never sees a half-written file.

Unreadable images come out of the eval loader as dropped items, so a split can have fewer
rows than its dataset has items. `write_features_to_disk` streams into a memory map sized
for the whole dataset and, when items were dropped, shrinks the file in place afterwards:
the `.npy` header is rewritten with the smaller row count (NumPy pads headers so that the
first axis can change without moving the data) and the unused tail is truncated. Nothing
is read twice and no copy is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from jepa.device import autocast, keep_freed_memory, resolve_device
from jepa.io import atomic_output, write_json

META_FILE = "features.json"


# ---- files ------------------------------------------------------------------------------------


def feature_paths(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """`(features, labels)` file paths of `split` under `out_dir`."""
    out_dir = Path(out_dir)
    return out_dir / f"{split}_features.npy", out_dir / f"{split}_labels.npy"


def load_features(out_dir: Path, split: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`(features (N, D) float32, labels (N,) int64)`, memory-mapped read-only when `mmap`."""
    paths = feature_paths(out_dir, split)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; extract the {split!r} features first "
                f"(jepa.features.extract_dataset_features)"
            )
    mode = "r" if mmap else None
    features, labels = (np.load(path, mmap_mode=mode) for path in paths)
    return _check_pair(features, labels)


def write_meta(out_dir: str | Path, meta: dict) -> None:
    """Write `meta` as `out_dir/features.json`, atomically."""
    write_json(Path(out_dir) / META_FILE, meta)


def _check_pair(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {features.shape} and {labels.shape}"
        )
    if features.dtype != np.float32:
        features = features.astype(np.float32)
    if labels.dtype != np.int64:
        labels = labels.astype(np.int64)
    return features, labels


# ---- extraction -------------------------------------------------------------------------------


def _feature_batches(
    encoder: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device,
    num_last_blocks: int,
    amp: str,
    progress: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `(features (B, D) float32, labels (B,) int64)` per batch, the encoder in eval mode.

    Batches are `(images, labels, ...)`; a `None` batch (all items unreadable) is skipped.
    The encoder is moved to `device` and its train/eval mode is restored afterwards. On the
    CPU the process keeps its freed memory from here on (`jepa.device.keep_freed_memory`).
    """
    device = resolve_device(device)
    if device.type == "cpu":
        keep_freed_memory()
    was_training = encoder.training
    encoder.to(device).eval()
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for batch in tqdm(loader, total=total, disable=not progress, desc="features"):
            if batch is None:
                continue
            images, labels = batch[0], batch[1]
            with torch.no_grad(), autocast(amp, device):
                feats = encoder.forward_features(
                    images.to(device, non_blocking=True), num_last_blocks
                )
            yield feats.float().cpu().numpy(), torch.as_tensor(labels).long().numpy()
    finally:
        encoder.train(was_training)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    num_last_blocks: int = 1,
    amp: str = "auto",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every image `loader` yields: `(features (N, D) float32, labels (N,) int64)`.

    The encoder is moved to `device`; its train/eval mode is restored afterwards.
    `D` is `embed_dim * num_last_blocks`. `amp` picks the precision as training does
    (`jepa.device.autocast`): "auto" is bfloat16 on CUDA and float32 on the CPU.
    """
    batches = list(
        _feature_batches(
            encoder,
            loader,
            device=device,
            num_last_blocks=num_last_blocks,
            amp=amp,
            progress=progress,
        )
    )
    if not batches:
        raise ValueError("the loader yielded no images; check the dataset and its split")
    features = np.concatenate([f for f, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    return features, labels


@torch.no_grad()
def write_features_to_disk(
    encoder: nn.Module,
    loader: Iterable,
    out_dir: str | Path,
    split: str,
    **kw: Any,
) -> int:
    """Stream features of `loader` into `out_dir/{split}_features.npy` (and labels) batch by
    batch, never holding more than one batch in memory. Returns the number of rows written.

    The memory maps are sized `len(loader.dataset)`; when the loader dropped unreadable items
    the files are shrunk in place to the rows written (see the module docstring).
    `kw` are `extract_features`' keyword arguments.
    """
    capacity = len(loader.dataset)
    feat_path, label_path = feature_paths(out_dir, split)
    with atomic_output(feat_path) as feat_tmp, atomic_output(label_path) as label_tmp:
        features = labels = None
        rows = 0
        # closing(): an error below still ends the generator, which restores the encoder's mode.
        with contextlib.closing(_feature_batches(encoder, loader, **_stream_kwargs(kw))) as batches:
            for feats, ys in batches:
                if features is None:
                    features = np.lib.format.open_memmap(
                        feat_tmp, mode="w+", dtype=np.float32, shape=(capacity, feats.shape[1])
                    )
                    labels = np.lib.format.open_memmap(
                        label_tmp, mode="w+", dtype=np.int64, shape=(capacity,)
                    )
                if rows + len(feats) > capacity:
                    raise ValueError(
                        f"the loader yielded more than len(loader.dataset)={capacity} items"
                    )
                features[rows : rows + len(feats)] = feats
                labels[rows : rows + len(ys)] = ys
                rows += len(feats)
        if features is None:
            raise ValueError("the loader yielded no images; check the dataset and its split")
        features.flush()
        labels.flush()
        del features, labels  # close the maps before resizing the files
        for tmp in (feat_tmp, label_tmp):
            _shrink_npy(tmp, rows)
    return rows


def _stream_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    unknown = set(kw) - {"device", "num_last_blocks", "amp", "progress"}
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    return {"device": "cpu", "num_last_blocks": 1, "amp": "auto", "progress": True, **kw}


def _shrink_npy(path: Path, rows: int) -> None:
    """Keep the first `rows` rows of a C-ordered `.npy` file, in place."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
        if shape[0] == rows:
            return
        f.seek(0)
        header = {"shape": (rows, *shape[1:]), "fortran_order": fortran_order, "descr": dtype.str}
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(f, header)
        else:
            np.lib.format.write_array_header_2_0(f, header)
        if f.tell() != offset:  # NumPy reserves room for the first axis to change
            raise RuntimeError(f"{path}: resizing the .npy header moved the data; please report")
        f.truncate(offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


# ---- whole datasets -----------------------------------------------------------------------------


def probe_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """At most `size` items of `dataset`, drawn at random (seeded) and kept in dataset order.

    A random draw, not the first `size` items: class-sorted datasets (ImageFolder) would
    otherwise keep only their first few classes.
    """
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def weights_hash(module: nn.Module) -> str:
    """Short SHA-256 of a module's state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _extract_split(cfg: Any, encoder: nn.Module, out_dir: Path, split: str) -> dict[str, Any]:
    """Write one split's features; return its shapes, item and drop counts, and timing."""
    # Imported here: jepa.data pulls in torchvision, which the rest of this module avoids.
    from jepa.data import build_dataset, build_eval_loader

    dataset = build_dataset(cfg, split, train_transform=False)
    if split == "train":
        dataset = probe_subset(dataset, cfg.probe_subset, cfg.seed)
    start = time.perf_counter()
    rows = write_features_to_disk(
        encoder,
        build_eval_loader(cfg, dataset),
        out_dir,
        split,
        device=cfg.device,
        num_last_blocks=cfg.probe_last_blocks,
        amp=cfg.amp,
        progress=cfg.progress,
    )
    seconds = time.perf_counter() - start
    features, _ = load_features(out_dir, split)
    return {
        "features_shape": list(features.shape),
        "labels_shape": [rows],
        "num_items": len(dataset),
        "num_dropped": len(dataset) - rows,
        "seconds": round(seconds, 3),
    }


def extract_dataset_features(
    cfg: Any,
    encoder: nn.Module,
    out_dir: str | Path,
    *,
    splits: Iterable[str] = ("train", "test"),
    meta: dict | None = None,
) -> dict:
    """Extract and save the features of each split of `cfg.dataset`; write `features.json`.

    Images use the eval transform. `cfg.probe_subset` caps the train split (a seeded random
    subset, `cfg.seed`); `cfg.device`, `cfg.amp`, `cfg.probe_last_blocks`, `cfg.progress` and
    `cfg.eval_batch_size` (through the loader) apply. `meta` (e.g. `checkpoint_hash`) is
    merged into the returned, written metadata.
    """
    out_dir = Path(out_dir)
    record: dict[str, Any] = {
        "checkpoint_hash": None,
        **(meta or {}),
        "dataset": cfg.dataset,
        "image_size": cfg.image_size,
        "device": str(resolve_device(cfg.device)),
        "amp": cfg.amp,
        "num_last_blocks": cfg.probe_last_blocks,
        "model_args": encoder.model_args() if hasattr(encoder, "model_args") else None,
        "encoder_weights_hash": weights_hash(encoder),
        "probe_subset": cfg.probe_subset,
        "splits": {split: _extract_split(cfg, encoder, out_dir, split) for split in splits},
    }
    write_meta(out_dir, record)
    return record

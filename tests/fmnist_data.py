"""Tiny Fashion-MNIST in the real on-disk format (gzipped IDX), with learnable classes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000080N, big-endian dims)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class sets a bright bar's row: a linearly separable toy task."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.int64)
    for i, label in enumerate(labels):
        row = 2 + 2 * int(label)
        images[i, row : row + 3, 4:24] = 200 + rng.integers(0, 50)
    return images.astype(np.uint8)


def write_tiny_fmnist(
    root: Path, num_train: int = 128, num_test: int = 64, num_classes: int = 10, seed: int = 0
) -> Path:
    """Write train/t10k IDX files under `root/raw` (torchvision's layout); return `root`."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        write_idx_gz(raw / f"{prefix}-images-idx3-ubyte.gz", class_images(labels, rng))
        write_idx_gz(raw / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root

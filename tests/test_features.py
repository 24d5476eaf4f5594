"""Feature extraction, atomic .npy storage, memory-mapped loading and the streaming writer."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_config
from torch.utils.data import DataLoader, Dataset, default_collate

from jepa.config import JEPAConfig
from jepa.device import keep_freed_memory
from jepa.features import (
    extract_dataset_features,
    extract_features,
    feature_paths,
    load_features,
    probe_subset,
    write_features_to_disk,
    write_meta,
)
from jepa.models import VisionTransformer

IMAGE_SIZE, CHANNELS = 8, 1


class TinyImages(Dataset):
    """`(image (1, 8, 8), label, index)` items; indices in `corrupt` come back as None."""

    def __init__(self, n: int, *, corrupt: tuple[int, ...] = (), seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        self.labels = torch.arange(n) % 3
        self.corrupt = set(corrupt)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if index in self.corrupt:
            return None
        return self.images[index], int(self.labels[index]), index


def drop_none(batch: list):
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


def loader_of(dataset: Dataset, batch_size: int = 4) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=drop_none)


@pytest.fixture
def encoder() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=IMAGE_SIZE, patch_size=4, in_chans=CHANNELS, embed_dim=16, depth=2, num_heads=2
    )


@pytest.mark.parametrize("num_last_blocks", [1, 2])
def test_extract_matches_direct_forward(encoder: VisionTransformer, num_last_blocks: int) -> None:
    dataset = TinyImages(10)
    encoder.train()  # extraction must switch to eval mode and switch back
    features, labels = extract_features(
        encoder, loader_of(dataset), num_last_blocks=num_last_blocks, progress=False
    )
    assert encoder.training
    with torch.no_grad():
        expected = encoder.eval().forward_features(dataset.images, num_last_blocks).numpy()
    assert features.dtype == np.float32 and labels.dtype == np.int64
    assert features.shape == (10, 16 * num_last_blocks)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, dataset.labels.numpy())


def test_save_load_round_trip_and_memmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=7)
    np.save(tmp_path / "train_features.npy", features)  # the on-disk format
    np.save(tmp_path / "train_labels.npy", labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_features.npy", "train_labels.npy"]

    mapped, mapped_labels = load_features(tmp_path, "train")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, features)
    np.testing.assert_array_equal(mapped_labels, labels)
    assert mapped_labels.dtype == np.int64

    in_memory, _ = load_features(tmp_path, "train", mmap=False)
    assert not isinstance(in_memory, np.memmap)
    np.testing.assert_array_equal(in_memory, features)


def test_load_missing_split_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="test_features.npy"):
        load_features(tmp_path, "test")


def test_load_rejects_mismatched_lengths(tmp_path: Path) -> None:
    np.save(tmp_path / "train_features.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "train_labels.npy", np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="labels"):
        load_features(tmp_path, "train")


def test_streaming_writer_matches_extract_and_drops_corrupt(
    encoder: VisionTransformer, tmp_path: Path
) -> None:
    # 6 and 7 share a batch of 2, so one whole batch comes out as None.
    dataset = TinyImages(11, corrupt=(3, 6, 7))
    expected, expected_labels = extract_features(
        encoder, loader_of(dataset, 2), progress=False, num_last_blocks=2
    )
    rows = write_features_to_disk(
        encoder, loader_of(dataset, 2), tmp_path, "test", progress=False, num_last_blocks=2
    )
    assert rows == 8 == len(expected)
    features, labels = load_features(tmp_path, "test")
    assert features.shape == (8, 32) and labels.shape == (8,)
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(labels, expected_labels)
    # The unused tail is truncated, not left behind the shrunk header.
    feat_path, label_path = feature_paths(tmp_path, "test")
    assert feat_path.stat().st_size == features.offset + 8 * 32 * 4
    assert label_path.stat().st_size == labels.offset + 8 * 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_features.npy", "test_labels.npy"]


def test_streaming_writer_without_drops(encoder: VisionTransformer, tmp_path: Path) -> None:
    dataset = TinyImages(9)
    assert (
        write_features_to_disk(encoder, loader_of(dataset), tmp_path, "train", progress=False) == 9
    )
    features, _ = load_features(tmp_path, "train", mmap=False)
    expected, _ = extract_features(encoder, loader_of(dataset), progress=False)
    np.testing.assert_array_equal(features, expected)


def test_streaming_writer_leaves_no_file_on_error(
    encoder: VisionTransformer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no images"):
        write_features_to_disk(
            encoder, loader_of(TinyImages(4, corrupt=(0, 1, 2, 3))), tmp_path, "x"
        )
    assert not list(tmp_path.iterdir())


def test_probe_subset_is_seeded_random_and_ordered() -> None:
    dataset = TinyImages(100)
    subset = probe_subset(dataset, 10, seed=0)
    assert len(subset) == 10
    assert subset.indices == sorted(subset.indices)
    assert subset.indices != list(range(10))  # not just the head of a class-sorted dataset
    assert probe_subset(dataset, 10, seed=0).indices == subset.indices
    assert probe_subset(dataset, None, seed=0) is dataset


def test_write_meta_is_json(tmp_path: Path) -> None:
    write_meta(tmp_path, {"splits": {"train": {"features_shape": (3, 4)}}, "n": np.int64(3)})
    meta = json.loads((tmp_path / "features.json").read_text())
    assert meta == {"n": 3, "splits": {"train": {"features_shape": [3, 4]}}}


def features_config(**overrides) -> JEPAConfig:
    """`debug=tiny` on this module's stub images: 16 wide, 4 px patches, batches of 4."""
    values = dict(image_size=IMAGE_SIZE, in_chans=CHANNELS, embed_dim=16, device="cpu",
                  eval_batch_size=4)  # fmt: skip
    return tiny_config(**{**values, **overrides})


def test_extract_dataset_features_with_stub_data(
    encoder: VisionTransformer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def build_dataset(cfg, split="train", *, train_transform):
        calls.append((split, train_transform))
        return TinyImages(12 if split == "train" else 6, corrupt=(2,) if split == "test" else ())

    fake = types.SimpleNamespace(
        build_dataset=build_dataset,
        build_eval_loader=lambda cfg, dataset, batch_size=None: loader_of(dataset),
    )
    monkeypatch.setitem(sys.modules, "jepa.data", fake)
    cfg = features_config(probe_subset=5)
    meta = extract_dataset_features(cfg, encoder, tmp_path, meta={"checkpoint_hash": "abc"})
    assert calls == [("train", False), ("test", False)]
    assert meta["splits"]["train"]["features_shape"] == [5, 16]
    assert meta["splits"]["test"] | {"seconds": 0} == {
        "features_shape": [5, 16],
        "labels_shape": [5],
        "num_items": 6,
        "num_dropped": 1,
        "seconds": 0,
    }
    assert meta["checkpoint_hash"] == "abc" and meta["num_last_blocks"] == 1
    assert meta["model_args"] == encoder.model_args()
    assert json.loads((tmp_path / "features.json").read_text()) == meta
    assert load_features(tmp_path, "train")[0].shape == (5, 16)


def test_extract_dataset_features_image_folder(encoder: VisionTransformer, tmp_path: Path) -> None:
    """End to end through the real jepa.data on PNG files, one of them corrupt."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 3)):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(12, 12), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    (tmp_path / "images" / "val" / "b" / "broken.png").write_bytes(b"not a png")
    cfg = features_config(dataset="imagefolder", root_path=str(tmp_path / "images"))
    with pytest.warns(UserWarning):
        meta = extract_dataset_features(cfg, encoder, tmp_path / "features")
    assert meta["splits"]["train"]["features_shape"] == [8, 16]
    assert meta["splits"]["test"]["num_items"] == 7
    assert meta["splits"]["test"]["num_dropped"] == 1
    features, labels = load_features(tmp_path / "features", "test")
    assert features.shape == (6, 16) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert np.isfinite(features).all()


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Extracts features on the CPU (or not), then frees a 64 MB tensor and prints how many free
# bytes glibc's heap holds (mallinfo2): kept for reuse, or handed back to the kernel.
HEAP_SCRIPT = """
import ctypes, sys, torch
from torch.utils.data import DataLoader, TensorDataset
from jepa.features import extract_features
from jepa.models import VisionTransformer

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "extract":
    encoder = VisionTransformer(image_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1,
                                num_heads=2)
    data = TensorDataset(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    extract_features(encoder, DataLoader(data, batch_size=2), progress=False)
block = torch.ones(16 << 20)
del block
print(libc.mallinfo2().fordblks)
"""


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory tunes glibc's malloc (Linux only)")
def test_cpu_extraction_keeps_freed_memory_for_reuse(monkeypatch) -> None:
    """After a CPU extraction, a freed 64 MB buffer stays in the process's heap for the next
    batch; in a process that never extracted, glibc hands it back to the kernel. A user's
    own `MALLOC_*` settings are left to stand."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def free_heap_bytes(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", HEAP_SCRIPT, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(run.stdout.split()[-1])

    assert free_heap_bytes("extract") >= 64 << 20
    assert free_heap_bytes("plain") < 64 << 20
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    keep_freed_memory.cache_clear()
    try:
        assert keep_freed_memory() is False
    finally:
        keep_freed_memory.cache_clear()

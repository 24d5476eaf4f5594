"""Datasets read their real on-disk formats (written here, tiny); loaders are deterministic."""

from __future__ import annotations

import copy
import gzip
import io
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fresh_process import modules_after

from jepa import data
from jepa.config import ConfigError, JEPAConfig
from jepa.data import (
    CorruptImageError,
    CorruptImageWarning,
    DatasetNotFoundError,
    TensorImageDataset,
    build_dataset,
    build_eval_loader,
    build_pretrain_loader,
    num_classes,
    pretrain_dataset,
    read_idx,
    source_files,
)
from jepa.masks import build_collator

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def fmnist_cfg(root: Path | None, **overrides) -> JEPAConfig:
    values = {"num_workers": 0, **overrides}
    return JEPAConfig.preset("fmnist_w192", root_path=root and str(root), **values)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: 0x0000, type 0x08 (uint8), ndim, big-endian int32 dims, raw bytes."""
    payload = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    payload += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_fmnist(folder: Path, num_train: int = 12, num_test: int = 5) -> dict[str, np.ndarray]:
    """Train files gzipped, test files unpacked: the reader must take both."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n, suffix in (("train", num_train, ".gz"), ("t10k", num_test, "")):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", arrays[f"{prefix}-images"])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", arrays[f"{prefix}-labels"])
    return arrays


# ---- Fashion-MNIST (IDX) -----------------------------------------------------------------


def test_read_idx_checks_header(tmp_path):
    good = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", good)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(good))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad.*not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match=r"10 bytes.*holds 3"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_reads_torchvision_raw_layout(tmp_path):
    arrays = write_fmnist(tmp_path / "FashionMNIST" / "raw")
    cfg = fmnist_cfg(tmp_path)
    train = build_dataset(cfg, "train", train_transform=False)
    test = build_dataset(cfg, "test", train_transform=False)
    assert (len(train), len(test), num_classes(train)) == (12, 5, 10)
    image, label, index = test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert (label, index) == (int(arrays["t10k-labels"][3]), 3)
    # At image_size 28 the eval transform is only normalisation: pixels must survive exactly.
    want = (torch.from_numpy(arrays["t10k-images"][3]).float() / 255 - FMNIST_MEAN) / FMNIST_STD
    torch.testing.assert_close(image[0], want)
    crop, _, _ = build_dataset(cfg, "train")[0]
    assert crop.shape == (1, 28, 28)


def test_fashion_mnist_channels_subset_and_in_chans(tmp_path):
    write_fmnist(tmp_path)  # files directly in root_path
    rgb = build_dataset(fmnist_cfg(tmp_path, in_chans=3, pretrain_subset=7), train_transform=False)
    image, _, _ = rgb[0]
    assert len(rgb) == 12 and image.shape == (3, 28, 28)  # pretrain_subset: pretraining only
    assert torch.equal(image[0], image[2])  # grayscale repeated, same normalisation
    assert len(build_dataset(fmnist_cfg(tmp_path, pretrain_subset=7), "test")) == 5
    assert len(pretrain_dataset(fmnist_cfg(tmp_path, pretrain_subset=7))) == 7
    with pytest.raises(ConfigError, match="in_chans=2"):
        build_dataset(fmnist_cfg(tmp_path, in_chans=2))


def test_source_files_are_the_files_the_loader_reads(tmp_path):
    write_fmnist(tmp_path / "FashionMNIST" / "raw")
    cfg = fmnist_cfg(tmp_path)
    names = [p.name for p in source_files(cfg, "train")]
    assert names == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert [p.name for p in source_files(cfg, "val")][0] == "t10k-images-idx3-ubyte"
    with pytest.raises(DatasetNotFoundError, match="test IDX files not found"):
        source_files(fmnist_cfg(tmp_path / "empty"), "test")
    with pytest.raises(ValueError, match="image folder"):
        source_files(JEPAConfig(dataset="imagefolder", root_path=str(tmp_path)), "train")


@pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install it to run this)",
)
def test_fashion_mnist_debian_package():
    cfg = fmnist_cfg(None)
    assert data.dataset_root(cfg) == data.FASHION_MNIST_DIR
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test", train_transform=False)
    assert (len(train), len(test), num_classes(train)) == (60000, 10000, 10)
    assert sorted(train.targets.unique().tolist()) == list(range(10))
    # The published per-pixel statistics of the training set.
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - FMNIST_MEAN) < 1e-3
    assert abs(pixels.std().item() - FMNIST_STD) < 1e-3


# ---- CIFAR-10 (torchvision pickles) --------------------------------------------------------


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """`cifar-10-batches-py`: dict pickles with `data` (N, 3072) rows of R, G, B planes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {
            "batch_label": name,
            "data": rows[name],
            "labels": list(range(per_batch)),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return rows


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks each file against the md5 of the published archive, which tiny test
    files cannot match. Reduce that check to "file exists" so the rest of torchvision's real
    reader (pickle layout, keys, reshape) still runs on our files."""
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )


def test_cifar10_reads_pickle_batches(tmp_path, skip_cifar_md5):
    rows = write_cifar10(tmp_path)
    cfg = JEPAConfig(dataset="cifar10", root_path=str(tmp_path), image_size=32, num_workers=0)
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test", train_transform=False)
    assert (len(train), len(test), num_classes(test)) == (15, 3, 10)
    assert test.classes[2] == "class2"
    image, label, index = test[2]
    assert image.shape == (3, 32, 32) and (label, index) == (2, 2)
    mean, std = data.NORMALIZATION["cifar10"]
    want = torch.from_numpy(rows["test_batch"][2].reshape(3, 32, 32)).float() / 255
    want = (want - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(image, want)
    assert train[14][1:] == (2, 14)  # last row of data_batch_5
    with pytest.raises(ConfigError, match="in_chans=1"):
        build_dataset(cfg.replace(in_chans=1))


def test_cifar10_missing_or_incomplete(tmp_path, skip_cifar_md5):
    cfg = JEPAConfig(dataset="cifar10", root_path=str(tmp_path), image_size=32)
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*download: true"):
        build_dataset(cfg)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="incomplete or corrupted"):
        build_dataset(cfg)


# ---- ImageFolder ---------------------------------------------------------------------------


def write_image_folder(root: Path, corrupt: bool = True) -> Path:
    """Two classes of PNG/JPEG files; with `corrupt`, one JPEG cut in half."""
    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, fmt in enumerate(("PNG", "JPEG")):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            torchvision.transforms.v2.functional.to_pil_image(pixels).save(
                root / cls / f"{i}.{fmt.lower()}", fmt
            )
    bad = root / "dog" / "9_truncated.jpeg"
    if corrupt:
        buf = io.BytesIO()
        torchvision.transforms.v2.functional.to_pil_image(
            rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        ).save(buf, "JPEG")
        bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return bad


def folder_cfg(root: Path, **overrides) -> JEPAConfig:
    values = {"num_workers": 0, **overrides}
    return JEPAConfig(dataset="imagefolder", root_path=str(root), image_size=32, **values)


def test_image_folder_skips_corrupt_image(tmp_path):
    bad = write_image_folder(tmp_path / "train")
    dataset = build_dataset(folder_cfg(tmp_path), train_transform=False)
    assert len(dataset) == 5 and dataset.classes == ["cat", "dog"]
    image, label, index = dataset[0]
    assert image.shape == (3, 32, 32) and (label, index) == (0, 0)
    with pytest.warns(CorruptImageWarning, match=bad.name):
        assert dataset[4] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file only
        assert dataset[4] is None
    assert dataset.num_skipped == 2

    # Batches [0, 1], [2, 3], [4]: the last has no readable item and is left out.
    loader = build_eval_loader(folder_cfg(tmp_path), dataset, batch_size=2)
    batches = list(loader)  # the file was already warned about: no second warning
    assert len(batches) == 2
    images, labels, indices = (torch.cat(parts) for parts in zip(*batches, strict=True))
    assert images.shape == (4, 3, 32, 32)
    assert labels.tolist() == [0, 0, 1, 1] and indices.tolist() == [0, 1, 2, 3]
    assert loader.collate_fn.num_dropped == 1
    # Counts made in worker processes reach the main process.
    parallel = build_eval_loader(folder_cfg(tmp_path, num_workers=2), dataset, batch_size=2)
    assert sum(len(b[2]) for b in parallel) == 4
    assert parallel.collate_fn.num_dropped == 1 and dataset.num_skipped == 4
    assert copy.deepcopy(dataset).num_skipped == 4  # a copy detaches from the shared count


def test_image_folder_raise_policy_names_file(tmp_path):
    bad = write_image_folder(tmp_path / "train")
    dataset = build_dataset(folder_cfg(tmp_path, corrupt_images="raise"))
    with pytest.raises(CorruptImageError, match=bad.name):
        dataset[4]


def test_image_folder_val_split_and_grayscale(tmp_path):
    write_image_folder(tmp_path / "train", corrupt=False)
    with pytest.raises(DatasetNotFoundError, match=r"val does not exist"):
        build_dataset(folder_cfg(tmp_path), "val")
    write_image_folder(tmp_path / "val", corrupt=False)
    gray = build_dataset(folder_cfg(tmp_path, in_chans=1), "test", train_transform=False)
    assert len(gray) == 4 and gray[3][0].shape == (1, 32, 32)
    imagenet = JEPAConfig(dataset="imagenet", root_path=str(tmp_path), image_size=32)
    assert len(build_dataset(imagenet, "val")) == 4


def test_missing_dataset_paths_explain_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(fmnist_cfg(tmp_path / "nowhere"))
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "download: true" in message
    with pytest.raises(DatasetNotFoundError, match=r"nowhere/train does not exist.*<class>"):
        build_dataset(folder_cfg(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="set root_path"):
        build_dataset(JEPAConfig(dataset="imagenet1k"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="one subfolder per class"):
        build_dataset(folder_cfg(tmp_path / "empty"))


# ---- transforms and loaders ------------------------------------------------------------------


def test_eval_transform_resizes_like_the_official_protocol():
    cfg = JEPAConfig(image_size=224)
    out = data.eval_transform(cfg)(torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8))
    assert out.shape == (3, 224, 224)
    assert data.eval_transform(cfg).transforms[1].size == [256]
    assert data.eval_transform(cfg.replace(image_size=32)).full.transforms[1].size == [32]


@pytest.mark.parametrize("side", [28, 20, 40])
def test_transforms_shortcut_gives_the_full_pipelines_values(side):
    """Images already at the model's size skip the resize and the whole-area crop; every
    other image (another size, non-square) takes the full v2 pipeline. Bit for bit the
    same result either way."""
    cfg = fmnist_cfg(None, crop_scale=(1.0, 1.0))
    images = torch.randint(0, 256, (8, 1, side, side), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    for transform in (data.pretrain_transform(cfg), data.eval_transform(cfg)):
        assert isinstance(transform, data.SizedImageShortcut)
        for image in images:
            torch.manual_seed(0)
            got = transform(image)
            torch.manual_seed(0)
            assert torch.equal(got, transform.full(image))
            assert got.shape == (1, 28, 28)
    non_square = torch.randint(0, 256, (1, 28, 36), dtype=torch.uint8)
    transform = data.pretrain_transform(cfg)
    torch.manual_seed(0)
    got = transform(non_square)
    torch.manual_seed(0)
    assert torch.equal(got, transform.full(non_square)) and got.shape == (1, 28, 28)
    cropped = data.pretrain_transform(cfg.replace(crop_scale=(0.3, 1.0)))
    assert not isinstance(cropped, data.SizedImageShortcut)  # random crops: always the pipeline


class CollateIndices:
    """A collator that keeps the images and the dataset indices (no masks)."""

    def set_epoch(self, epoch: int) -> None:
        pass

    def __call__(self, batch: list) -> tuple[torch.Tensor, list[int]]:
        return torch.stack([image for image, _, _ in batch]), [index for _, _, index in batch]


collate_indices = CollateIndices()


def tiny_dataset(cfg: JEPAConfig, n: int = 11) -> TensorImageDataset:
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    return TensorImageDataset(
        images.to(torch.uint8),
        torch.arange(n) % 10,
        data.FASHION_MNIST_CLASSES,
        data.pretrain_transform(cfg),
    )


def run_epoch(cfg, dataset, epoch, rank=0, world_size=2):
    data = build_pretrain_loader(cfg, dataset, collate_indices, rank=rank, world_size=world_size)
    data.start_epoch(epoch)
    batches = list(data.loader)
    return torch.cat([b[0] for b in batches]), [i for b in batches for i in b[1]], batches


@pytest.mark.parametrize(
    ("side", "in_chans", "crop_scale", "batched"),
    [
        (28, 1, (1.0, 1.0), True),
        (28, 3, (1.0, 1.0), True),  # the grey channel repeated, before the batch form
        (20, 1, (1.0, 1.0), False),  # not the model's size: the full pipeline, item by item
        (28, 1, (0.3, 1.0), False),  # random crops have no batch form
    ],
)
def test_batched_items_are_the_items_one_by_one(side, in_chans, crop_scale, batched):
    """A DataLoader asks for a batch of items at once (`__getitems__`). Where the transform
    has a batch form it runs once on all the images; the items are bit for bit those of
    `dataset[i]`, and under `SeededItems` those of the seeded keys one by one."""
    cfg = fmnist_cfg(None, crop_scale=crop_scale, in_chans=in_chans, seed=4)
    images = torch.randint(0, 256, (9, 1, side, side), generator=torch.Generator().manual_seed(2))
    dataset = TensorImageDataset(
        images.to(torch.uint8),
        torch.arange(9) % 10,
        data.FASHION_MNIST_CLASSES,
        data.pretrain_transform(cfg),
        in_chans,
    )
    indices = [7, 0, 3, 3]
    assert (dataset.load_batch(indices) is not None) == batched
    # The pretraining loader's view: a Subset (pretrain_subset) under SeededItems.
    seeded = data.SeededItems(torch.utils.data.Subset(dataset, [8, 3, 1, 7, 0, 2]), cfg.seed)
    keys = [(3, 2), (4, 2), (1, 1), (1, 2)]  # dataset items 7, 0, 3, 3
    torch.manual_seed(0)  # random crops without SeededItems draw from the global generator
    one_by_one = [dataset[i] for i in indices], [seeded[key] for key in keys]
    torch.manual_seed(0)
    together = dataset.__getitems__(indices), seeded.__getitems__(keys)
    assert (data.load_batch(seeded.dataset, [3, 4, 1, 1]) is not None) == batched
    for expected_items, items in zip(one_by_one, together, strict=True):
        assert len(items) == len(indices)
        for (want, label, index), (got, got_label, got_index) in zip(
            expected_items, items, strict=True
        ):
            assert got.shape == (in_chans, 28, 28) and torch.equal(got, want)
            assert (got_label, got_index) == (label, index) and type(got_label) is int
    if not batched and crop_scale != (1.0, 1.0):  # crops drawn per key: epochs differ
        assert not torch.equal(together[1][2][0], together[1][3][0])


def test_pretrain_loader_batches_and_order():
    cfg = fmnist_cfg(None, batch_size=4, seed=3)
    dataset = tiny_dataset(cfg)
    pretrain = build_pretrain_loader(cfg, dataset, collate_indices, rank=0, world_size=2)
    loader = pretrain.loader
    assert loader.batch_size == 2 and loader.drop_last
    assert isinstance(pretrain.sampler, data.DistributedSampler)
    assert pretrain.steps_per_epoch == 2 and pretrain.local_batch_size == 2
    # 11 items over 2 ranks -> 5 per rank -> two full batches of 2, the last item dropped.
    images, order, batches = run_epoch(cfg, dataset, epoch=0)
    assert len(loader) == 2 and [len(b[1]) for b in batches] == [2, 2]
    again, same_order, _ = run_epoch(cfg, dataset, epoch=0)
    assert order == same_order and torch.equal(images, again)
    _, other_rank, _ = run_epoch(cfg, dataset, epoch=0, rank=1)
    assert not set(order) & set(other_rank)
    orders = {tuple(run_epoch(cfg, dataset, epoch=e)[1]) for e in range(4)}
    assert len(orders) > 1  # the order changes with the epoch
    with pytest.raises(ConfigError, match=r"batch_size=4.*world_size=3"):
        build_pretrain_loader(cfg, dataset, collate_indices, world_size=3)


def test_pretrain_crops_depend_only_on_seed_epoch_index():
    cfg = fmnist_cfg(None, batch_size=4, seed=5, crop_scale=(0.2, 0.5))
    dataset = tiny_dataset(cfg)
    serial = [run_epoch(cfg, dataset, epoch=e, world_size=1)[0] for e in (0, 1)]
    # Two workers, forked again each epoch: same crops as a serial run.
    pretrain = build_pretrain_loader(cfg.replace(num_workers=2), dataset, collate_indices)
    loader = pretrain.loader
    for epoch, want in enumerate(serial):
        pretrain.start_epoch(epoch)
        assert torch.equal(torch.cat([b[0] for b in loader]), want)
    pretrain.start_epoch(1, skip_batches=1)  # a resumed epoch skips the batches it trained on
    assert torch.equal(torch.cat([b[0] for b in loader]), serial[1][cfg.batch_size :])
    assert not torch.equal(serial[0], serial[1])
    state = torch.get_rng_state()
    loader.dataset[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is left alone


def masked_epoch(cfg, dataset, epoch, **loader_kw):
    """One epoch of the pretraining loader with the config's mask collator: its images and
    indices, and each batch's masks."""
    pretrain = build_pretrain_loader(cfg, dataset, build_collator(cfg), **loader_kw)
    pretrain.start_epoch(epoch)
    batches = list(pretrain.loader)
    images = torch.cat([b.images for b in batches])
    return (
        images,
        torch.cat([b.indices for b in batches]),
        [b.masks_enc + b.masks_pred for b in batches],
    )


def test_flips_mirror_about_half_the_images_as_a_function_of_seed_epoch_and_index():
    cfg = fmnist_cfg(None, batch_size=8, seed=2, crop_scale=(1.0, 1.0), pretrain_subset=None)
    dataset = tiny_dataset(cfg, n=64)
    plain, indices, masks = masked_epoch(cfg, dataset, 0)
    flipped, same_indices, same_masks = masked_epoch(cfg.replace(hflip=True), dataset, 0)
    assert torch.equal(indices, same_indices)
    for batch, same in zip(masks, same_masks, strict=True):  # the masks do not change
        assert all(torch.equal(a, b) for a, b in zip(batch, same, strict=True))
    pairs = list(zip(flipped, plain, strict=True))
    mirrored = torch.tensor([torch.equal(f, p.flip(-1)) for f, p in pairs])
    assert all(torch.equal(f, p) for (f, p), m in zip(pairs, mirrored, strict=True) if not m)
    assert 16 <= int(mirrored.sum()) <= 48
    # Two workers: each index keeps its flip.
    workers, worker_indices, _ = masked_epoch(cfg.replace(hflip=True, num_workers=2), dataset, 0)
    assert torch.equal(workers, flipped) and torch.equal(worker_indices, indices)
    # Another epoch flips another set of images.
    later, later_indices, _ = masked_epoch(cfg.replace(hflip=True), dataset, 1)
    plain_later, _, _ = masked_epoch(cfg, dataset, 1)
    mirrored_later = {
        int(i)
        for i, f, p in zip(later_indices, later, plain_later, strict=True)
        if not torch.equal(f, p)
    }
    assert mirrored_later != {int(i) for i in indices[mirrored]}


def test_shifts_move_each_image_by_at_most_shift_pixels_as_a_function_of_seed_epoch_and_index():
    cfg = fmnist_cfg(None, batch_size=8, seed=2, crop_scale=(1.0, 1.0), pretrain_subset=None)
    dataset = tiny_dataset(cfg, n=64)
    plain, indices, masks = masked_epoch(cfg, dataset, 0)
    moved, same_indices, same_masks = masked_epoch(cfg.replace(shift=2), dataset, 0)
    assert torch.equal(indices, same_indices) and moved.shape == plain.shape
    for batch, same in zip(masks, same_masks, strict=True):  # the masks do not change
        assert all(torch.equal(a, b) for a, b in zip(batch, same, strict=True))

    def offsets(image: torch.Tensor, original: torch.Tensor) -> set[tuple[int, int]]:
        """Every (dy, dx) in [-2, 2]^2 that moves `original` (edges repeated) onto `image`."""
        padded = torch.nn.functional.pad(original[None], (2, 2, 2, 2), mode="replicate")[0]
        return {
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(image, padded[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx])
        }

    found = [offsets(m, p) for m, p in zip(moved, plain, strict=True)]
    assert all(found)  # each image is its original moved by at most 2 pixels each way
    assert sum((0, 0) in f for f in found) <= 16  # about 1 in 25 stays put
    assert len({next(iter(f)) for f in found if len(f) == 1}) >= 15  # of the 25 offsets
    # Two workers: each index keeps its offsets; another epoch draws others.
    workers, _, _ = masked_epoch(cfg.replace(shift=2, num_workers=2), dataset, 0)
    assert torch.equal(workers, moved)
    later, later_indices, _ = masked_epoch(cfg.replace(shift=2), dataset, 1)
    assert not torch.equal(later[torch.argsort(later_indices)], moved[torch.argsort(indices)])
    # With flips, each image is its mirror or itself, then moved.
    both, _, _ = masked_epoch(cfg.replace(shift=2, hflip=True), dataset, 0)
    assert all(offsets(b, p) or offsets(b, p.flip(-1)) for b, p in zip(both, plain, strict=True))
    with pytest.raises(ConfigError, match="shift must be >= 0"):
        cfg.replace(shift=-1).validate()


def test_the_default_data_path_never_imports_torchvision(tiny_fmnist) -> None:
    """Fashion-MNIST at the model's size takes the transforms' shortcut, so a pretraining,
    extraction or baseline process never pays torchvision's import (about 2 s)."""
    code = (
        "from jepa import train, evaluate\n"
        "from jepa.config import JEPAConfig\n"
        "from jepa.data import build_dataset, build_eval_loader, pretrain_dataset\n"
        f"cfg = JEPAConfig.preset('fmnist_w192', root_path={str(tiny_fmnist)!r},\n"
        "                         crop_scale=(1.0, 1.0), num_workers=0)\n"
        "image, _, _ = pretrain_dataset(cfg)[0]\n"
        "assert tuple(image.shape) == (1, 28, 28)\n"
        "next(iter(build_eval_loader(cfg, build_dataset(cfg, 'test', train_transform=False))))\n"
    )
    assert modules_after(code, ["torchvision"]) == []

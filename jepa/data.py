"""Datasets by name, image transforms, and the loaders used by pretraining and evaluation.

Every dataset reads its real on-disk format and yields `(image, label, index)`:
`image` a normalised float tensor `(C, H, W)` with `C == cfg.in_chans`, `label` the class
id, `index` the item's position in the dataset. An ImageFolder item whose file cannot be
decoded is `None` under `corrupt_images: skip` (warned once per file, counted) and an error
naming the file under `corrupt_images: raise`; both loaders drop `None` items.

==============  ====================================================  ==================
dataset         on disk                                               default root
==============  ====================================================  ==================
fashion_mnist   IDX files (`.gz` or unpacked), read by `read_idx`      Debian's package
cifar10         torchvision's `cifar-10-batches-py` pickles            ~/.cache/jepa/cifar10
imagefolder     `root_path/image_folder/<class>/<img>`, eval `val/`    (root_path needed)
imagenet1k      `root_path/train/<class>/<img>`, `root_path/val/...`   (root_path needed)
==============  ====================================================  ==================

Pretraining augmentation is a function of `(cfg.seed, epoch, index)` alone: the pretrain
sampler hands each item its epoch, and the item's crop is drawn from a generator seeded
from those three numbers. Crops are therefore the same for any `num_workers`, with
persistent workers, and after a resume.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import math
import multiprocessing
import os
import random
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

from jepa.config import ConfigError, JEPAConfig
from jepa.masks import hash_uniform

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "jepa"

# Per-channel mean/std of the training images.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet1k": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# PIL's RGB -> L conversion weights (ITU-R 601-2), used to derive grayscale statistics.
_LUMA = (0.299, 0.587, 0.114)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Decoding errors PIL raises for truncated or malformed files (PNG raises SyntaxError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the config points; the message says how to get it."""


class CorruptImageError(OSError):
    """An image file cannot be decoded and `corrupt_images` is `raise`."""


class CorruptImageWarning(UserWarning):
    """An image file cannot be decoded and is skipped (`corrupt_images: skip`)."""


class SharedCounter:
    """An integer counter shared by the DataLoader workers and the main process."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, n: int = 1) -> int:
        """Add `n` and return the new total."""
        with self._value.get_lock():
            self._value.value += n
            return self._value.value

    @property
    def value(self) -> int:
        return self._value.value

    def __getstate__(self) -> dict[str, Any]:
        # Handed to a DataLoader worker: share the value. Plain pickling or deepcopy (which
        # multiprocessing forbids for shared values): a detached counter starting at the count.
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"shared": self._value}
        return {"start": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._value = state.get("shared") or multiprocessing.Value("q", state["start"])


# ---- locations ------------------------------------------------------------------------------


def dataset_root(cfg: JEPAConfig) -> Path:
    """The dataset's root folder: `cfg.root_path`, or the dataset's default location."""
    if cfg.root_path is not None:
        return Path(cfg.root_path).expanduser()
    name = cfg.dataset_name
    if name == "fashion_mnist":
        return FASHION_MNIST_DIR
    if name == "cifar10":
        return CACHE_DIR / "cifar10"
    layout = "train/<class>/<image> and val/<class>/<image>"
    if name == "imagefolder":
        layout = f"{cfg.image_folder}/<class>/<image> (and val/<class>/<image> for evaluation)"
    raise DatasetNotFoundError(
        f"dataset={cfg.dataset!r} has no default location; "
        f"set root_path to a folder holding {layout}"
    )


def _split_name(split: str) -> str:
    if split == "train":
        return "train"
    if split in ("test", "val"):
        return "test"
    raise ValueError(f"split={split!r} is not one of 'train', 'test', 'val'")


# ---- transforms -----------------------------------------------------------------------------


def normalization_stats(cfg: JEPAConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel `(mean, std)` for `cfg.dataset`, each of length `cfg.in_chans`."""
    mean, std = NORMALIZATION[cfg.dataset_name]
    if len(mean) == cfg.in_chans:
        return mean, std
    if len(mean) == 1:  # grayscale data fed to an RGB encoder: channels are repeated
        return mean * cfg.in_chans, std * cfg.in_chans
    if cfg.in_chans == 1:  # RGB data read as L: weight the statistics like PIL does
        gray_mean = sum(w * m for w, m in zip(_LUMA, mean, strict=True))
        gray_std = sum(w * s for w, s in zip(_LUMA, std, strict=True))
        return (gray_mean,), (gray_std,)
    raise ConfigError(f"in_chans={cfg.in_chans} does not fit dataset={cfg.dataset!r}; use 1 or 3")


def pretrain_transform(cfg: JEPAConfig) -> Callable[[Any], torch.Tensor]:
    """uint8 tensor `(C, h, w)` or PIL image -> float `(C, S, S)`, `S = cfg.image_size`:
    RandomResizedCrop(scale=cfg.crop_scale) and normalisation; no flip (official default)."""
    mean, std = normalization_stats(cfg)
    full = functools.partial(
        _pretrain_pipeline, cfg.image_size, tuple(cfg.crop_scale), tuple(mean), tuple(std)
    )
    # A crop of the whole area fits a square image only as the whole image (any other aspect
    # ratio makes one side longer than the image's), so at scale (1, 1) the crop is a no-op.
    whole = tuple(cfg.crop_scale) == (1.0, 1.0)
    return SizedImageShortcut(full, cfg.image_size, mean, std) if whole else full()


def eval_transform(cfg: JEPAConfig) -> Callable[[Any], torch.Tensor]:
    """uint8 tensor `(C, h, w)` or PIL image -> float `(C, S, S)`: resize the short side to
    `S * 256 / 224` (exactly `S` below 224), center crop `S`, normalise."""
    size = cfg.image_size
    resize = int(size * 256 / 224) if size >= 224 else size
    mean, std = normalization_stats(cfg)
    full = functools.partial(_eval_pipeline, size, resize, tuple(mean), tuple(std))
    return SizedImageShortcut(full, size, mean, std) if resize == size else full()


# torchvision is imported where it is used, never at the top of this module: its import takes
# about 2 s on a 2-core machine (all of torchvision.models comes with it), and the default
# data (Fashion-MNIST's IDX files at the model's size) never needs it.


def _pretrain_pipeline(size: int, scale: tuple, mean: tuple, std: tuple) -> Callable:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
            v2.ToPureTensor(),
        ]
    )


def _eval_pipeline(size: int, resize: int, mean: tuple, std: tuple) -> Callable:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
            v2.ToPureTensor(),
        ]
    )


class SizedImageShortcut:
    """The v2 pipeline `build_full()` (a resize or crop to `size`, then scaling to [0, 1] and
    normalising), with a shortcut for uint8 tensors already `size` × `size`, which the resize
    or crop leaves unchanged: only the scaling and normalisation run, the same operations as
    v2's `to_dtype` and `normalize` on the same values (tests/test_data.py: bit for bit).

    The shortcut skips the v2 pipeline's per-transform dispatch, about 0.5 ms of 0.6 per
    28-pixel image, which in-process loading pays inside every training step. The pipeline
    itself is built on first use, so data that always takes the shortcut never imports
    torchvision.
    """

    def __init__(
        self,
        build_full: Callable[[], Callable[[Any], torch.Tensor]],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.size, self._build_full = size, build_full
        self._full: Callable[[Any], torch.Tensor] | None = None
        # v2's normalize makes the same float32 (C, 1, 1) tensors of mean and std.
        self._mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    @property
    def full(self) -> Callable[[Any], torch.Tensor]:
        """The whole v2 pipeline, built on first use."""
        if self._full is None:
            self._full = self._build_full()
        return self._full

    def __call__(self, image: Any) -> torch.Tensor:
        if (
            type(image) is torch.Tensor
            and image.dtype == torch.uint8
            and image.shape[-2:] == (self.size, self.size)
        ):
            return self._scale(image)
        return self.full(image)

    def batch(self, images: torch.Tensor) -> torch.Tensor | None:
        """uint8 `(B, C, S, S)` → float `(B, C, S, S)`, the values `self(image)` gives each
        image, in one call; `None` when the images are not uint8 at `size`."""
        if images.dtype != torch.uint8 or images.shape[-2:] != (self.size, self.size):
            return None
        return self._scale(images)

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        # v2's to_dtype(scale=True) from uint8, then its normalize: the same ops in order.
        return images.to(torch.float32).mul_(1.0 / 255).sub_(self._mean).div_(self._std)


# ---- datasets -------------------------------------------------------------------------------


class TensorImageDataset(Dataset):
    """In-memory uint8 images `(N, C, H, W)` and labels `(N,)`.

    Items are `(transform(image), label, index)`; with `in_chans` larger than `C == 1` the
    single channel is repeated before the transform.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        in_chans: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if in_chans not in (None, images.shape[1]) and images.shape[1] != 1:
            raise ValueError(
                f"in_chans={in_chans} does not fit images with {images.shape[1]} channels"
            )
        self.images, self.targets, self.classes = images, labels.long(), list(classes)
        self.transform = transform
        self.in_chans = images.shape[1] if in_chans is None else in_chans

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.images[index]
        if image.shape[0] != self.in_chans:
            image = image.expand(self.in_chans, -1, -1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        """`[self[i] for i in indices]`, which a DataLoader asks for once per batch."""
        items = self.load_batch(indices)
        return items if items is not None else [self[index] for index in indices]

    def load_batch(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]] | None:
        """The items of `indices` through the transform's batch form
        (`SizedImageShortcut.batch`), one call for all the images; `None` when the transform
        has no batch form or it does not apply. A batch form draws no random numbers.

        Per image, the transform's dispatch costs more than its arithmetic: about 8 ms of a
        64-image training batch's loading went to it.
        """
        batch_form = getattr(self.transform, "batch", None)
        if batch_form is None:
            return None
        indices = list(indices)
        images = self.images[indices]
        if images.shape[1] != self.in_chans:
            images = images.expand(-1, self.in_chans, -1, -1)
        transformed = batch_form(images)
        if transformed is None:
            return None
        labels = self.targets[indices].tolist()
        return list(zip(transformed.unbind(0), labels, indices, strict=True))


class ImageFolderDataset(Dataset):
    """Images in class subfolders, `root/<class>/<image>`, decoded with PIL per item.

    Items are `(transform(image), label, index)` with the image in `mode` ("RGB" or "L"),
    or `None` when the file cannot be decoded and `corrupt_images == "skip"`. Skips are
    warned once per file (per process) and counted in `num_skipped` across workers.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        mode: str = "RGB",
        corrupt_images: str = "skip",
    ) -> None:
        if corrupt_images not in ("skip", "raise"):
            raise ValueError(f"corrupt_images={corrupt_images!r} is not 'skip' or 'raise'")
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        self.root = Path(root)
        self.classes, self.class_to_idx = find_classes(self.root)
        # make_dataset sorts by class then file name: a fixed order, so indices are stable.
        self.samples = make_dataset(self.root, self.class_to_idx, extensions=IMG_EXTENSIONS)
        self.targets = [label for _, label in self.samples]
        self.transform, self.mode, self.corrupt_images = transform, mode, corrupt_images
        self._skips = SharedCounter()
        self._warned: set[str] = set()

    @property
    def num_skipped(self) -> int:
        """Items returned as `None` so far, summed over all processes."""
        return self._skips.value

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert(self.mode)  # convert() decodes the whole file
        except _DECODE_ERRORS as err:
            if self.corrupt_images == "raise":
                raise CorruptImageError(
                    f"cannot decode image {path}: {err}; fix or remove the file, or set "
                    f"corrupt_images: skip"
                ) from err
            total = self._skips.add()
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(
                    f"skipping unreadable image {path}: {err} ({total} skipped so far)",
                    CorruptImageWarning,
                    stacklevel=2,
                )
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (`.gz` or unpacked) as a uint8 tensor of its dims."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(f"{path} is not an IDX file (magic number {data[:4].hex()!r})")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    size = math.prod(dims)
    if len(data) - offset != size:
        raise ValueError(
            f"{path}: header says dims {dims} ({size} bytes) "
            f"but the file holds {len(data) - offset}"
        )
    return torch.from_numpy(np.frombuffer(data, np.uint8, size, offset).reshape(dims).copy())


def _find_idx_pair(dirs: Sequence[Path], stems: Sequence[str]) -> tuple[Path, ...] | None:
    """The first folder holding every stem, as unpacked or `.gz` file."""
    for folder in dirs:
        found = [
            next((p for p in (folder / s, folder / f"{s}.gz") if p.is_file()), None) for s in stems
        ]
        if all(found):
            return tuple(found)
    return None


def _fashion_mnist_dirs(cfg: JEPAConfig) -> list[Path]:
    if cfg.root_path is None:
        return [FASHION_MNIST_DIR, CACHE_DIR / "fashion_mnist" / "FashionMNIST" / "raw"]
    root = dataset_root(cfg)
    return [root, root / "raw", root / "FashionMNIST" / "raw"]


def _load_fashion_mnist(cfg: JEPAConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images `(N, 1, 28, 28)` uint8 and labels `(N,)` from the IDX files of `split`."""
    stems = _IDX_FILES[split]
    dirs = _fashion_mnist_dirs(cfg)
    files = _find_idx_pair(dirs, stems)
    if files is None and cfg.download:
        import torchvision

        target = dataset_root(cfg) if cfg.root_path else CACHE_DIR / "fashion_mnist"
        torchvision.datasets.FashionMNIST(target, train=split == "train", download=True)
        files = _find_idx_pair([target / "FashionMNIST" / "raw"], stems)
    if files is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST files {stems[0]}[.gz] and {stems[1]}[.gz] not found; looked in "
            f"{', '.join(map(str, dirs))}. "
            f"Install them with `apt-get install dataset-fashion-mnist` "
            f"(into {FASHION_MNIST_DIR}), set `download: true` to fetch them with torchvision, "
            f"or set root_path to a folder holding the IDX files"
        )
    images, labels = (read_idx(p) for p in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{files[0]} has shape {tuple(images.shape)} and {files[1]} has shape "
            f"{tuple(labels.shape)}; expected (N, H, W) images and (N,) labels"
        )
    return images.unsqueeze(1), labels


def _load_cifar10(cfg: JEPAConfig, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images `(N, 3, 32, 32)` uint8, labels `(N,)` and class names from the CIFAR-10 pickles."""
    import torchvision

    root = dataset_root(cfg)
    folder = root / torchvision.datasets.CIFAR10.base_folder
    how = (
        "set `download: true` to fetch it with torchvision, or extract cifar-10-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar.html) into root_path"
    )
    if not cfg.download and not folder.is_dir():
        raise DatasetNotFoundError(f"CIFAR-10 not found: {folder} does not exist; {how}")
    try:
        raw = torchvision.datasets.CIFAR10(root, train=split == "train", download=cfg.download)
    except RuntimeError as err:  # torchvision's "not found or corrupted" (md5 check)
        raise DatasetNotFoundError(
            f"CIFAR-10 in {folder} is incomplete or corrupted ({err}); {how}"
        ) from err
    images = torch.from_numpy(raw.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return images, torch.as_tensor(raw.targets), list(raw.classes)


_CIFAR10_FILES = {
    "train": (*(f"data_batch_{i}" for i in range(1, 6)), "batches.meta"),
    "test": ("test_batch", "batches.meta"),
}


def source_files(cfg: JEPAConfig, split: str) -> list[Path]:
    """The files `build_dataset(cfg, split)` reads, for the file-based datasets
    (fashion_mnist, cifar10); image folders raise ValueError (list their images instead)."""
    split = _split_name(split)
    if cfg.dataset_name == "fashion_mnist":
        found = _find_idx_pair(_fashion_mnist_dirs(cfg), _IDX_FILES[split])
        if found is None:
            raise DatasetNotFoundError(
                f"Fashion-MNIST {split} IDX files not found in "
                f"{', '.join(map(str, _fashion_mnist_dirs(cfg)))}"
            )
        return list(found)
    if cfg.dataset_name == "cifar10":
        import torchvision

        folder = dataset_root(cfg) / torchvision.datasets.CIFAR10.base_folder
        return [folder / name for name in _CIFAR10_FILES[split]]
    raise ValueError(f"dataset={cfg.dataset!r} is an image folder: it has no fixed source files")


def _image_folder_path(cfg: JEPAConfig, split: str) -> Path:
    root = dataset_root(cfg)
    if split == "train":
        sub = cfg.image_folder if cfg.dataset_name == "imagefolder" else "train"
        path = root / sub
    else:
        path = root / "val"
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{cfg.dataset} {split} images not found: {path} does not exist; expected "
            f"{path}/<class>/<image> (ImageFolder layout: one subfolder per class)"
        )
    return path


def _channel_repeat_ok(cfg: JEPAConfig, have: int) -> None:
    if cfg.in_chans != have and not (have == 1 and cfg.in_chans == 3):
        raise ConfigError(
            f"in_chans={cfg.in_chans} does not match dataset={cfg.dataset!r}, whose images have "
            f"{have} channel(s); set in_chans={have}"
        )


def build_dataset(
    cfg: JEPAConfig, split: str = "train", *, train_transform: bool = True
) -> Dataset:
    """The dataset named by `cfg.dataset`, items `(image (C, S, S) float, label, index)`.

    `split` is "train" or "test" ("val" is the same split; for ImageFolder datasets both
    read the `val` folder). `train_transform` picks `pretrain_transform` over
    `eval_transform`. Always the whole split: `pretrain_dataset` applies `pretrain_subset`.
    """
    split = _split_name(split)
    transform = pretrain_transform(cfg) if train_transform else eval_transform(cfg)
    name = cfg.dataset_name
    if name in ("imagefolder", "imagenet1k"):
        if cfg.in_chans not in (1, 3):
            raise ConfigError(f"in_chans={cfg.in_chans} is not supported for {name}; use 1 or 3")
        path = _image_folder_path(cfg, split)
        try:
            return ImageFolderDataset(
                path,
                transform,
                mode="L" if cfg.in_chans == 1 else "RGB",
                corrupt_images=cfg.corrupt_images,
            )
        except FileNotFoundError as err:  # torchvision: no class folders / no images
            raise DatasetNotFoundError(
                f"{path}: {err}; expected {path}/<class>/<image> with one subfolder per class"
            ) from err
    if name == "fashion_mnist":
        images, labels = _load_fashion_mnist(cfg, split)
        classes = FASHION_MNIST_CLASSES
    elif name == "cifar10":
        images, labels, classes = _load_cifar10(cfg, split)
    else:
        raise ConfigError(f"dataset={cfg.dataset!r} has no loader in jepa.data")
    _channel_repeat_ok(cfg, images.shape[1])
    return TensorImageDataset(images, labels, classes, transform, cfg.in_chans)


def pretrain_indices(cfg: JEPAConfig, num_images: int) -> range:
    """Which of the `num_images` training images pretraining uses: the first
    `cfg.pretrain_subset` (all of them when it is None).

    The one place `pretrain_subset` applies: evaluation, probes and baselines always read
    whole splits (`build_dataset`), whatever `pretrain_subset` is.
    """
    limit = cfg.pretrain_subset
    return range(num_images if limit is None else min(limit, num_images))


def pretrain_dataset(cfg: JEPAConfig) -> Dataset:
    """The pretraining images: the train split with the pretrain transform, limited to
    `pretrain_indices` (a `Subset` view when `pretrain_subset` leaves some out)."""
    dataset = build_dataset(cfg, "train", train_transform=True)
    indices = pretrain_indices(cfg, len(dataset))
    return dataset if len(indices) == len(dataset) else Subset(dataset, indices)


def num_classes(dataset: Dataset) -> int:
    """Number of classes of a dataset from `build_dataset` (also through wrappers)."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # torch Subset, the pretrain loader's view
    if not hasattr(dataset, "classes"):
        raise TypeError(f"{type(dataset).__name__} has no `classes`; build it with build_dataset")
    return len(dataset.classes)


# ---- loaders --------------------------------------------------------------------------------


class DropNoneCollate:
    """Collate that drops `None` items (unreadable images) before calling `collate_fn`.

    `num_dropped` counts them over all workers. A batch with no item left is `None`, which
    `SkipEmptyLoader` leaves out.
    """

    def __init__(self, collate_fn: Callable[[list], Any] = default_collate) -> None:
        self.collate_fn = collate_fn
        self._dropped = SharedCounter()

    @property
    def num_dropped(self) -> int:
        return self._dropped.value

    def __call__(self, batch: list) -> Any:
        kept = [item for item in batch if item is not None]
        if len(kept) < len(batch):
            self._dropped.add(len(batch) - len(kept))
        return self.collate_fn(kept) if kept else None


class ImageAugmentation:
    """A pretraining collator (`jepa.masks`) whose batch images pass through `augment`, with
    keys `(seed, epoch, indices)`: augmentations drawn from `jepa.masks.hash_uniform` on
    those keys are, like the masks and crops, pure functions of the sample, so they do not
    depend on the number of workers or ranks, or on where an epoch was resumed. The masks
    index the patches of the augmented image, so context and targets come from one view.
    """

    def __init__(self, collator: Callable[[list], Any], seed: int) -> None:
        self.collator, self.seed = collator, seed

    @property
    def epoch(self) -> int:
        return self.collator.epoch

    def set_epoch(self, epoch: int) -> None:
        self.collator.set_epoch(epoch)

    def __call__(self, samples: list) -> Any:
        batch = self.collator(samples)
        keys = self.seed, self.collator.epoch, batch.indices.numpy()
        return batch._replace(images=self.augment(batch.images, keys))

    def augment(self, images: torch.Tensor, keys: tuple) -> torch.Tensor:
        raise NotImplementedError


FLIP_STREAM = 0x5EED  # the flips' key, apart from every stream of the masks


class HorizontalFlips(ImageAugmentation):
    """Each image mirrored left to right with probability 1/2."""

    def augment(self, images: torch.Tensor, keys: tuple) -> torch.Tensor:
        flip = torch.from_numpy(hash_uniform(*keys, FLIP_STREAM) < 0.5).view(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)


SHIFT_STREAMS = (0x5EEE, 0x5EEF)  # the shifts' keys (rows, columns), apart from the flips'


class RandomShifts(ImageAugmentation):
    """Each image moved by up to `shift` pixels along each axis, the edge pixels repeated
    into what is uncovered; the offsets are uniform integers in [-shift, shift], each axis
    on a stream of its own."""

    def __init__(self, collator: Callable[[list], Any], seed: int, shift: int) -> None:
        super().__init__(collator, seed)
        self.shift = shift

    def augment(self, images: torch.Tensor, keys: tuple) -> torch.Tensor:
        s = self.shift
        n, _, height, width = images.shape
        dy, dx = (
            torch.from_numpy(np.floor(hash_uniform(*keys, stream) * (2 * s + 1)).astype(np.int64))
            - s
            for stream in SHIFT_STREAMS
        )
        padded = F.pad(images, (s, s, s, s), mode="replicate")
        # Output pixel (r, c) of image i reads padded pixel (r + s - dy_i, c + s - dx_i).
        rows = torch.arange(height) + s - dy.view(-1, 1)  # (n, height)
        cols = torch.arange(width) + s - dx.view(-1, 1)  # (n, width)
        moved = padded[torch.arange(n).view(-1, 1, 1), :, rows[:, :, None], cols[:, None, :]]
        return moved.permute(0, 3, 1, 2).contiguous()


class SkipEmptyLoader(DataLoader):
    """DataLoader that leaves out batches whose items were all unreadable (collated to `None`),
    so an epoch may yield fewer than `len(loader)` batches."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        return (batch for batch in batches if batch is not None)


class EpochSampler(DistributedSampler):
    """`DistributedSampler` whose keys are `(index, epoch)`: the epoch travels with each index
    to the worker that loads it, where it seeds the item's augmentation. An epoch can start
    part-way (`set_start`), which is how a resumed run skips the batches it trained on."""

    start_index = 0

    def set_start(self, start_index: int) -> None:
        self.start_index = start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        keys = ((index, epoch) for index in super().__iter__())
        return itertools.islice(keys, self.start_index, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item's augmentation."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


class SeededItems(Dataset):
    """View of `dataset` taking `(index, epoch)` keys (or a plain index, epoch 0): the item
    is loaded with the CPU generator seeded by `item_seed(seed, epoch, index)`, then the
    generator's previous state is restored."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(item_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[Any]:
        """`[self[key] for key in keys]`. Items that `load_batch` serves draw no random
        numbers, so they are the same without the seeding."""
        items = load_batch(
            self.dataset, [key[0] if isinstance(key, tuple) else key for key in keys]
        )
        return items if items is not None else [self[key] for key in keys]


def load_batch(dataset: Dataset, indices: Sequence[int]) -> list[Any] | None:
    """`dataset`'s items at `indices` from its `load_batch` (through `Subset` views), or
    `None` when it has none or it does not apply (then load the items one by one)."""
    while isinstance(dataset, Subset):
        indices = [dataset.indices[index] for index in indices]
        dataset = dataset.dataset
    method = getattr(dataset, "load_batch", None)
    return method(indices) if method is not None else None


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from its torch seed (set by the
    loader's generator), for collators that draw from them."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class PretrainLoader:
    """This rank's pretraining batches, epoch by epoch."""

    loader: DataLoader
    sampler: EpochSampler
    collator: Callable
    steps_per_epoch: int  # optimizer steps
    local_batch_size: int

    def start_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Point sampler, crops and masks at `epoch`, skipping its first `skip_batches`."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(skip_batches * self.local_batch_size)
        self.collator.set_epoch(epoch)


def build_pretrain_loader(
    cfg: JEPAConfig,
    dataset: Dataset,
    collator: Callable[[list], Any],
    *,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> PretrainLoader:
    """Shuffled, drop-last loader of `cfg.batch_size // world_size` items per rank.

    `cfg.batch_size` is the global batch. Call `start_epoch(epoch)` before each epoch: the
    order and every item's crop are functions of `(cfg.seed, epoch)`, and the masks (and,
    with `cfg.hflip`, the flips: `HorizontalFlips`) of the collator's `set_epoch`, so
    batches do not depend on the number of workers or on where an epoch was resumed.
    Workers are re-forked each epoch (not persistent) so that they see the epoch set on
    the collator just before. `None` items (unreadable images) are
    dropped before `collator` (`loader.collate_fn.num_dropped` counts them); a batch left
    empty is skipped.
    """
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is not divisible by world_size={world_size}; "
            f"choose a batch_size that is a multiple of the number of processes"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
    per_rank = cfg.batch_size // world_size
    sampler = EpochSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    steps = sampler.num_samples // per_rank // cfg.accum_iter
    if steps < 1:
        raise ValueError(
            f"{len(dataset)} images give {sampler.num_samples} per rank: too few for one step "
            f"of batch_size={cfg.batch_size} x accum_iter={cfg.accum_iter} over {world_size} "
            f"process(es); lower batch_size or use more images (pretrain_subset="
            f"{cfg.pretrain_subset})"
        )
    if cfg.hflip:
        collator = HorizontalFlips(collator, cfg.seed)
    if cfg.shift:
        collator = RandomShifts(collator, cfg.seed, cfg.shift)
    loader = SkipEmptyLoader(
        SeededItems(dataset, cfg.seed),
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        collate_fn=DropNoneCollate(collator),
        num_workers=cfg.num_workers,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    return PretrainLoader(loader, sampler, collator, steps, per_rank)


def build_eval_loader(
    cfg: JEPAConfig, dataset: Dataset, *, batch_size: int | None = None
) -> DataLoader:
    """Sequential loader (no shuffle, keeps the last partial batch) of `batch_size` items
    (default `cfg.eval_batch_size`), batches `(images (B, C, S, S), labels (B,), indices (B,))`.

    `None` items are dropped and counted in `loader.collate_fn.num_dropped`; a batch left
    empty is skipped.
    """
    return SkipEmptyLoader(
        dataset,
        batch_size=batch_size or cfg.eval_batch_size,
        shuffle=False,
        drop_last=False,
        collate_fn=DropNoneCollate(default_collate),
        num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),
    )

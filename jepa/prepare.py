"""Check that a dataset is present and readable, and describe it in a manifest.

The manifest is the pipeline's record of *which* data a run used: per split the number
of images, their shape and the images per class, and the SHA-256 of every source file.
It holds no absolute paths and no timestamps, so the same data gives the same manifest
on any machine and from any `root_path`; the DVC stages downstream depend on the
manifest instead of on the (possibly external) dataset folder.

==============  ==============================================================
dataset         what `files` records
==============  ==============================================================
fashion_mnist   SHA-256 and size of the four IDX files (`.gz` or unpacked)
cifar10         SHA-256 and size of the `cifar-10-batches-py` pickles
imagefolder,    a SHA-256 over the sorted `relative/path<TAB>size` listing of
imagenet1k      every image of the split: hashing ~150 GB on every run would not
                pay, and a changed, added or removed file still changes the digest
                unless it keeps its name and size
==============  ==============================================================

No compact copy (e.g. `.npy`) is written: the IDX reader decodes all 60k Fashion-MNIST
training images in about half a second, far below one training step's cost.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jepa.config import JEPAConfig
from jepa.data import build_dataset, dataset_root, pretrain_indices, source_files
from jepa.io import write_json

SPLITS = ("train", "test")
MANIFEST_VERSION = 2  # 2: the train split records `pretrain_subset` (was `subset`)


class DatasetCheckError(ValueError):
    """The dataset is on disk but not usable: unreadable images, missing classes, bad labels."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def listing_digest(root: Path, paths: Sequence[str | Path]) -> dict[str, Any]:
    """SHA-256 over `relative/path<TAB>size` lines of `paths` (sorted), with the file count."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(Path(p) for p in paths):
        size = path.stat().st_size
        total += size
        digest.update(f"{path.relative_to(root).as_posix()}\t{size}\n".encode())
    return {"listing_sha256": digest.hexdigest(), "num_files": len(paths), "bytes": total}


def _class_counts(labels: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    counts = Counter(int(label) for label in labels)
    bad = sorted(set(counts) - set(range(len(classes))))
    if bad:
        raise DatasetCheckError(
            f"labels {bad} are outside the {len(classes)} classes {list(classes)}"
        )
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}


def _first_images(dataset: Any, labels: Sequence[int], split: str) -> list[Any]:
    """Decode the first image of every class; raise if any of them cannot be read."""
    first: dict[int, int] = {}
    for index, label in enumerate(labels):
        first.setdefault(int(label), index)
    items = {i: dataset[i] for i in first.values()}
    unreadable = [i for i, item in items.items() if item is None]
    if unreadable:
        samples = getattr(dataset, "samples", None)
        files = [str(samples[i][0]) for i in unreadable] if samples else unreadable
        raise DatasetCheckError(
            f"{split}: cannot decode {files}; fix or remove the files (the loader would skip them)"
        )
    return list(items.values())


def describe_split(cfg: JEPAConfig, split: str) -> dict[str, Any]:
    """Images, image shape, images per class and source checksums of one split.

    Raises `DatasetNotFoundError` (with how to get the data) when it is missing and
    `DatasetCheckError` when it is present but unusable.
    """
    dataset = build_dataset(cfg, split, train_transform=False)
    labels = [int(t) for t in dataset.targets]
    if not labels:
        raise DatasetCheckError(f"{cfg.dataset} {split} split has no images")
    counts = _class_counts(labels, dataset.classes)
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DatasetCheckError(f"{cfg.dataset} {split} split has no images of classes {empty}")
    image = _first_images(dataset, labels, split)[0][0]
    record: dict[str, Any] = {
        "num_images": len(labels),
        "image_shape": list(image.shape),
        "class_counts": counts,
    }
    record["files"] = split_files(cfg, split, dataset)
    if split == "train" and cfg.pretrain_subset is not None:
        kept = [labels[i] for i in pretrain_indices(cfg, len(labels))]
        record["pretrain_subset"] = {
            "num_images": len(kept),
            "class_counts": _class_counts(kept, dataset.classes),
        }
    return record


def split_files(cfg: JEPAConfig, split: str, dataset: Any = None) -> dict[str, Any]:
    """What the manifest's `files` records for one split (see the module docstring).

    Image folders are listed through their dataset (`dataset`, else built here).
    """
    if cfg.dataset_name in ("imagefolder", "imagenet1k"):
        dataset = dataset or build_dataset(cfg, split, train_transform=False)
        return listing_digest(dataset.root, [p for p, _ in dataset.samples])
    return {
        path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in source_files(cfg, split)
    }


def build_manifest(cfg: JEPAConfig, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """The manifest of `cfg.dataset` (module docstring): dataset, classes, every split."""
    described = {split: describe_split(cfg, split) for split in splits}
    classes = [list(d["class_counts"]) for d in described.values()]
    if any(c != classes[0] for c in classes):
        raise DatasetCheckError(f"the splits of {cfg.dataset} have different classes: {classes}")
    return {
        "version": MANIFEST_VERSION,
        "dataset": cfg.dataset_name,
        "num_classes": len(classes[0]),
        "classes": classes[0],
        "splits": described,
    }


def write_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    """Write `manifest` as sorted, indented JSON, atomically (same data → same bytes)."""
    return write_json(path, manifest)


class DatasetChangedError(DatasetCheckError):
    """The data on disk is not the data the manifest describes."""


def verify_manifest(cfg: JEPAConfig, path: str | Path, splits: Sequence[str] = ("train",)) -> None:
    """Raise `DatasetChangedError` unless `splits` of the data on disk are the ones the
    manifest at `path` describes (same dataset, same `files` record).

    The stages after `prepare` depend on the manifest, not on the data: this check keeps a
    stage from training on files that vanished or changed since the manifest was written.
    """
    manifest = json.loads(Path(path).read_text())
    fix = (
        f"restore the data, or rerun `dvc repro` so that the prepare stage describes the data "
        f"as it is now in {path}"
    )
    if manifest.get("dataset") != cfg.dataset_name:
        raise DatasetChangedError(
            f"{path} describes dataset {manifest.get('dataset')!r}, but the config trains on "
            f"{cfg.dataset_name!r}; {fix}"
        )
    for split in splits:
        try:
            current = split_files(cfg, split)
        except FileNotFoundError as err:  # DatasetNotFoundError, or a file gone mid-listing
            raise DatasetChangedError(
                f"the {split} data that {path} describes is gone: {err}. To continue, {fix}"
            ) from err
        recorded = manifest["splits"][split]["files"]
        if current != recorded:
            raise DatasetChangedError(
                f"the {split} data under {dataset_root(cfg)} changed since {path} was written "
                f"({_files_difference(recorded, current)}); {fix}"
            )


def _files_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """Which entries of a split's `files` record differ, in a few words."""
    if "listing_sha256" in recorded:  # an image folder
        return (
            f"{recorded.get('num_files')} files of {recorded.get('bytes')} bytes then, "
            f"{current.get('num_files')} of {current.get('bytes')} now"
        )
    changed = sorted(name for name in recorded.keys() | current.keys()
                     if recorded.get(name) != current.get(name))  # fmt: skip
    return f"different files: {', '.join(changed)}"

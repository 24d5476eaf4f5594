"""The prepare stage: dataset checks and a manifest that identifies the data, not its path."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fmnist_data import write_idx_gz, write_tiny_fmnist
from PIL import Image

from jepa.config import JEPAConfig
from jepa.data import DatasetNotFoundError
from jepa.prepare import DatasetCheckError, build_manifest, listing_digest, write_manifest

REPO = Path(__file__).resolve().parents[1]
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_labels(root: Path, split: str) -> np.ndarray:
    """The labels IDX file as written (8-byte header, then one byte per label)."""
    return np.frombuffer(
        gzip.decompress((root / "raw" / IDX_NAMES[split][1]).read_bytes())[8:], np.uint8
    )


def fmnist_cfg(root: Path, **overrides) -> JEPAConfig:
    return JEPAConfig.preset("fmnist_w192", root_path=str(root), num_workers=0, **overrides)


def test_manifest_counts_classes_and_hashes_the_source_files(tmp_path: Path) -> None:
    root = write_tiny_fmnist(tmp_path / "fm")
    labels = {split: read_labels(root, split) for split in ("train", "test")}
    manifest = build_manifest(fmnist_cfg(root, pretrain_subset=20))

    assert manifest["dataset"] == "fashion_mnist"
    assert manifest["num_classes"] == 10
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    assert (train["num_images"], test["num_images"]) == (128, 64)
    assert train["image_shape"] == [1, 28, 28]
    assert list(train["class_counts"].values()) == np.bincount(labels["train"]).tolist()
    kept = train["pretrain_subset"]
    assert sum(kept["class_counts"].values()) == kept["num_images"] == 20
    subset_counts = np.bincount(labels["train"][:20], minlength=10).tolist()
    assert list(kept["class_counts"].values()) == subset_counts
    for split in ("train", "test"):
        for name in IDX_NAMES[split]:
            data = (root / "raw" / name).read_bytes()
            files = manifest["splits"][split]["files"]
            assert files[name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_manifest_bytes_depend_on_the_data_not_on_its_location(tmp_path: Path) -> None:
    write_tiny_fmnist(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    one = write_manifest(build_manifest(fmnist_cfg(tmp_path / "a")), tmp_path / "one.json")
    two = build_manifest(fmnist_cfg(tmp_path / "elsewhere" / "b"))
    write_manifest(two, tmp_path / "two.json")
    assert one.read_bytes() == (tmp_path / "two.json").read_bytes()
    assert str(tmp_path) not in one.read_text()

    write_tiny_fmnist(tmp_path / "a", seed=1)  # other images: other checksums
    three = build_manifest(fmnist_cfg(tmp_path / "a"))
    assert three["splits"]["train"]["files"] != two["splits"]["train"]["files"]


def test_missing_dataset_fails_with_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_manifest(fmnist_cfg(tmp_path / "nothing-here"))


def test_prepare_stage_reports_a_missing_dataset_in_one_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"dataset: fashion_mnist\nroot_path: {tmp_path / 'absent'}\nnproc: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--params", str(params),
         "--out", str(tmp_path / "manifest.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: Fashion-MNIST files" in proc.stderr and "root_path" in proc.stderr
    assert not (tmp_path / "manifest.json").exists()


def test_labels_outside_the_classes_are_rejected(tmp_path: Path) -> None:
    write_tiny_fmnist(tmp_path / "fm")
    write_idx_gz(tmp_path / "fm" / "raw" / IDX_NAMES["test"][1], np.full(64, 12, np.uint8))
    with pytest.raises(DatasetCheckError, match=r"labels \[12\] are outside"):
        build_manifest(fmnist_cfg(tmp_path / "fm"))


def test_a_split_missing_a_class_is_rejected(tmp_path: Path) -> None:
    write_tiny_fmnist(tmp_path / "fm")
    write_idx_gz(tmp_path / "fm" / "raw" / IDX_NAMES["test"][1], np.arange(64, dtype=np.uint8) % 9)
    with pytest.raises(DatasetCheckError, match="no images of classes \\['Ankle boot'\\]"):
        build_manifest(fmnist_cfg(tmp_path / "fm"))


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog")) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def folder_cfg(root: Path) -> JEPAConfig:
    return JEPAConfig(
        dataset="imagefolder", root_path=str(root), image_size=16, patch_size=8, num_workers=0
    )


def test_image_folder_manifest_uses_a_listing_digest(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs")
    manifest = build_manifest(folder_cfg(tmp_path / "imgs"))
    train = manifest["splits"]["train"]
    assert manifest["classes"] == ["cat", "dog"]
    assert train["class_counts"] == {"cat": 3, "dog": 3}
    assert train["files"]["num_files"] == 6
    before = train["files"]["listing_sha256"]

    (tmp_path / "imgs" / "train" / "dog" / "2.png").rename(
        tmp_path / "imgs" / "train" / "dog" / "9.png"
    )
    after = build_manifest(folder_cfg(tmp_path / "imgs"))["splits"]["train"]["files"]
    assert after["listing_sha256"] != before
    assert listing_digest(tmp_path, []) == {
        "listing_sha256": hashlib.sha256(b"").hexdigest(), "num_files": 0, "bytes": 0
    }  # fmt: skip


def test_unreadable_image_folder_fails_naming_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "val" / "cat" / "0.png"
    bad.write_bytes(b"not a png")
    with pytest.warns(UserWarning), pytest.raises(DatasetCheckError, match=str(bad)):
        build_manifest(folder_cfg(tmp_path / "imgs"))


def test_manifest_is_sorted_json(tmp_path: Path) -> None:
    write_tiny_fmnist(tmp_path / "fm")
    path = write_manifest(build_manifest(fmnist_cfg(tmp_path / "fm")), tmp_path / "m.json")
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"

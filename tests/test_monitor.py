"""The online kNN monitor (jepa/monitor.py): what it measures and on which images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_config
from torch import nn

from jepa import monitor
from jepa.monitor import KnnMonitor


class MeanEncoder(nn.Module):
    """Features: an image's mean value, then its pixels' std (a fixed 2-d summary)."""

    def forward_features(self, x: torch.Tensor, num_last_blocks: int = 1) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], 1).repeat(1, num_last_blocks)


def coded_images(labels: np.ndarray, seed: int) -> torch.Tensor:
    """Images whose brightness codes their class (plus noise): separable by MeanEncoder."""
    noise = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(labels, dtype=torch.float32)[:, None, None, None] * 3 + 0.1 * noise


def make_monitor(labels: np.ndarray) -> KnnMonitor:
    images = coded_images(labels, seed=0)
    return KnnMonitor(images, labels, k=5, num_last_blocks=1, batch_size=16, amp="none")


def test_monitor_scores_separable_features_high_and_shuffled_labels_at_chance() -> None:
    labels = np.arange(300) % 5
    measured = make_monitor(labels).measure(MeanEncoder(), torch.device("cpu"))
    assert measured["monitor_knn_top1"] >= 0.95 and measured["monitor_s"] > 0  # cosine kNN
    shuffled = make_monitor(labels)
    shuffled.labels = np.random.default_rng(0).permutation(labels)
    assert shuffled.measure(MeanEncoder(), torch.device("cpu"))["monitor_knn_top1"] < 0.4


def test_monitor_keeps_the_encoders_mode() -> None:
    encoder = MeanEncoder().train()
    make_monitor(np.arange(30) % 3).measure(encoder, torch.device("cpu"))
    assert encoder.training


def test_monitor_reads_a_fixed_subset_of_the_training_split_only(
    tiny_fmnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = []
    build = monitor.build_dataset

    def spy(cfg, split="train", **kw):
        splits.append((split, kw))
        return build(cfg, split, **kw)

    monkeypatch.setattr(monitor, "build_dataset", spy)
    cfg = tiny_config(root_path=str(tiny_fmnist), knn_monitor_images=60)
    first, again = KnnMonitor.from_config(cfg), KnnMonitor.from_config(cfg)
    assert splits == [("train", {"train_transform": False})] * 2
    assert len(first.images) == 60 and first.num_query == 20
    assert torch.equal(first.images, again.images)  # the same images every time
    other_seed = KnnMonitor.from_config(cfg.replace(seed=1))
    assert not torch.equal(first.images, other_seed.images)
    assert KnnMonitor.from_config(cfg.replace(knn_monitor_images=0)) is None
    # More images asked for than the split has: all of them.
    assert len(KnnMonitor.from_config(cfg.replace(knn_monitor_images=10**6)).images) == 128

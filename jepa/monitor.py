"""The online kNN monitor: a learning curve of the target encoder during pretraining.

At the start of a fresh run and after every epoch, rank 0 encodes a fixed labelled subset
of the TRAINING split (never the test split) with the target encoder (the network that is
exported and probed), splits it into a bank and a query part, and logs the query part's
weighted kNN top-1 against the bank (`jepa.probe.knn_accuracy`, DINO's vote) as
`monitor_knn_top1`, with the seconds it took as `monitor_s`. The images are decoded
once, with the evaluation transform, so each measurement is a few forward passes.

`knn_monitor_images` sets the subset's size (0 turns the monitor off); a third of it is
the query part. The subset is drawn from the whole training split with `seed`, so every
run of one config on one dataset measures the same images.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from jepa.config import JEPAConfig
from jepa.data import build_dataset
from jepa.features import extract_features, probe_subset
from jepa.probe import knn_accuracy

QUERY_SHARE = 1 / 3  # of the monitor's images, the part whose labels are predicted


class KnnMonitor:
    """kNN top-1 of a fixed bank/query split of training images (module docstring)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        *,
        k: int,
        num_last_blocks: int,
        batch_size: int,
        amp: str,
    ) -> None:
        if len(images) < 2:
            raise ValueError(f"the kNN monitor needs at least 2 images, got {len(images)}")
        self.images, self.labels = images, labels
        self.num_query = max(1, round(len(images) * QUERY_SHARE))
        self.k, self.num_last_blocks = k, num_last_blocks
        self.batch_size, self.amp = batch_size, amp

    @classmethod
    def from_config(cls, cfg: JEPAConfig) -> KnnMonitor | None:
        """The monitor `cfg` asks for (None when `knn_monitor_images` is 0)."""
        if cfg.knn_monitor_images == 0:
            return None
        dataset = build_dataset(cfg, "train", train_transform=False)
        subset = probe_subset(dataset, cfg.knn_monitor_images, cfg.seed)
        items = [item for item in subset if item is not None]  # unreadable images skipped
        images = torch.stack([item[0] for item in items])
        labels = np.array([int(item[1]) for item in items], dtype=np.int64)
        return cls(
            images,
            labels,
            k=cfg.knn_k,
            num_last_blocks=cfg.probe_last_blocks,
            batch_size=cfg.eval_batch_size,
            amp=cfg.amp,
        )

    def features(self, encoder: nn.Module, device: torch.device) -> np.ndarray:
        """`(N, D)` float32 features of the monitor's images; `encoder`'s mode is kept."""
        batches = [
            (
                self.images[start : start + self.batch_size],
                self.labels[start : start + self.batch_size],
            )
            for start in range(0, len(self.images), self.batch_size)
        ]
        features, _ = extract_features(
            encoder,
            batches,
            device=device,
            num_last_blocks=self.num_last_blocks,
            amp=self.amp,
            progress=False,
        )
        return features

    def measure(self, encoder: nn.Module, device: torch.device) -> dict[str, float]:
        """`{"monitor_knn_top1", "monitor_s"}` of `encoder` now."""
        start = time.perf_counter()
        feats = self.features(encoder, device)
        bank, query = slice(self.num_query, None), slice(0, self.num_query)
        top1 = knn_accuracy(
            feats[bank],
            self.labels[bank],
            feats[query],
            self.labels[query],
            k=self.k,
            device=device,
        )["knn_top1"]
        return {"monitor_knn_top1": top1, "monitor_s": time.perf_counter() - start}

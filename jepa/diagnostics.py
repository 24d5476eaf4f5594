"""Representation-collapse diagnostics (the seed's "Common Pitfalls", measured).

Collapse shows as target features that stop varying across images (low standard
deviation, low effective rank) or a predictor whose output no longer depends on its
input. These statistics are cheap enough to compute every few hundred steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def effective_rank(features: torch.Tensor, eps: float = 1e-12) -> float:
    """Entropy-based effective rank (Roy & Vetterli, 2007) of `(B, D)` features.

    `exp(H(p))` with `p` the normalised singular values of the centred features:
    1 for fully collapsed features, up to `min(B, D)` for isotropic ones.
    """
    x = features.float() - features.float().mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if s.sum() <= eps:
        return 1.0
    p = s / s.sum()
    return float(torch.exp(-(p * (p + eps).log()).sum()))


def collapse_stats(target_tokens: torch.Tensor, predictions: torch.Tensor) -> dict[str, float]:
    """Statistics of one batch.

    target_tokens: layer-normed target-encoder output `(B, N, D)`;
    predictions: predictor output `(R, K, D)`.
    Returns the mean over dimensions of the across-image std of pooled target features,
    their effective rank, and the across-row std of the predictions.
    """
    pooled = target_tokens.mean(1)
    pred_pooled = predictions.mean(1)
    return {
        "target_std": float(pooled.std(0).mean()),
        "effective_rank": effective_rank(pooled),
        "pred_std": float(pred_pooled.std(0).mean()) if pred_pooled.size(0) > 1 else 0.0,
    }


@dataclass
class CollapseMonitor:
    """Turns collapse statistics into a warning message when they fall toward collapse."""

    min_std: float = 1e-2
    min_rank_fraction: float = 0.05
    peak_rank: float = 0.0

    def check(self, stats: dict[str, float]) -> str | None:
        self.peak_rank = max(self.peak_rank, stats["effective_rank"])
        problems = []
        if stats["target_std"] < self.min_std:
            problems.append(f"target feature std {stats['target_std']:.2e} < {self.min_std}")
        if stats["pred_std"] < self.min_std:
            problems.append(f"predictor output std {stats['pred_std']:.2e} < {self.min_std}")
        if stats["effective_rank"] < max(1.5, self.min_rank_fraction * self.peak_rank):
            problems.append(
                f"effective rank {stats['effective_rank']:.2f} (peak so far {self.peak_rank:.2f})"
            )
        if not problems:
            return None
        return (
            "possible representation collapse: "
            + "; ".join(problems)
            + ". Check the EMA momentum (start near 0.996), the masking (multi-block, not random), "
            "and the learning rate."
        )

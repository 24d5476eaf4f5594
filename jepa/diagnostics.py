"""Representation-collapse diagnostics (the seed's "Common Pitfalls", measured).

Collapse shows as target features that stop varying across images (low standard
deviation, low effective rank) or a predictor whose output no longer depends on its
input. These statistics are cheap enough to compute every few hundred steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Turns collapse statistics into a warning when they fall toward collapse.

    Each statistic is compared with its own peak so far: a freshly initialised
    predictor has a small output scale, which is not collapse; a drop to a few percent
    of what the run already reached is.
    """

    drop_fraction: float = 0.05
    min_target_std: float = 1e-4
    peaks: dict = field(default_factory=dict)

    def check(self, stats: dict[str, float]) -> str | None:
        problems = []
        for key in ("target_std", "pred_std", "effective_rank"):
            peak = self.peaks[key] = max(self.peaks.get(key, 0.0), stats[key])
            if stats[key] < self.drop_fraction * peak:
                problems.append(
                    f"{key} {stats[key]:.3g} fell below {self.drop_fraction:.0%} of its peak {peak:.3g}"
                )
        if stats["target_std"] < self.min_target_std:
            problems.append(f"target_std {stats['target_std']:.2e} < {self.min_target_std}")
        if not problems:
            return None
        return (
            "possible representation collapse: "
            + "; ".join(problems)
            + ". Check the EMA momentum (start near 0.996), the masking (multi-block, not random), "
            "and the learning rate."
        )

"""Training schedules as pure functions of the global optimizer step.

Resuming is indexing: a schedule holds no state, so step k after a restart gives the
same value as step k of an uninterrupted run.
"""

from __future__ import annotations

import math


def _check(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from `start` (step 0) to `end` (step `total_steps`), constant `end` after."""
    _check(step, total_steps)
    progress = min(step / total_steps, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def linear_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Straight line from `start` to `end` over `total_steps`, constant `end` after."""
    _check(step, total_steps)
    return start + (end - start) * min(step / total_steps, 1.0)


def warmup_cosine_lr(
    step: int, *, warmup_steps: int, total_steps: int, start_lr: float, lr: float, min_lr: float
) -> float:
    """The seed's three-phase learning rate.

    Linear warmup `start_lr → lr` over `warmup_steps`, cosine decay `lr → min_lr` until
    `total_steps`, then constant `min_lr`.
    """
    _check(step, total_steps)
    if step < warmup_steps:
        return start_lr + (lr - start_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return cosine_schedule(min(step - warmup_steps, decay_steps), decay_steps, lr, min_lr)


def ema_momentum(
    step: int, total_steps: int, start: float, end: float, kind: str = "linear"
) -> float:
    """Target-encoder momentum rising from `start` to `end`.

    `linear` is the official code's schedule; `cosine` is the seed document's.
    """
    if kind == "linear":
        return linear_schedule(step, total_steps, start, end)
    if kind == "cosine":
        return cosine_schedule(step, total_steps, start, end)
    raise ValueError(f"unknown EMA schedule {kind!r}; use 'linear' or 'cosine'")


def weight_decay(step: int, total_steps: int, start: float, end: float | None) -> float:
    """Cosine weight decay `start → end` (official 0.04 → 0.4), or constant `start` when `end` is None."""
    if end is None:
        return start
    return cosine_schedule(step, total_steps, start, end)

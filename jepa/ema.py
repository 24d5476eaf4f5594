"""Exponential moving average of the context encoder into the target encoder."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """`target ← momentum · target + (1 − momentum) · online`, in place, for every parameter.

    One fused `torch._foreach_lerp_` over all tensors instead of a Python loop per
    parameter. Buffers are copied (they are not learned).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    if len(target_params) != len(online_params):
        raise ValueError("target and online modules have different parameter lists")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


@torch.no_grad()
def ema_update_reference(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Per-parameter loop, as the official code does it; kept as the benchmark baseline."""
    for pt, po in zip(target.parameters(), online.parameters(), strict=True):
        pt.mul_(momentum).add_((1.0 - momentum) * po.detach())

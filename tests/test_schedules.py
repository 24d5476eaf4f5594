"""Schedules are pure functions of the step; EMA is exact; diagnostics detect collapse."""

import math

import pytest
import torch
from torch import nn

from jepa import schedules
from jepa.diagnostics import CollapseMonitor, collapse_stats, effective_rank
from jepa.ema import ema_update, ema_update_reference


def test_lr_three_phases():
    kw = dict(warmup_steps=10, total_steps=100, start_lr=0.0, lr=1.0, min_lr=0.01)
    assert schedules.warmup_cosine_lr(0, **kw) == 0.0
    assert schedules.warmup_cosine_lr(5, **kw) == pytest.approx(0.5)
    assert schedules.warmup_cosine_lr(10, **kw) == pytest.approx(1.0)
    assert schedules.warmup_cosine_lr(55, **kw) == pytest.approx(0.505)
    assert schedules.warmup_cosine_lr(100, **kw) == pytest.approx(0.01)
    assert schedules.warmup_cosine_lr(500, **kw) == pytest.approx(0.01)  # constant after


def test_schedules_are_pure_functions_of_the_step():
    kw = dict(warmup_steps=7, total_steps=50, start_lr=1e-4, lr=1e-3, min_lr=1e-6)
    first = [schedules.warmup_cosine_lr(s, **kw) for s in range(60)]
    again = [schedules.warmup_cosine_lr(s, **kw) for s in reversed(range(60))][::-1]
    assert first == again


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ema_momentum_rises_from_start_to_end(kind):
    values = [schedules.ema_momentum(s, 100, 0.996, 1.0, kind) for s in range(0, 121, 10)]
    assert values[0] == pytest.approx(0.996) and values[10] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    mid = schedules.ema_momentum(50, 100, 0.996, 1.0, kind)
    assert mid == pytest.approx(0.998)


def test_cosine_and_linear_differ_off_the_midpoint():
    assert schedules.ema_momentum(25, 100, 0.9, 1.0, "cosine") < schedules.ema_momentum(
        25, 100, 0.9, 1.0, "linear"
    )
    with pytest.raises(ValueError, match="unknown EMA schedule"):
        schedules.ema_momentum(1, 10, 0.9, 1.0, "step")


def test_weight_decay_constant_or_cosine():
    assert schedules.weight_decay(30, 100, 0.05, None) == 0.05
    assert schedules.weight_decay(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.weight_decay(100, 100, 0.04, 0.4) == pytest.approx(0.4)


def test_schedule_arguments_are_validated():
    with pytest.raises(ValueError, match="total_steps"):
        schedules.cosine_schedule(0, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match="step"):
        schedules.linear_schedule(-1, 10, 1.0, 0.0)


def test_ema_is_exact_on_a_toy_module():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [
        0.9 * t.detach().clone() + 0.1 * o.detach()
        for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    ema_update(target, online, 0.9)
    for got, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_ema_matches_the_per_parameter_reference_and_momentum_one_freezes():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    a, b = (
        nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
        nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
    )
    b.load_state_dict(a.state_dict())
    ema_update(a, online, 0.99)
    ema_update_reference(b, online, 0.99)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    before = [p.clone() for p in a.parameters()]
    ema_update(a, online, 1.0)
    assert all(torch.equal(x, y) for x, y in zip(before, a.parameters(), strict=True))
    with pytest.raises(ValueError):
        ema_update(a, online, 1.5)


def test_effective_rank_of_isotropic_and_collapsed_features():
    torch.manual_seed(0)
    assert effective_rank(torch.randn(512, 8)) > 7.5
    assert effective_rank(torch.ones(64, 8)) == 1.0
    assert effective_rank(torch.randn(64, 1) * torch.ones(1, 8)) < 1.1


def test_collapse_monitor_warns_only_on_collapse():
    torch.manual_seed(0)
    monitor = CollapseMonitor()
    healthy = collapse_stats(torch.randn(32, 10, 16), torch.randn(64, 5, 16))
    assert monitor.check(healthy) is None
    assert (
        CollapseMonitor().check(
            collapse_stats(torch.randn(32, 10, 16), 0.01 * torch.randn(64, 5, 16))
        )
        is None
    )
    collapsed = collapse_stats(torch.ones(32, 10, 16), torch.ones(64, 5, 16))
    message = monitor.check(collapsed)
    assert message and "collapse" in message and "EMA" in message
    assert math.isfinite(healthy["effective_rank"])

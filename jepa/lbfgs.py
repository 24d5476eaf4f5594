"""Full-batch L-BFGS with a strong-Wolfe line search, for the linear probe's objective.

`minimize(function, x)` minimises a smooth function of one flat tensor, given as
`function(x) -> (value, gradient)`. The method is the textbook one (Nocedal & Wright,
Numerical Optimization, algorithms 7.4, 3.5 and 3.6): the two-loop recursion over the last
`history_size` curvature pairs, the initial Hessian scaled by `s.y / y.y`, and a line
search that brackets a step satisfying the strong Wolfe conditions, then narrows the
bracket by safeguarded cubic interpolation.

Why not `torch.optim.LBFGS`: constructing any `torch.optim` optimizer imports
`torch._dynamo` (about 2 s on a 2-core machine), which the probe and baseline stages, the
only users here, would otherwise pay in every process for nothing. The closure-free,
flat-vector interface also fits an objective whose gradient is computed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# (value, gradient) of the objective at a flat point.
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

SUFFICIENT_DECREASE = 1e-4  # c1 of the Wolfe conditions
CURVATURE = 0.9  # c2: the usual choice for quasi-Newton directions
MAX_LINE_SEARCH_EVALUATIONS = 25


@dataclass
class Result:
    """The point reached, its value and gradient, and the work it took."""

    x: torch.Tensor
    value: float
    gradient: torch.Tensor
    iterations: int
    evaluations: int


@dataclass
class _Probe:
    """One evaluation along the search direction: step, value, gradient, slope."""

    step: float
    value: float
    gradient: torch.Tensor
    slope: float


def minimize(
    function: Objective,
    x: torch.Tensor,
    *,
    max_iter: int = 500,
    tolerance_grad: float = 1e-5,
    tolerance_change: float = 1e-10,
    history_size: int = 20,
) -> Result:
    """Minimise `function` from the flat point `x` `(P,)` (not modified).

    Stops when the largest gradient entry is at most `tolerance_grad` (checked first, so a
    start that already satisfies it makes 0 iterations), when a step or the change of the
    value falls below `tolerance_change`, when the line search finds no acceptable step,
    or after `max_iter` iterations.
    """
    if x.dim() != 1:
        raise ValueError(f"minimize works on a flat tensor; got shape {tuple(x.shape)}")
    x = x.clone()
    value, gradient = _evaluate(function, x)
    evaluations, iterations = 1, 0
    # Curvature pairs, oldest first: (s_i = x_{i+1} - x_i, y_i = g_{i+1} - g_i, 1 / y_i.s_i).
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    while gradient.abs().max().item() > tolerance_grad and iterations < max_iter:
        direction = _two_loop(gradient, pairs)
        slope = float(gradient @ direction)
        if slope > -tolerance_change:  # not a descent direction: forget the history
            pairs.clear()
            direction, slope = -gradient, -float(gradient @ gradient)
        # The first step is scaled to the gradient's size; later ones trust the curvature.
        first = min(1.0, 1.0 / gradient.abs().sum().item()) if iterations == 0 else 1.0
        found, used = _strong_wolfe(function, x, direction, value, slope, first)
        evaluations += used
        iterations += 1
        if found is None:
            break
        step = direction * found.step
        x += step
        change = found.gradient - gradient
        product = float(change @ step)
        if product > 1e-10:
            pairs.append((step, change, 1.0 / product))
            del pairs[:-history_size]
        value_change = abs(found.value - value)
        value, gradient = found.value, found.gradient
        if step.abs().max().item() <= tolerance_change or value_change < tolerance_change:
            break
    return Result(x, value, gradient, iterations, evaluations)


def _evaluate(function: Objective, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    value, gradient = function(x)
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"the objective is {value} at the current point")
    return value, gradient


def _two_loop(
    gradient: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor, float]]
) -> torch.Tensor:
    """`-H g`: the inverse-Hessian approximation of the stored pairs applied to `gradient`."""
    q = -gradient
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q.add_(y, alpha=-alpha)
        alphas.append(alpha)
    if pairs:
        _, y, rho = pairs[-1]
        q.mul_(1.0 / (rho * float(y @ y)))  # the initial Hessian: (s.y / y.y) I
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = rho * float(y @ q)
        q.add_(s, alpha=alpha - beta)
    return q


def _strong_wolfe(
    function: Objective,
    x: torch.Tensor,
    direction: torch.Tensor,
    value: float,
    slope: float,
    step: float,
) -> tuple[_Probe | None, int]:
    """A step along `direction` meeting the strong Wolfe conditions, and the evaluations it
    took; `None` for the step when none was found within the evaluation budget."""
    origin = _Probe(0.0, value, direction.new_zeros(()), slope)
    previous = origin
    for used in range(1, MAX_LINE_SEARCH_EVALUATIONS + 1):
        current = _probe(function, x, direction, step)
        if current.value > value + SUFFICIENT_DECREASE * step * slope or (
            used > 1 and current.value >= previous.value
        ):
            return _zoom(function, x, direction, origin, previous, current, used)
        if abs(current.slope) <= -CURVATURE * slope:
            return current, used
        if current.slope >= 0:
            return _zoom(function, x, direction, origin, current, previous, used)
        # Still descending: extrapolate, at least a little and at most tenfold.
        low, high = step + 0.01 * (step - previous.step), 10.0 * step
        previous, step = current, _cubic_minimum(previous, current, low, high)
    return None, MAX_LINE_SEARCH_EVALUATIONS


def _zoom(
    function: Objective,
    x: torch.Tensor,
    direction: torch.Tensor,
    origin: _Probe,
    low: _Probe,
    high: _Probe,
    used: int,
) -> tuple[_Probe | None, int]:
    """Narrow the bracket between `low` (the lower value so far) and `high` to a strong
    Wolfe step."""
    while used < MAX_LINE_SEARCH_EVALUATIONS:
        left, right = sorted((low.step, high.step))
        width = right - left
        if width <= 1e-12 * max(1.0, right):
            break
        step = _cubic_minimum(low, high, left, right)
        # Safeguard: a point too near an end of the bracket makes little progress.
        if min(step - left, right - step) < 0.1 * width:
            step = 0.5 * (left + right)
        current = _probe(function, x, direction, step)
        used += 1
        if (
            current.value > origin.value + SUFFICIENT_DECREASE * step * origin.slope
            or current.value >= low.value
        ):
            high = current
            continue
        if abs(current.slope) <= -CURVATURE * origin.slope:
            return current, used
        if current.slope * (high.step - low.step) >= 0:
            high = low
        low = current
    # Out of budget or bracket: the best point seen, if it decreased the value at all.
    return (low if low.step > 0 and low.value < origin.value else None), used


def _probe(function: Objective, x: torch.Tensor, direction: torch.Tensor, step: float) -> _Probe:
    value, gradient = _evaluate(function, x + step * direction)
    return _Probe(step, value, gradient, float(gradient @ direction))


def _cubic_minimum(a: _Probe, b: _Probe, low: float, high: float) -> float:
    """Minimiser, clamped to `[low, high]`, of the cubic through two points with their
    values and slopes; the middle of the interval when the cubic has no minimum."""
    if a.step == b.step:
        return 0.5 * (low + high)
    d1 = a.slope + b.slope - 3.0 * (a.value - b.value) / (a.step - b.step)
    radicand = d1 * d1 - a.slope * b.slope
    if radicand < 0:
        return 0.5 * (low + high)
    d2 = math.copysign(math.sqrt(radicand), b.step - a.step)
    denominator = b.slope - a.slope + 2.0 * d2
    if denominator == 0:
        return 0.5 * (low + high)
    step = b.step - (b.step - a.step) * (b.slope + d2 - d1) / denominator
    return min(max(step, low), high)

"""jepa.lbfgs: the probe's L-BFGS, on problems whose minimum is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fresh_process import modules_after

from jepa import lbfgs


def quadratic(matrix: torch.Tensor, vector: torch.Tensor):
    """`0.5 x.A.x - b.x` and its gradient; minimum at `A^-1 b`."""

    def function(x: torch.Tensor):
        ax = matrix @ x
        return 0.5 * (x @ ax) - vector @ x, ax - vector

    return function


def rosenbrock(x: torch.Tensor):
    a, b = x[0], x[1]
    value = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    gradient = torch.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
    return value, gradient


def test_ill_conditioned_quadratic_reaches_its_minimum() -> None:
    # Condition number 100; with the curvature pairs L-BFGS needs a few dozen iterations
    # (steepest descent would need thousands).
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=generator))
    matrix = basis @ torch.diag(torch.logspace(0, 2, 30, dtype=torch.float64)) @ basis.T
    vector = torch.randn(30, dtype=torch.float64, generator=generator)
    start = torch.zeros(30, dtype=torch.float64)
    result = lbfgs.minimize(
        quadratic(matrix, vector), start, tolerance_grad=1e-6, tolerance_change=0.0
    )
    assert result.gradient.abs().max() <= 1e-6
    assert torch.allclose(result.x, torch.linalg.solve(matrix, vector), atol=1e-6)
    assert result.iterations < 100 and result.evaluations < 2 * result.iterations + 5
    assert torch.equal(start, torch.zeros(30, dtype=torch.float64))  # the start is not modified


def test_rosenbrock_from_the_classic_start() -> None:
    result = lbfgs.minimize(
        rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64), tolerance_grad=1e-8
    )
    assert torch.allclose(result.x, torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert result.value < 1e-12


def test_a_start_that_meets_the_tolerance_makes_no_iteration() -> None:
    calls = []

    def function(x):
        calls.append(x.clone())
        return (x * x).sum(), 2 * x

    result = lbfgs.minimize(function, torch.full((4,), 1e-7), tolerance_grad=1e-5)
    assert (result.iterations, result.evaluations, len(calls)) == (0, 1, 1)


def test_max_iter_caps_the_iterations() -> None:
    result = lbfgs.minimize(rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64), max_iter=3)
    assert result.iterations == 3 and result.value > 1e-3


def test_line_search_returns_a_strong_wolfe_step() -> None:
    # A 1-D slice with a minimum near 3.4: the first trial (x = 0.1) is short, so the search
    # extrapolates, brackets and zooms.
    def function(x):
        return (x - 3.0).pow(4).sum() + x.sum(), 4 * (x - 3.0).pow(3) + 1

    x = torch.zeros(1, dtype=torch.float64)
    value, gradient = function(x)
    direction = -gradient
    slope = float(gradient @ direction)
    found, used = lbfgs._strong_wolfe(function, x, direction, float(value), slope, 0.1 / 107)
    assert found is not None and used >= 2
    assert found.value <= float(value) + lbfgs.SUFFICIENT_DECREASE * found.step * slope
    assert abs(found.slope) <= -lbfgs.CURVATURE * slope


def test_agrees_with_torch_lbfgs_on_logistic_regression() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    labels = (x @ torch.randn(8, 3, generator=generator, dtype=torch.float64)).argmax(1)

    def loss(flat):
        weight, bias = flat[:24].view(3, 8), flat[24:]
        return F.cross_entropy(x @ weight.T + bias, labels) + 1e-2 * weight.square().sum()

    def function(flat):
        flat = flat.detach().requires_grad_(True)
        value = loss(flat)
        (gradient,) = torch.autograd.grad(value, flat)
        return value.detach(), gradient

    start = torch.zeros(27, dtype=torch.float64)
    ours = lbfgs.minimize(function, start, tolerance_grad=1e-8, tolerance_change=0.0)
    reference = torch.zeros(27, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [reference],
        max_iter=500,
        tolerance_grad=1e-8,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        value = loss(reference)
        value.backward()
        return value

    optimizer.step(closure)
    assert ours.gradient.abs().max() <= 1e-8
    assert torch.allclose(ours.x, reference.detach(), atol=1e-6)


def test_a_non_finite_objective_is_an_error() -> None:
    def function(x):
        return torch.tensor(math.nan), x

    with pytest.raises(FloatingPointError, match="nan"):
        lbfgs.minimize(function, torch.ones(3))


def test_rejects_a_point_that_is_not_flat() -> None:
    with pytest.raises(ValueError, match="flat tensor"):
        lbfgs.minimize(rosenbrock, torch.zeros(2, 1))


def test_the_probe_never_imports_dynamo_or_sklearn() -> None:
    # Both take seconds to import; the lbfgs backend needs neither (jepa.lbfgs docstring).
    code = (
        "import numpy as np\n"
        "from jepa.probe import linear_probe, knn_accuracy\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(300, 5)).astype(np.float32); y = (x[:, 0] > 0).astype(int)\n"
        "linear_probe(x, y, x, y); knn_accuracy(x, y, x, y)\n"
    )
    assert modules_after(code, ["torch._dynamo", "sklearn"]) == []

"""Linear probe (every backend), its selection protocol, k-NN and the pixel baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from jepa import probe
from jepa.probe import (
    classification_metrics,
    knn_accuracy,
    linear_probe,
    stratified_holdout,
)

NUM_CLASSES, DIM = 10, 24
# Small grids and few epochs keep the suite fast; the protocol is the same.
FAST = {
    "lbfgs": dict(c_grid=(1e-3, 1e-1, 10.0)),
    "sklearn": dict(c_grid=(1e-3, 1e-1, 10.0)),
    "torch": dict(lr_grid=(1e-2, 1e-1), wd_grid=(0.0, 1e-2), epochs=8, batch_size=128),
}


def clusters(n_per_class: int, seed: int, spread: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """`NUM_CLASSES` Gaussian clusters, unit noise, centres `spread` apart on average."""
    centres = np.random.default_rng(0).normal(size=(NUM_CLASSES, DIM)) * spread
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    features = centres[labels] + rng.normal(size=(len(labels), DIM))
    return features.astype(np.float32), labels


@pytest.fixture(autouse=True)
def single_thread():
    # Thousands of tiny ops: on a busy 2-core CI box, thread hand-offs dominate (10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_x, train_y = clusters(60, seed=1)
    test_x, test_y = clusters(30, seed=2)
    return train_x, train_y, test_x, test_y


def memmapped(tmp_path: Path, name: str, array: np.ndarray) -> np.ndarray:
    np.save(tmp_path / f"{name}.npy", array)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


@pytest.mark.parametrize("backend", ["lbfgs", "sklearn", "torch"])
def test_probe_separable_clusters(backend: str, data, tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = data
    # Memory-mapped inputs, as the pipeline passes them.
    metrics = linear_probe(
        memmapped(tmp_path, "train", train_x),
        train_y,
        memmapped(tmp_path, "test", test_x),
        test_y,
        backend=backend,
        **FAST[backend],
    )
    assert metrics["top1"] >= 0.98
    assert metrics["top5"] >= metrics["top1"]
    assert len(metrics["per_class_accuracy"]) == NUM_CLASSES
    assert metrics["val_top1"] >= 0.95
    assert metrics["n_train"] == 600 and metrics["n_val"] == 60 and metrics["n_test"] == 300
    assert metrics["feature_dim"] == DIM and metrics["backend"] == backend
    assert "TRAINING split" in metrics["protocol"]
    assert metrics["hyperparameters"] in [
        {k: v for k, v in s.items() if k != "val_top1"} for s in metrics["selection"]
    ]


def unstructured(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels independent of each other and of every other sample."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, DIM)).astype(np.float32), rng.integers(0, NUM_CLASSES, size=n)


@pytest.mark.parametrize("backend", ["lbfgs", "sklearn", "torch"])
def test_probe_uninformative_labels_is_chance(backend: str) -> None:
    # Labels independent of the features (shuffling clustered data would leave only ten
    # clusters' worth of independent test outcomes, too few for a tight bound).
    train_x, train_y = unstructured(600, seed=1)
    test_x, test_y = unstructured(400, seed=2)
    metrics = linear_probe(train_x, train_y, test_x, test_y, backend=backend, **FAST[backend])
    assert metrics["top1"] < 0.2


class SealedArray:
    """Test features/labels that raise on any read of their values while sealed.

    Shape and length stay readable (metadata); `__array__`, indexing and iteration do not.
    """

    def __init__(self, array: np.ndarray):
        self._array = array
        self.sealed = True
        self.shape = array.shape

    def __len__(self) -> int:
        return len(self._array)

    def _open(self) -> np.ndarray:
        if self.sealed:
            raise AssertionError("the test split was read before the final evaluation")
        return self._array

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._open(), dtype=dtype)

    def __getitem__(self, index):
        return self._open()[index]

    def __iter__(self):
        return iter(self._open())


@pytest.mark.parametrize("backend", ["lbfgs", "sklearn", "torch"])
def test_selection_never_reads_test_split(
    backend: str, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_x, train_y, test_x, test_y = data
    sealed_x, sealed_y = SealedArray(test_x), SealedArray(test_y)
    events = []
    select, evaluate = probe.select_hyperparameters, probe.evaluate_on_test

    def spy_select(*args, **kwargs):
        flat = [a for arg in args for a in (arg if isinstance(arg, tuple) else (arg,))]
        assert all(a is not sealed_x and a is not sealed_y for a in flat)
        for part in args[2:4]:  # (Rows, targets) of the fit and validation parts
            assert part[0].array is train_x or np.shares_memory(part[0].array, train_x)
        events.append("select")
        return select(*args, **kwargs)

    def unsealing_evaluate(scorer, test_x_arg, test_y_arg, classes):
        assert test_x_arg is sealed_x and test_y_arg is sealed_y
        sealed_x.sealed = sealed_y.sealed = False
        events.append("evaluate")
        return evaluate(scorer, test_x_arg, test_y_arg, classes)

    monkeypatch.setattr(probe, "select_hyperparameters", spy_select)
    monkeypatch.setattr(probe, "evaluate_on_test", unsealing_evaluate)
    metrics = linear_probe(train_x, train_y, sealed_x, sealed_y, backend=backend, **FAST[backend])
    assert events == ["select", "evaluate"]
    assert metrics["top1"] >= 0.98


@pytest.mark.parametrize("backend", ["lbfgs", "sklearn", "torch"])
def test_selection_does_not_depend_on_test_data(backend: str, data) -> None:
    train_x, train_y, test_x, test_y = data
    noise = np.random.default_rng(5)
    first = linear_probe(train_x, train_y, test_x, test_y, backend=backend, **FAST[backend])
    second = linear_probe(
        train_x,
        train_y,
        noise.normal(size=test_x.shape).astype(np.float32),
        noise.integers(0, NUM_CLASSES, size=len(test_y)),
        backend=backend,
        **FAST[backend],
    )
    for key in ("hyperparameters", "val_top1", "selection"):
        assert first[key] == second[key]
    assert second["top1"] < 0.3


def overlapping(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters that overlap (about 86% linearly separable), each dimension on its own scale
    (0.2 to 5), so standardisation and the choice of C both matter."""
    centres = np.random.default_rng(0).normal(size=(NUM_CLASSES, DIM)) * 0.65
    scales = np.random.default_rng(3).uniform(0.2, 5.0, DIM)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    features = (centres[labels] + rng.normal(size=(len(labels), DIM))) * scales
    return features.astype(np.float32), labels


def test_lbfgs_agrees_with_sklearn_on_overlapping_classes() -> None:
    train_x, train_y = overlapping(300, seed=1)
    test_x, test_y = overlapping(300, seed=2)
    ours = linear_probe(train_x, train_y, test_x, test_y, backend="lbfgs")
    reference = linear_probe(train_x, train_y, test_x, test_y, backend="sklearn")
    assert 0.75 < reference["top1"] < 0.95  # real class structure, not noise, not trivial
    assert abs(ours["top1"] - reference["top1"]) <= 0.003
    assert ours["hyperparameters"] == reference["hyperparameters"]
    for mine, theirs in zip(ours["selection"], reference["selection"], strict=True):
        assert abs(mine["val_top1"] - theirs["val_top1"]) <= 0.01


def test_lbfgs_warm_start_reaches_the_cold_start_solution() -> None:
    train_x, train_y = overlapping(100, seed=1)
    rows, c = probe.Rows(train_x), {"C": 10.0}
    # Tight enough that both runs reach the optimum, not just the default's neighbourhood.
    # The warm start comes from the previous C of the default grid (10x apart); on these
    # 1000 rows it saves about 15 % of the iterations (55 against 64).
    warm = probe.LbfgsFitter(tolerance=1e-5)
    warm(rows, train_y, {"C": 1.0})
    warm_scores = warm(rows, train_y, c)(train_x)
    cold = probe.LbfgsFitter(tolerance=1e-5)
    cold_scores = cold(rows, train_y, c)(train_x)
    assert warm.iterations[-1] < cold.iterations[-1]
    np.testing.assert_allclose(warm_scores, cold_scores, rtol=0.01, atol=0.05)
    assert (warm_scores.argmax(1) == cold_scores.argmax(1)).mean() > 0.99


def test_lbfgs_objective_is_penalised_cross_entropy_and_its_gradient() -> None:
    train_x, train_y = overlapping(50, seed=2)  # 500 rows
    inputs, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(NUM_CLASSES, DIM, generator=generator, requires_grad=True)
    bias = torch.randn(NUM_CLASSES, generator=generator, requires_grad=True)
    penalty = 0.01
    expected = F.cross_entropy(F.linear(inputs, weight, bias), labels)
    expected = expected + penalty * weight.square().sum()
    expected.backward()
    # 48 rows per chunk: ten full chunks and a partial one.
    objective = probe.MultinomialObjective(inputs, labels, penalty, chunk_bytes=48 * DIM * 4)
    assert len(objective.chunks) == 11
    loss, grad_weight, grad_bias = objective(weight.detach(), bias.detach())
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad_weight, weight.grad)
    torch.testing.assert_close(grad_bias, bias.grad)


def against_the_optimum(
    scorer: probe.LinearScorer, train_x: np.ndarray, train_y: np.ndarray, c: float
) -> tuple[float, float, float]:
    """`(objective of scorer, objective at sklearn's tightly converged optimum, share of
    rows both predict the same class for)`, the objective being sklearn's over `C * N`."""
    standardised = StandardScaler().fit_transform(train_x)
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=100_000)
    reference.fit(standardised, train_y)

    def objective(weight: np.ndarray, bias: np.ndarray) -> float:
        logits = torch.from_numpy(standardised @ weight.T + bias)
        loss = F.cross_entropy(logits, torch.from_numpy(train_y)).item()
        return loss + np.square(weight).sum() / (2 * c * len(train_y))

    mine = objective(
        scorer.linear.weight.detach().double().numpy(), scorer.linear.bias.detach().double().numpy()
    )
    agree = (scorer(train_x).argmax(1) == reference.predict(standardised)).mean()
    return mine, objective(reference.coef_, reference.intercept_), agree


def test_lbfgs_converges_on_correlated_features_after_a_warm_start() -> None:
    # Three noisy copies of the same features, as when the probe concatenates the pooled
    # outputs of consecutive blocks: the data term's curvature is badly conditioned.
    base_x, train_y = overlapping(100, seed=1)
    rng = np.random.default_rng(4)
    train_x = np.concatenate(
        [base_x + 0.05 * rng.normal(size=base_x.shape).astype(np.float32) for _ in range(3)], 1
    )
    rows = probe.Rows(train_x)
    fitter = probe.LbfgsFitter()  # the default tolerance
    fitter(rows, train_y, {"C": 1.0})  # the previous C of the default grid
    scorer = fitter(rows, train_y, {"C": 10.0})
    mine, best, agree = against_the_optimum(scorer, train_x, train_y, 10.0)
    assert mine <= 1.05 * best  # near the minimum (without whitening: far above it)
    assert agree >= 0.98


def test_lbfgs_weakly_regularised_fits_reach_the_optimum_after_warm_starts() -> None:
    # Along a grid of weakening regularisation each fit starts from the previous one's
    # solution, where the gradient is small in absolute terms although the optimum has
    # moved: at the earlier tolerance (1e-3) the fits from C = 1 on stopped at once.
    train_x, train_y = overlapping(100, seed=1)
    rows = probe.Rows(train_x)
    fitter = probe.LbfgsFitter()  # the default tolerance
    for c in (0.1, 1.0, 10.0, 100.0):
        scorer = fitter(rows, train_y, {"C": c})
    assert min(fitter.iterations[1:]) > 0
    mine, best, agree = against_the_optimum(scorer, train_x, train_y, 100.0)
    assert mine <= best + 1e-3 * abs(best)
    assert agree >= 0.99


def test_lbfgs_refit_starts_from_the_same_c_solution() -> None:
    train_x, train_y = overlapping(100, seed=1)
    rows = probe.Rows(train_x)
    fitter = probe.LbfgsFitter(tolerance=1e-4)
    for c in (0.001, 1.0):  # the grid, ending far from the C that will be chosen
        fitter(rows, train_y, {"C": c})
    fitter(rows, train_y, {"C": 0.001})  # the refit of the chosen C, on the same rows here
    assert fitter.iterations[1] > 5  # moving between the two Cs takes real work ...
    assert fitter.iterations[2] <= 1  # ... coming back to a C already solved does not


def test_stratified_holdout() -> None:
    targets = np.array([0] * 20 + [1] * 10 + [2] * 1)
    fit, val = stratified_holdout(targets, 0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(targets)))
    assert np.bincount(targets[val], minlength=3).tolist() == [2, 1, 0]  # singleton stays in fit
    again_fit, again_val = stratified_holdout(targets, 0.1, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(fit, again_fit)
    assert not np.array_equal(val, stratified_holdout(targets, 0.1, seed=1)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_holdout(targets, 1.5, seed=0)


def test_classification_metrics() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    metrics = classification_metrics(scores, np.array([0, 1, 1]), num_classes=3)
    assert metrics["top1"] == pytest.approx(2 / 3)
    assert "top5" not in metrics
    assert metrics["per_class_accuracy"] == [1.0, 0.5, None]
    ranked = np.tile(np.arange(7.0)[::-1], (3, 1))  # class 0 first, class 6 last
    metrics = classification_metrics(ranked, np.array([0, 4, 5]), num_classes=7)
    assert metrics["top1"] == pytest.approx(1 / 3)
    assert metrics["top5"] == pytest.approx(2 / 3)  # class 4 is 5th, class 5 is 6th


def test_probe_rejects_mismatched_dims(data) -> None:
    train_x, train_y, test_x, test_y = data
    with pytest.raises(ValueError, match="feature dims"):
        linear_probe(train_x, train_y, test_x[:, :5], test_y)
    with pytest.raises(ValueError, match="backend"):
        linear_probe(train_x, train_y, test_x, test_y, backend="svm")


def brute_force_knn(train_x, train_y, test_x, k, temperature):
    normalise = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = normalise(test_x) @ normalise(train_x).T
    nearest = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((len(test_x), train_y.max() + 1))
    for row, idx in enumerate(nearest):
        np.add.at(votes[row], train_y[idx], np.exp(sims[row, idx] / temperature))
    return votes.argmax(1)


def test_knn_separable_and_matches_brute_force(data) -> None:
    train_x, train_y, test_x, test_y = data
    metrics = knn_accuracy(train_x, train_y, test_x, test_y, k=20, batch_size=64)
    assert metrics["knn_top1"] >= 0.98 and metrics["k"] == 20

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 4, size=300)
    q, qy = rng.normal(size=(70, 8)).astype(np.float32), rng.integers(0, 4, size=70)
    expected = np.mean(brute_force_knn(x, y, q, 7, 0.07) == qy)
    # Chunks smaller than k and not dividing N exercise the running top-k merge.
    assert knn_accuracy(x, y, q, qy, k=7, batch_size=5)["knn_top1"] == pytest.approx(expected)
    assert knn_accuracy(x, y, q, qy, k=7, batch_size=1024)["knn_top1"] == pytest.approx(expected)


def test_knn_uninformative_labels_is_chance() -> None:
    train_x, train_y = unstructured(600, seed=1)
    test_x, test_y = unstructured(400, seed=2)
    assert knn_accuracy(train_x, train_y, test_x, test_y)["knn_top1"] < 0.2

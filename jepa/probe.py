"""Linear-probe and k-NN evaluation of frozen features.

Linear-probe protocol (`linear_probe`, both backends)
-----------------------------------------------------
1. Split the TRAINING features into a fit part and a held-out validation part: a
   stratified `val_fraction` (default 10%) of every class, drawn with `seed`. A class with
   a single example stays in the fit part.
2. For every hyperparameter setting of the grid, standardise with the mean/std of the fit
   part, train on the fit part, and score top-1 accuracy on the validation part. Choose the
   best setting; ties go to the earliest grid entry.
3. Refit on the whole training split (standardised with its own mean/std) with the chosen
   setting.
4. Evaluate once on the test split. The test split is read only here: the selection code
   (`select_hyperparameters`) never receives it, so it cannot influence any choice.

Backends:
- ``lbfgs`` (the default): the same model as ``sklearn``, fitted in torch: multinomial
  logistic regression on standardised features, L2 penalty on the weights (not the bias)
  with sklearn's C convention, full-batch L-BFGS with a strong-Wolfe line search, run in
  whitened coordinates (`Whitening`: the same objective, better conditioned). The grid
  is C; every setting after the first starts from the previous setting's solution (the
  grid runs from strong to weak regularisation, where solutions change smoothly), and the
  refit starts from the chosen setting's. Loads the training features into memory; runs
  on CPU or GPU. Many times faster than sklearn on the whole training split, and nearer
  the optimum: on strongly correlated features (concatenated blocks) sklearn's L-BFGS
  stops at `max_iter` before converging (tests/test_probe.py, bench/probe.py).
- ``sklearn``: multinomial `LogisticRegression` (L-BFGS, L2 penalty, `max_iter=500`) after
  a `StandardScaler`; the grid is the inverse regularisation strength C, by default 5
  values log-spaced over [1e-3, 1e1]. Loads the training features into memory.
- ``torch``: one `nn.Linear` on standardised features, cross-entropy, AdamW (no weight
  decay on the bias) with a cosine learning-rate decay over `epochs` epochs of shuffled
  mini-batches; the grid is learning rate × weight decay. Features are read `batch_size`
  rows at a time, so memory-mapped arrays are never loaded whole; runs on CPU or GPU.

Accuracies are fractions in [0, 1]. The metrics carry the protocol text under "protocol".
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn
from tqdm.auto import tqdm

from jepa import lbfgs

DEFAULT_C_GRID: tuple[float, ...] = tuple(np.logspace(-3, 1, 5).tolist())
DEFAULT_LR_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
DEFAULT_WD_GRID: tuple[float, ...] = (0.0, 1e-3, 1e-1)
BACKENDS = ("lbfgs", "sklearn", "torch")
SKLEARN_MAX_ITER = 500  # L-BFGS iterations per sklearn fit
LBFGS_MAX_ITER = 500  # L-BFGS iterations per torch fit (a warm start needs far fewer)
# Largest gradient entry of the mean objective, in the whitened coordinates, at convergence.
# Against the same objective minimised to 1e-6, 1e-4 was within 0.11 validation points at
# every C of the grid on the default's pretrained features (60k x 384), within 0.05 at the
# chosen C on raw pixels (784; 0.35 low at C = 10), and within 0.04 test points at the chosen
# C on both; 1e-3 read both 0.2 low, and its warm-started pixel fits at C >= 1 stopped after
# 0 iterations (docs/experiments.md, The probe at weak regularisation).
LBFGS_TOLERANCE = 1e-4
LBFGS_HISTORY = 20  # curvature pairs kept
# Below this many feature values (rows x dims) a fit runs on one CPU thread: small products
# are latency-bound, and on busy cores thread hand-offs made them ~10x slower.
LBFGS_ONE_THREAD_BELOW = 1 << 22
CHUNK_ROWS = 4096  # rows per read when scoring or computing statistics
# Bytes of features per chunk of the L-BFGS objective: small enough to stay in cache between
# the chunk's logits and its gradient, so each evaluation reads the features from memory once.
OBJECTIVE_CHUNK_BYTES = 4 << 20
# Eigenvalues of the standardised features' covariance below this fraction of the largest
# are raised to it when whitening (directions the features barely span).
WHITENING_FLOOR = 1e-8

# A fitted probe: features `(B, D)` → class scores `(B, C)`.
Scorer = Callable[[np.ndarray], np.ndarray]


# ---- row access ---------------------------------------------------------------------------------


class Rows:
    """Some rows of a 2-D feature array (possibly memory-mapped), read on demand.

    `rows=None` means all rows. Reads come back as float32 copies; callers pass sorted
    positions so a memory map is read front to back.
    """

    def __init__(self, array: Any, rows: np.ndarray | None = None):
        self.array = array
        self.rows = rows

    def __len__(self) -> int:
        return len(self.array) if self.rows is None else len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Rows at sorted `positions` of this view → `(len(positions), D)` float32."""
        index = positions if self.rows is None else self.rows[positions]
        return np.asarray(self.array[index], dtype=np.float32)

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """Consecutive `(<= size, D)` float32 blocks covering the view in order."""
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            if self.rows is None:  # a copy: memory-mapped slices are read-only views
                yield np.array(self.array[start:stop], dtype=np.float32)
            else:
                yield self.take(np.arange(start, stop))

    def materialise(self) -> np.ndarray:
        """The whole view in memory, `(len(self), D)` float32."""
        return (
            np.concatenate(list(self.chunks()))
            if len(self)
            else np.zeros((0, self.dim), np.float32)
        )


def stratified_holdout(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions `0..N-1` into sorted `(fit, val)` index arrays, `val_fraction` of each
    class held out (rounded; at least one example of every class stays in the fit part)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    order = np.argsort(targets, kind="stable")
    _, starts, counts = np.unique(targets[order], return_index=True, return_counts=True)
    val = []
    for start, count in zip(starts, counts, strict=True):
        members = rng.permutation(order[start : start + count])
        val.append(members[: min(round(val_fraction * count), count - 1)])
    val_idx = np.sort(np.concatenate(val))
    if len(val_idx) == 0:
        raise ValueError(
            f"val_fraction={val_fraction} of {len(targets)} training examples holds out none; "
            "use more training examples or a larger val_fraction"
        )
    fit_mask = np.ones(len(targets), dtype=bool)
    fit_mask[val_idx] = False
    return np.flatnonzero(fit_mask), val_idx


# ---- metrics ------------------------------------------------------------------------------------


def predict_scores(scorer: Scorer, features: Rows) -> np.ndarray:
    """Class scores `(N, C)` of every row, computed `CHUNK_ROWS` rows at a time."""
    return np.concatenate([scorer(chunk) for chunk in features.chunks()])


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows whose highest score is the target class position."""
    return float(np.mean(scores.argmax(1) == targets))


def classification_metrics(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> dict:
    """top1, top5 (when `num_classes > 5`) and per-class accuracy (None for a class absent
    from `targets`). `scores (N, C)`; `targets (N,)` class positions, -1 for unknown labels."""
    metrics: dict[str, Any] = {"top1": top1_accuracy(scores, targets)}
    if num_classes > 5:
        top5 = np.argpartition(-scores, 4, axis=1)[:, :5]
        metrics["top5"] = float(np.mean((top5 == targets[:, None]).any(1)))
    hits = scores.argmax(1) == targets
    metrics["per_class_accuracy"] = [
        float(hits[targets == c].mean()) if np.any(targets == c) else None
        for c in range(num_classes)
    ]
    return metrics


def _positions(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels → positions in sorted `classes`; -1 for labels not among them."""
    pos = np.searchsorted(classes, labels).clip(0, len(classes) - 1)
    return np.where(classes[pos] == labels, pos, -1)


# ---- sklearn backend ---------------------------------------------------------------------------


def fit_sklearn(features: Rows, targets: np.ndarray, params: dict, *, seed: int = 0) -> Scorer:
    """StandardScaler + multinomial L-BFGS logistic regression with `params["C"]`."""
    # Imported here, like every sklearn import of this module: sklearn takes 1.3 s to
    # import, and the pretraining (through the kNN monitor) and the lbfgs backend never use it.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=params["C"], max_iter=SKLEARN_MAX_ITER, random_state=seed),
    )
    # One BLAS thread: L-BFGS on probe-sized problems is latency-bound, and letting
    # OpenBLAS spread each small product over busy cores made fits ~10x slower here.
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipeline.fit(features.materialise(), targets)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        # One line instead of sklearn's multi-line advice; the fit is still usable.
        warnings.warn(
            f"L-BFGS stopped at max_iter={SKLEARN_MAX_ITER} before converging (C={params['C']:g})",
            ConvergenceWarning,
            stacklevel=2,
        )
    if len(pipeline.classes_) != targets.max() + 1:
        raise ValueError("every class must appear in the fit part; see stratified_holdout")
    return pipeline.decision_function


# ---- torch backend ------------------------------------------------------------------------------


def feature_moments(features: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std `(D,)` (float64 sums over chunks; std floored at 1e-6)."""
    total = np.zeros(features.dim)
    squares = np.zeros(features.dim)
    for chunk in features.chunks():
        total += chunk.sum(0, dtype=np.float64)
        squares += np.square(chunk, dtype=np.float64).sum(0)
    mean = total / len(features)
    std = np.sqrt(np.maximum(squares / len(features) - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


class LinearScorer:
    """`nn.Linear` on standardised features: `(B, D)` numpy → logits `(B, C)` numpy."""

    def __init__(self, linear: nn.Linear, mean: np.ndarray, std: np.ndarray):
        self.linear = linear
        device = linear.weight.device
        self.mean = torch.from_numpy(mean).to(device)
        self.std = torch.from_numpy(std).to(device)

    def standardise(self, x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).to(self.mean.device) - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.linear(self.standardise(x)).float().cpu().numpy()


def fit_torch(
    features: Rows,
    targets: np.ndarray,
    params: dict,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Scorer:
    """Train a zero-initialised linear layer with AdamW (`params["lr"]`,
    `params["weight_decay"]`) and a per-step cosine decay; same batch order for every setting."""
    scorer = LinearScorer(
        nn.Linear(features.dim, int(targets.max()) + 1).to(device), *feature_moments(features)
    )
    nn.init.zeros_(scorer.linear.weight)
    nn.init.zeros_(scorer.linear.bias)
    optimizer = torch.optim.AdamW(
        [
            {"params": [scorer.linear.weight], "weight_decay": params["weight_decay"]},
            {"params": [scorer.linear.bias], "weight_decay": 0.0},
        ],
        lr=params["lr"],
    )
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    labels = torch.from_numpy(targets).to(device)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).numpy()
        for start in range(0, len(features), batch_size):
            batch = np.sort(order[start : start + batch_size])
            lr = 0.5 * params["lr"] * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = scorer.linear(scorer.standardise(features.take(batch)))
            loss = F.cross_entropy(logits, labels[torch.from_numpy(batch).to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return scorer


class MultinomialObjective:
    """Mean cross-entropy of `inputs @ weight.T + bias` plus `penalty * ||weight||^2`, with
    its gradient computed by hand rather than by autograd. With `column_weights` `(D,)` the
    penalty is `penalty * sum_kj weight[k, j]^2 * column_weights[j]` (see `Whitening`).

    The rows are visited in chunks of about `chunk_bytes`: a chunk's logits, softmax and
    gradient contribution are computed while it is still in cache, so one evaluation reads
    the features from memory once (autograd reads them twice: the forward product, then the
    weight gradient's). The same function and gradient as
    `F.cross_entropy(F.linear(inputs, weight, bias), labels) + penalty * weight.square().sum()`
    up to the order of rounding.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        penalty: float,
        *,
        column_weights: torch.Tensor | None = None,
        chunk_bytes: int = OBJECTIVE_CHUNK_BYTES,
    ) -> None:
        rows = max(1, chunk_bytes // max(1, inputs.shape[1] * inputs.element_size()))
        self.chunks = [
            (inputs[start : start + rows], labels[start : start + rows, None])
            for start in range(0, len(labels), rows)
        ]
        self.count, self.penalty = len(labels), penalty
        self.column_weights = column_weights
        self.minus_one = inputs.new_full((rows, 1), -1.0)

    def __call__(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`(loss, weight gradient, bias gradient)` at `weight` `(K, D)`, `bias` `(K,)`."""
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias)
        total = weight.new_zeros((), dtype=torch.float64)
        for x, y in self.chunks:
            log_p = torch.log_softmax(torch.addmm(bias, x, weight.t()), dim=1)
            total -= log_p.gather(1, y).sum()
            residual = log_p.exp_().scatter_add_(1, y, self.minus_one[: len(y)])  # p - onehot
            grad_weight.addmm_(residual.t(), x)
            grad_bias += residual.sum(0)
        weighted = weight if self.column_weights is None else weight * self.column_weights
        grad_weight.div_(self.count).add_(weighted, alpha=2.0 * self.penalty)
        grad_bias.div_(self.count)
        loss = total.to(weight.dtype) / self.count + self.penalty * (weight * weighted).sum()
        return loss, grad_weight, grad_bias

    def flat(self, point: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(loss, gradient)` at `point` `(K * D + K,)`: the weight's rows, then the bias."""
        weight = point[:-classes].view(classes, -1)
        loss, grad_weight, grad_bias = self(weight, point[-classes:])
        return loss, torch.cat([grad_weight.flatten(), grad_bias])


class Whitening:
    """An exact change of coordinates that makes L-BFGS converge on correlated features.

    Standardised features `x` `(N, D)` with covariance `Q diag(lam) Q^T` are fitted as
    `z = x @ T`, `T = Q diag(s)`, `s = (lam + ridge)^(-1/2)` (lam floored): the logits
    `x @ w.T` equal `z @ v.T` for `w = v @ T.T`, and the L2 penalty `||w||^2` equals
    `sum_kj v_kj^2 s_j^2`. So the objective is the same function of the same model; only
    the optimizer's coordinates change. With `ridge` about the penalty's curvature over the
    softmax's (`2 * penalty * classes`), data term plus penalty have about the same
    curvature in every direction, for weak and strong regularisation alike. Without it, the
    concatenated blocks' features (strongly correlated) let the gradient test stop L-BFGS
    far from the optimum: on the default's features, the fits at C = 1 and 10 stopped after
    0 iterations, warm-started from C = 0.1, and the probe read 2.9 points low.
    """

    def __init__(self, spectrum: tuple[torch.Tensor, torch.Tensor], ridge: float = 0.0) -> None:
        """`spectrum`: `Whitening.spectrum(x)`, the same for every C on the same rows."""
        eigenvalues, basis = spectrum
        floor = eigenvalues.max().clamp_min(1e-12) * WHITENING_FLOOR
        self.scale = (eigenvalues.clamp_min(floor) + ridge).rsqrt().to(basis.dtype)  # s
        self.transform = (basis * self.scale).contiguous()  # T
        self.inverse = (basis / self.scale).contiguous()  # (T^-1)^T

    @staticmethod
    def spectrum(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues `(D,)` (float64) and eigenvectors `(D, D)` of `inputs`' covariance."""
        covariance = (inputs.t() @ inputs).double() / len(inputs)
        eigenvalues, basis = torch.linalg.eigh(covariance)
        return eigenvalues, basis.to(inputs.dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.transform

    def to_whitened(self, weight: torch.Tensor) -> torch.Tensor:
        return weight @ self.inverse

    def from_whitened(self, weight: torch.Tensor) -> torch.Tensor:
        return weight @ self.transform.t()


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on `count` intra-op threads (None: leave torch's setting alone)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LbfgsFitter:
    """`fit(rows, targets, {"C": c}) -> LinearScorer`: L2-regularised multinomial logistic
    regression on standardised rows, minimised full-batch by L-BFGS.

    The objective is sklearn's divided by `C * N`: mean cross-entropy plus
    `||W||^2 / (2 C N)` (the bias is not penalised), so one C means the same in both
    backends. With `warm_start`, a fit starts from an earlier solution of the same shape:
    the last one found for the same C if there is one (the refit after selection starts
    from the chosen C's grid solution), else the previous fit's (the next C along the grid).
    """

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        max_iter: int = LBFGS_MAX_ITER,
        tolerance: float = LBFGS_TOLERANCE,
        warm_start: bool = True,
        minimizer: Callable[..., lbfgs.Result] = lbfgs.minimize,
    ) -> None:
        """`minimizer`: `jepa.lbfgs.minimize` or a function with its signature (the
        benches time others against it)."""
        self.device = torch.device(device)
        self.max_iter, self.tolerance, self.warm_start = max_iter, tolerance, warm_start
        self.minimizer = minimizer
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}  # by C
        self.iterations: list[int] = []  # L-BFGS iterations of each fit, in order
        # The rows last fitted, standardised, with their moments and covariance spectrum:
        # every C of the grid is fitted on the same rows.
        self.prepared: tuple[Rows, tuple, torch.Tensor, tuple] | None = None

    def prepare(self, features: Rows) -> tuple[tuple, torch.Tensor, tuple]:
        """`(moments, standardised rows, spectrum)` of `features`, computed once per rows."""
        if self.prepared is None or self.prepared[0] is not features:
            self.prepared = None  # free the previous rows' copy first
            x = features.materialise()
            moments = feature_moments(Rows(x))
            mean, std = (torch.from_numpy(m).to(self.device) for m in moments)
            standardised = (torch.from_numpy(x).to(self.device) - mean) / std
            del x
            self.prepared = (features, moments, standardised, Whitening.spectrum(standardised))
        return self.prepared[1:]

    def __call__(self, features: Rows, targets: np.ndarray, params: dict) -> LinearScorer:
        moments, standardised, spectrum = self.prepare(features)
        linear = nn.Linear(features.dim, int(targets.max()) + 1).to(self.device)
        scorer = LinearScorer(linear, *moments)
        penalty = 1.0 / (2.0 * params["C"] * len(targets))
        classes = linear.weight.shape[0]
        whitening = Whitening(spectrum, ridge=2.0 * penalty * classes)
        inputs = whitening.inputs(standardised)
        labels = torch.from_numpy(targets).to(self.device)
        previous = self.solutions.get(params["C"], self.previous) if self.warm_start else None
        # L-BFGS works on the whitened weights, flattened with the bias after them; the
        # scorer keeps the standardised ones.
        start = inputs.new_zeros(linear.weight.numel() + classes)
        if previous is not None and previous[0].shape == linear.weight.shape:
            start = torch.cat([whitening.to_whitened(previous[0]).flatten(), previous[1]])
        function = MultinomialObjective(
            inputs, labels, penalty, column_weights=whitening.scale.square()
        )
        one_thread = inputs.device.type == "cpu" and inputs.numel() < LBFGS_ONE_THREAD_BELOW
        with torch_threads(1 if one_thread else None), torch.no_grad():
            result = self.minimizer(
                functools.partial(function.flat, classes=classes),
                start,
                max_iter=self.max_iter,
                tolerance_grad=self.tolerance,
                history_size=LBFGS_HISTORY,
            )
        iterations = result.iterations
        with torch.no_grad():
            weight = result.x[: linear.weight.numel()].view_as(linear.weight)
            linear.weight.copy_(whitening.from_whitened(weight))
            linear.bias.copy_(result.x[linear.weight.numel() :])
        if iterations >= self.max_iter:
            from sklearn.exceptions import ConvergenceWarning  # the sklearn backend's warning

            warnings.warn(
                f"L-BFGS stopped at max_iter={self.max_iter} before converging (C={params['C']:g})",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.iterations.append(iterations)
        self.previous = (linear.weight.detach().clone(), linear.bias.detach().clone())
        self.solutions[params["C"]] = self.previous
        return scorer


# ---- protocol -----------------------------------------------------------------------------------


def select_hyperparameters(
    fit: Callable[[Rows, np.ndarray, dict], Scorer],
    grid: Sequence[dict],
    fit_part: tuple[Rows, np.ndarray],
    val_part: tuple[Rows, np.ndarray],
    *,
    progress: bool = False,
) -> tuple[dict, float, list[dict]]:
    """Train on `fit_part` with every setting of `grid`, score top-1 on `val_part`.

    Both parts come from the training split. Returns the best setting (ties: earliest),
    its validation accuracy, and one `{**setting, "val_top1"}` record per setting.
    """
    history = []
    for params in tqdm(grid, disable=not progress, desc="probe grid"):
        scorer = fit(*fit_part, params)
        history.append(
            {**params, "val_top1": top1_accuracy(predict_scores(scorer, val_part[0]), val_part[1])}
        )
    best = max(range(len(grid)), key=lambda i: (history[i]["val_top1"], -i))
    return dict(grid[best]), history[best]["val_top1"], history


def evaluate_on_test(
    scorer: Scorer, test_x: Any, test_y: Any, classes: np.ndarray
) -> dict[str, Any]:
    """The protocol's only read of the test split: metrics of the refitted probe."""
    scores = predict_scores(scorer, Rows(test_x))
    targets = _positions(np.asarray(test_y, dtype=np.int64), classes)
    return classification_metrics(scores, targets, len(classes))


def protocol_text(backend: str, grid: Sequence[dict], val_fraction: float, seed: int) -> str:
    """One-paragraph description of the protocol as run, stored with the metrics."""
    if backend == "sklearn":
        model = (
            "StandardScaler + multinomial logistic regression "
            f"(sklearn L-BFGS, L2, max_iter={SKLEARN_MAX_ITER})"
        )
    elif backend == "lbfgs":
        model = (
            "standardised features + multinomial logistic regression (torch full-batch "
            f"L-BFGS, L2 with sklearn's C, max_iter={LBFGS_MAX_ITER}, warm-started along "
            "the grid)"
        )
    else:
        model = "standardised features + nn.Linear, cross-entropy, AdamW, cosine lr decay"
    settings = "; ".join(", ".join(f"{k}={v:.3g}" for k, v in p.items()) for p in grid)
    return (
        f"{model}. Hyperparameters chosen from [{settings}] by top-1 accuracy on a stratified "
        f"held-out {val_fraction:.0%} of the TRAINING split (seed {seed}; standardisation fitted "
        "on the remaining training part); refit on the whole training split with the chosen "
        "setting; evaluated once on the test split, which is never used for selection."
    )


def _grid(backend: str, c_grid: Iterable[float] | None, lr_grid, wd_grid) -> list[dict]:
    if backend in ("sklearn", "lbfgs"):
        return [{"C": float(c)} for c in (c_grid if c_grid is not None else DEFAULT_C_GRID)]
    lrs = lr_grid if lr_grid is not None else DEFAULT_LR_GRID
    wds = wd_grid if wd_grid is not None else DEFAULT_WD_GRID
    return [{"lr": float(lr), "weight_decay": float(wd)} for lr in lrs for wd in wds]


def _check_shapes(train_x: Any, train_y: Any, test_x: Any, test_y: Any) -> None:
    # Shapes only: reading the test values here would break the protocol's step 4.
    if len(train_x.shape) != 2 or len(test_x.shape) != 2:
        raise ValueError(
            f"features must be (N, D); got train {train_x.shape} and test {test_x.shape}"
        )
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"feature dims differ: train {train_x.shape}, test {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(
            f"features and labels differ in length: train {len(train_x)} vs {len(train_y)}, "
            f"test {len(test_x)} vs {len(test_y)}"
        )


def _fitter(backend: str, seed: int, minimizer: Callable, **torch_options: Any) -> Callable:
    """`fit(rows, targets, hyperparameters) -> scorer` of `backend`."""
    if backend == "sklearn":
        return functools.partial(fit_sklearn, seed=seed)
    if backend == "lbfgs":
        return LbfgsFitter(device=torch_options["device"], minimizer=minimizer)
    return functools.partial(fit_torch, seed=seed, **torch_options)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    backend: str = "lbfgs",
    seed: int = 0,
    val_fraction: float = 0.1,
    c_grid: Iterable[float] | None = None,
    lr_grid: Iterable[float] | None = None,
    wd_grid: Iterable[float] | None = None,
    epochs: int = 30,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    minimizer: Callable[..., lbfgs.Result] = lbfgs.minimize,
) -> dict:
    """Linear-probe accuracy of `train_x (N, D)` / `test_x (M, D)` features (module docstring).

    `c_grid` is the grid of the L-BFGS backends (lbfgs, sklearn); `minimizer` the lbfgs
    backend's (`LbfgsFitter`); `lr_grid`, `wd_grid`, `epochs` and `batch_size` configure
    the torch (AdamW) backend; `device` both torch backends. Returns top1, top5 (more than
    5 classes), per_class_accuracy (aligned with `classes`), hyperparameters, val_top1,
    selection, n_train, n_val, n_test, feature_dim, num_classes, backend, protocol.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    _check_shapes(train_x, train_y, test_x, test_y)
    train_y = np.asarray(train_y, dtype=np.int64)
    classes = np.unique(train_y)
    targets = np.searchsorted(classes, train_y)
    fit_idx, val_idx = stratified_holdout(targets, val_fraction, seed)
    if backend in ("sklearn", "lbfgs"):
        train_x = np.asarray(train_x, dtype=np.float32)  # L-BFGS needs it in memory anyway
    fit = _fitter(backend, seed, minimizer, epochs=epochs, batch_size=batch_size, device=device)
    grid = _grid(backend, c_grid, lr_grid, wd_grid)
    chosen, val_top1, history = select_hyperparameters(
        fit,
        grid,
        (Rows(train_x, fit_idx), targets[fit_idx]),
        (Rows(train_x, val_idx), targets[val_idx]),
        progress=progress,
    )
    scorer = fit(Rows(train_x), targets, chosen)
    return {
        **evaluate_on_test(scorer, test_x, test_y, classes),
        "classes": classes.tolist(),
        "hyperparameters": chosen,
        "val_top1": val_top1,
        "selection": history,
        "n_train": len(train_y),
        "n_val": len(val_idx),
        "n_test": len(test_y),
        "feature_dim": int(train_x.shape[1]),
        "num_classes": len(classes),
        "backend": backend,
        "protocol": protocol_text(backend, grid, val_fraction, seed),
    }


# ---- k-NN and the pixel baseline ----------------------------------------------------------------


def _unit_rows(chunk: np.ndarray, device: torch.device) -> torch.Tensor:
    return F.normalize(torch.from_numpy(chunk).to(device), dim=1)


@torch.no_grad()
def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> dict:
    """Weighted k-NN top-1 (DINO's protocol) of `test_x (M, D)` against `train_x (N, D)`.

    Cosine similarity of L2-normalised features; the `k` most similar training rows vote for
    their class with weight `exp(sim / temperature)`. The test features are held normalised
    in memory `(M, D)`; training rows stream in `batch_size` chunks, keeping a running top-k.
    A block of similarities is `batch_size` squared: at 2048 (16 MiB) it stays in a server
    CPU's last-level cache, and the default's k-NN took 4.2 s against 5.6 s at 1024 and
    5.5 s at 4096 (`bench/probe.py --tables knn`, 2026-12-06).
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    device = torch.device(device)
    train_y = np.asarray(train_y, dtype=np.int64)
    classes = np.unique(train_y)
    train_targets = torch.from_numpy(np.searchsorted(classes, train_y)).to(device)
    k = min(k, len(train_y))
    test = torch.cat([_unit_rows(c, device) for c in Rows(test_x).chunks(batch_size)])
    top_sim = torch.full((len(test), k), -math.inf, device=device)
    top_idx = torch.zeros((len(test), k), dtype=torch.long, device=device)
    # One block of similarities, the running top-k in its first k columns: the product is
    # written straight into the rest, with no concatenated copy.
    block = torch.empty((min(batch_size, len(test)), k + batch_size), device=device)
    for start, chunk in enumerate(Rows(train_x).chunks(batch_size)):
        chunk = _unit_rows(chunk, device)
        offset = start * batch_size
        for t in range(0, len(test), batch_size):
            rows = slice(t, t + batch_size)
            sims = block[: len(test[rows]), : k + len(chunk)]
            sims[:, :k] = top_sim[rows]
            torch.mm(test[rows], chunk.T, out=sims[:, k:])
            top_sim[rows], best = sims.topk(k, dim=1)
            # Columns below k are the running top-k, the rest this chunk's rows in order.
            kept = top_idx[rows].gather(1, best.clamp(max=k - 1))
            top_idx[rows] = torch.where(best < k, kept, best + (offset - k))
    votes = torch.zeros((len(test), len(classes)), device=device)
    votes.scatter_add_(1, train_targets[top_idx], (top_sim / temperature).exp())
    predicted = classes[votes.argmax(1).cpu().numpy()]
    top1 = float(np.mean(predicted == np.asarray(test_y, dtype=np.int64)))
    return {"knn_top1": top1, "k": k, "temperature": temperature}

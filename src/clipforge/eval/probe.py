"""Linear probe on frozen features, as in the CLIP paper (Radford et al. 2021, appendix A.3).

A multinomial logistic regression with L2 regularisation is trained full-batch in float64 (`logistic`:
Newton's method for small problems, else L-BFGS; 1,000 iterations at most and max |gradient| <= 1e-4,
as the paper's scikit-learn setup). The objective, on features standardised with the mean and standard
deviation of the rows being fitted (columns with zero spread are left unscaled), is

    mean_i cross_entropy(z_i @ W + b, y_i) + (l2 / 2) * ||W||_F^2,

the bias unpenalised; the fitted (W, b) are folded back so that they apply to the raw features.
Note that `l2` multiplies the *mean* loss: scikit-learn's C relates as l2 = 1 / (C * N).

The strength `l2` is chosen on a validation split carved (stratified, seeded) from the training rows
only, by the paper's parametric binary search: a coarse log grid (1e-6 .. 1e2, every two decades),
then repeatedly halving the step around the best value down to 8 steps per decade. Candidates are
ranked by validation top-1, ties broken by lower validation cross-entropy, then by the larger l2.
Fits along the search are warm-started from the solution at the nearest l2 already fitted (the coarse
grid runs from strong to weak), and the final refit from the chosen l2's fit: same optima, fewer steps.
`select_l2` takes training rows alone and `linear_probe` reads the test rows (beyond their shape)
only after the final refit, so the test split cannot leak into the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .logistic import Solver, cpu_threads_for, solve
from .metrics import class_rank, mean_per_class_recall, topk_accuracy

# Coarse search over 10**e for e in this range (every _COARSE_STEP decades), then halving to _FINEST_STEP.
_LOG10_RANGE = (-6.0, 2.0)
_COARSE_STEP = 2.0
_FINEST_STEP = 1.0 / 8.0
_TOL = 1e-4  # max |gradient| at which a fit stops: scikit-learn's default tol, on the same mean-loss scale


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of `linear_probe`.

    top1, top5, mean_per_class_recall: test metrics (fractions in [0, 1]; top5 is 1.0 when C <= 5).
    l2: the regularisation strength used for the final fit. val_top1: validation top-1 at that l2
    (NaN when l2 was given, not searched). weight (D, C) and bias (C,), float64: the final classifier,
    applied to raw (unstandardised) features as `features @ weight + bias`.
    """

    top1: float
    top5: float
    mean_per_class_recall: float
    l2: float
    val_top1: float
    weight: torch.Tensor
    bias: torch.Tensor


def _check_features(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.dim() != 2:
        raise ValueError(f"{name}_features must have shape (N, D), got {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{name}_labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")


@dataclass(frozen=True)
class _Standardised:
    """Rows ready for the solver: z1 = [(x - mean) / std, 1] (N, D + 1) float64, labels (N,) long.

    Built once per set of rows, so the l2 search's fits on the same split share it.
    """

    z1: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,), zero spreads replaced by 1
    num_classes: int


def _standardise(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> _Standardised:
    _check_features(features, labels, "train")
    if features.shape[0] == 0:
        raise ValueError("fit_logistic needs at least one row")
    x = features.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("train_features contain NaN or infinite values; drop or repair those rows first")
    y = labels.to(x.device).long()
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    mean = x.mean(dim=0)  # (D,)
    centred = x - mean  # (N, D)
    std = centred.square().mean(dim=0).sqrt_()  # (D,); population std, faster than Tensor.std on columns
    std = torch.where(std > 0, std, torch.ones_like(std))
    z1 = torch.cat([centred.div_(std), torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    return _Standardised(z1, y, mean, std, num_classes)


def _fit_standardised(
    data: _Standardised,
    l2: float,
    max_iter: int,
    tol: float,
    init: tuple[torch.Tensor, torch.Tensor] | None,
    solver: Solver,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_logistic` on rows already standardised; init and the result are (W, b) for raw features."""
    if not l2 >= 0 or not math.isfinite(l2):
        raise ValueError(f"l2 must be a finite non-negative number, got {l2}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    mean, std, c = data.mean, data.std, data.num_classes
    if init is None:
        theta0 = torch.zeros(mean.shape[0] + 1, c, dtype=mean.dtype, device=mean.device)
    else:
        w0, b0 = (t.to(device=mean.device, dtype=mean.dtype) for t in init)
        if w0.shape != (mean.shape[0], c) or b0.shape != (c,):
            raise ValueError(
                f"init must be (W {(mean.shape[0], c)}, b {(c,)}), got {tuple(w0.shape)} and {tuple(b0.shape)}"
            )
        # Raw-feature (W, b) in the standardised parametrisation: z @ (W * std) + (b + mean @ W) == x @ W + b.
        theta0 = torch.cat([w0 * std[:, None], (b0 + mean @ w0)[None]])
    theta, _ = solve(data.z1, data.labels, c, l2, theta0, tol=tol, max_iter=max_iter, solver=solver)
    weight, bias = theta[:-1], theta[-1]  # (D, C), (C,)
    # Fold the standardisation in: (x - mean) / std @ W + b == x @ (W / std) + (b - (mean / std) @ W).
    return weight / std[:, None], bias - (mean / std) @ weight


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 1000,
    *,
    tol: float = _TOL,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    solver: Solver = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit L2-regularised multinomial logistic regression; returns (W (D, C), b (C,)) for raw features.

    features (N, D), labels (N,) long. Solved in float64 on the features' device (see `logistic`) until
    max |gradient| <= tol on the mean-loss scale (scikit-learn's lbfgs default tol is the same quantity),
    or max_iter steps. Deterministic: starts from zero weights, or from `init` = (W, b) for raw features,
    e.g. the solution at a neighbouring l2 (a warm start). solver: "auto" (Newton while N * ((D + 1) C)^2
    is small, else L-BFGS), "newton", "lbfgs". W and b are float64.
    """
    return _fit_standardised(_standardise(features, labels, num_classes), l2, max_iter, tol, init, solver)


def stratified_split(
    labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, validation indices), both sorted, drawn per class with a seeded generator.

    A class with n >= 2 rows gives min(n - 1, max(1, round(n * val_fraction))) of them to validation,
    so every such class keeps a row on each side; a class with one row stays in the fit set.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    labels = labels.long().cpu()
    generator = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(rows.numel(), generator=generator)]
        n_val = min(rows.numel() - 1, max(1, round(rows.numel() * val_fraction))) if rows.numel() >= 2 else 0
        val.append(rows[:n_val])
        fit.append(rows[n_val:])
    fit_idx, val_idx = torch.cat(fit).sort().values, torch.cat(val).sort().values
    if val_idx.numel() == 0:
        raise ValueError("cannot carve a validation split: no class has two or more training rows")
    return fit_idx, val_idx


def _score(
    weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    """(top-1, mean cross-entropy) of the classifier on (features, labels)."""
    logits = features.to(weight.dtype) @ weight + bias  # (N, C)
    labels = labels.to(logits.device).long()
    top1 = (class_rank(logits, labels) == 0).double().mean().item()
    return top1, F.cross_entropy(logits, labels).item()


def select_l2(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    grid: Sequence[float] | None = None,
    max_iter: int = 1000,
    *,
    warm_start: bool = True,
) -> tuple[float, float]:
    """Choose the L2 strength on a validation split of the training rows; returns (l2, val_top1).

    grid=None runs the binary search described in the module docstring; an explicit grid is evaluated
    as given, without refinement. warm_start: each fit starts from the solution at the nearest l2 already
    fitted (in log10), which lands on the same optimum in fewer steps; False starts every fit from zero.
    """
    n, d = train_features.shape
    with cpu_threads_for(train_features.device, n, d, num_classes):
        l2, val_top1, _ = _search_l2(
            train_features, train_labels, num_classes, val_fraction, seed, grid, max_iter, warm_start
        )
    return l2, val_top1


def _search_l2(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    val_fraction: float,
    seed: int,
    grid: Sequence[float] | None,
    max_iter: int,
    warm_start: bool,
) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
    """`select_l2`, also returning the chosen fit's (W, b) on the fit split (a warm start for the refit)."""
    _check_features(train_features, train_labels, "train")
    fit_idx, val_idx = stratified_split(train_labels, num_classes, val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(train_features.device), val_idx.to(train_features.device)
    x_fit, y_fit = train_features[fit_idx], train_labels[fit_idx.to(train_labels.device)]
    x_val, y_val = train_features[val_idx], train_labels[val_idx.to(train_labels.device)]
    return search_l2(x_fit, y_fit, x_val, y_val, num_classes, grid, max_iter, warm_start=warm_start)


def search_l2(
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    grid: Sequence[float] | None = None,
    max_iter: int = 1000,
    *,
    warm_start: bool = True,
) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
    """The L2 search on explicit fit and validation rows: (l2, its validation top-1, its fit (W, b) on the fit
    rows). Candidates are ranked by top-1, then lower cross-entropy, then larger l2; grid=None runs the binary
    search of the module docstring. `select_l2` carves the validation rows from the training set; a caller with
    its own validation set (the few-shot protocol) passes it here."""
    fit_rows = _standardise(x_fit, y_fit, num_classes)  # once for all the search's fits
    results: dict[float, tuple[float, float, float]] = {}  # log10(l2) -> ranking key
    fits: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}  # log10(l2) -> (W, b)

    def evaluate(log_l2: float) -> None:
        if log_l2 not in results:
            init = fits[min(fits, key=lambda done: abs(done - log_l2))] if warm_start and fits else None
            weight, bias = _fit_standardised(fit_rows, 10.0**log_l2, max_iter, _TOL, init, "auto")
            fits[log_l2] = (weight, bias)
            top1, loss = _score(weight, bias, x_val, y_val)
            results[log_l2] = (top1, -loss, log_l2)

    def best() -> float:
        return max(results.items(), key=lambda item: item[1])[0]

    if grid is not None:
        values = [float(v) for v in grid]
        if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
            raise ValueError(f"grid must be a non-empty sequence of positive finite numbers, got {list(grid)}")
        for v in values:
            evaluate(math.log10(v))
    else:
        lo, hi = _LOG10_RANGE
        step = _COARSE_STEP
        for i in reversed(range(int(round((hi - lo) / step)) + 1)):  # strong to weak: each warm-starts the next
            evaluate(lo + i * step)
        while step > _FINEST_STEP:
            step /= 2
            center = best()
            for candidate in (center - step, center + step):
                if lo <= candidate <= hi:
                    evaluate(candidate)
    chosen = best()
    return 10.0**chosen, results[chosen][0], fits[chosen]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    l2_grid: Sequence[float] | None = None,
    l2: float | None = None,
    max_iter: int = 1000,
    warm_start: bool = True,
) -> ProbeResult:
    """Choose l2 on the training rows (unless `l2` is given), refit on all of them, score the test rows.

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,).
    """
    _check_features(train_features, train_labels, "train")
    # Shapes only: the test rows' values are not read before the final classifier exists.
    if test_features.dim() != 2 or test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features must have shape (M, {train_features.shape[1]}), got {tuple(test_features.shape)}"
        )
    if test_labels.dim() != 1 or test_labels.shape[0] != test_features.shape[0]:
        raise ValueError(f"test_labels must have shape ({test_features.shape[0]},), got {tuple(test_labels.shape)}")

    with cpu_threads_for(train_features.device, *train_features.shape, num_classes):
        init = None
        if l2 is None:
            l2, val_top1, init = _search_l2(
                train_features, train_labels, num_classes, val_fraction, seed, l2_grid, max_iter, warm_start
            )
        else:
            val_top1 = float("nan")
        # Warm start from the chosen fit on the fit split: same l2, most of the same rows, so a near-optimum.
        weight, bias = fit_logistic(train_features, train_labels, num_classes, l2, max_iter, init=init)

        logits = test_features.to(device=weight.device, dtype=weight.dtype) @ weight + bias  # (M, C)
        labels = test_labels.to(logits.device)
        acc = topk_accuracy(logits, labels, ks=(1, 5))
        recall = mean_per_class_recall(logits, labels, num_classes)
    return ProbeResult(
        top1=acc["top1"],
        top5=acc["top5"],
        mean_per_class_recall=recall,
        l2=float(l2),
        val_top1=float(val_top1),
        weight=weight,
        bias=bias,
    )

"""Solvers for L2-regularised multinomial logistic regression on standardised features (the linear probe's fit).

The objective, over theta = [W; b] of shape (D + 1, C) acting on z1 = [z, 1] (N, D + 1), is

    f(theta) = mean_i (logsumexp(z1_i @ theta) - (z1_i @ theta)[y_i]) + (l2 / 2) * ||W||_F^2,

the bias row unpenalised: scikit-learn's `LogisticRegression` objective divided by C * N (l2 = 1 / (C * N)).
Everything runs in float64: in float32 the line search stalls on rounding long before a tight gradient
tolerance is met, which is what made the old torch.optim.LBFGS probe crawl (thousands of iterations).

Two solvers, both stopping when max |grad| <= tol (scikit-learn's `gtol`, the same mean-loss scale):

- `newton`: exact Hessian, Cholesky solve, backtracking line search. Quadratic convergence, ~10-20 steps
  whatever the conditioning, so it wins when the Hessian ((D + 1) C)^2 is small to build and factor.
  The softmax leaves theta + (0, c * 1) unchanged (a constant added to every class's bias), a null
  direction of the Hessian; the gradient is orthogonal to it, so adding its outer product to the Hessian
  makes the system positive definite without changing the step.
- `lbfgs`: limited-memory BFGS (two-loop recursion, 10 pairs) with an Armijo backtracking line search;
  one gradient (two (N, D + 1) x (D + 1, C) products) per iteration, for large D * C.

Both keep sum(b) fixed at its starting value (zero from a cold start), as scikit-learn's lbfgs does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

Solver = Literal["auto", "newton", "lbfgs"]

# Newton builds and factors the (P, P) Hessian, P = (D + 1) * C, in N * P^2 + P^3 / 3 multiply-adds per step;
# an L-BFGS step costs ~4 N P plus ~0.3 ms of Python. Measured on Fashion-MNIST features (P = 330): Newton
# wins below a few hundred rows (5-11 steps against 50-450), L-BFGS from ~1,000 rows on.
_NEWTON_MAX_WORK = 5e7
_SINGLE_THREAD_WORK = 2**26  # L-BFGS: below this many multiply-adds in the gradient product, CPU runs 1 thread
_ROW_CHUNK = 4096  # rows per block when accumulating the Hessian (bounds the (rows, P) buffer)
_ARMIJO = 1e-4
_MAX_LINE_SEARCH = 30
_LBFGS_HISTORY = 10
_FTOL = 64 * torch.finfo(torch.float64).eps  # relative decrease below which progress has stopped


@dataclass(frozen=True)
class SolveInfo:
    """How a fit ended: the solver used, its iterations, the final max |grad|, and why it stopped.

    stop: "converged" (max |grad| <= tol), "stalled" (relative decrease below 64 eps: the optimum to machine
    precision), "line search failed" (likewise, in practice), or "max_iter".
    """

    solver: str
    iterations: int
    grad_max: float
    stop: str

    @property
    def converged(self) -> bool:
        """Whether the solver stopped because it converged or stalled (not on the iteration limit)."""
        return self.stop in ("converged", "stalled")


# (theta (P,), iterations, final gradient (P,), why it stopped)
_Outcome = tuple[torch.Tensor, int, torch.Tensor, str]


class _Objective:
    """Loss, gradient and Hessian of the objective above; theta is flat (P,), P = (D + 1) * C, row-major."""

    def __init__(self, z1: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float) -> None:
        self.z1 = z1  # (N, D + 1), float64, last column ones
        self.n, self.d1 = z1.shape
        self.c = num_classes
        self.onehot = torch.nn.functional.one_hot(labels, num_classes).to(z1.dtype)  # (N, C)
        self.l2 = l2
        self.penalised = torch.ones(self.d1, num_classes, dtype=z1.dtype, device=z1.device)
        self.penalised[-1] = 0.0  # the bias row
        self.penalised = self.penalised.flatten()  # (P,)

    def _log_probs(self, theta: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        logits = z1 @ theta.view(self.d1, self.c)  # (n, C)
        return logits - logits.logsumexp(dim=1, keepdim=True)

    def loss_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        log_p = self._log_probs(theta, self.z1)  # (N, C)
        weights = theta * self.penalised  # (P,)
        loss = -(log_p * self.onehot).sum() / self.n + 0.5 * self.l2 * torch.dot(weights, weights)
        residual = log_p.exp_().sub_(self.onehot)  # (N, C): P - Y
        grad = (self.z1.T @ residual).div_(self.n).flatten()  # (P,)
        return float(loss), grad.add_(weights, alpha=self.l2)

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """(P, P): mean_i (diag(p_i) - p_i p_i^T) (x) z1_i z1_i^T + l2 diag(penalised) + u u^T (u: bias null)."""
        d1, c = self.d1, self.c
        h = torch.zeros(d1 * c, d1 * c, dtype=theta.dtype, device=theta.device)
        diag_blocks = torch.zeros(c, d1, d1, dtype=theta.dtype, device=theta.device)  # (C, D1, D1)
        for start in range(0, self.n, _ROW_CHUNK):
            z = self.z1[start : start + _ROW_CHUNK]  # (n, D1)
            p = self._log_probs(theta, z).exp_()  # (n, C)
            u = (z[:, :, None] * p[:, None, :]).reshape(z.shape[0], d1 * c)  # (n, P): z_i (x) p_i
            h.sub_(u.T @ u)
            diag_blocks.add_((z.T[None] * p.T[:, None, :]) @ z)  # sum_i p_ic z_i z_i^T per class
        torch.diagonal(h.view(d1, c, d1, c), dim1=1, dim2=3).add_(diag_blocks.permute(1, 2, 0))
        h.div_(self.n)
        h.diagonal().add_(self.penalised, alpha=self.l2)
        null = torch.zeros(d1, c, dtype=theta.dtype, device=theta.device)
        null[-1] = c**-0.5
        null = null.flatten()
        return h.add_(torch.outer(null, null))


def _line_search(
    objective: _Objective, theta: torch.Tensor, f: float, direction: torch.Tensor, slope: float, step: float
) -> tuple[torch.Tensor, float, torch.Tensor] | None:
    """Backtracking (safeguarded quadratic interpolation) to an Armijo point; None when none is found."""
    for _ in range(_MAX_LINE_SEARCH):
        candidate = theta + step * direction
        f_new, g_new = objective.loss_grad(candidate)
        if f_new <= f + _ARMIJO * step * slope:
            return candidate, f_new, g_new
        curvature = 2.0 * (f_new - f - slope * step)
        guess = -slope * step * step / curvature if curvature > 0 and math.isfinite(f_new) else 0.5 * step
        step = min(0.5 * step, max(0.1 * step, guess))
    return None


def _stalled(f_old: float, f_new: float) -> bool:
    return f_old - f_new <= _FTOL * max(abs(f_old), abs(f_new), 1.0)


def _newton(objective: _Objective, theta: torch.Tensor, tol: float, max_iter: int) -> _Outcome:
    f, g = objective.loss_grad(theta)
    for it in range(max_iter):
        if float(g.abs().max()) <= tol:
            return theta, it, g, "converged"
        factor, info = torch.linalg.cholesky_ex(objective.hessian(theta))
        if int(info) != 0:
            return theta, it, g, "not definite"
        direction = -torch.cholesky_solve(g[:, None], factor).squeeze(1)  # (P,)
        found = _line_search(objective, theta, f, direction, float(torch.dot(g, direction)), 1.0)
        if found is None:
            return theta, it, g, "line search failed"
        theta, f_new, g = found
        if _stalled(f, f_new):
            return theta, it + 1, g, "stalled"
        f = f_new
    return theta, max_iter, g, "max_iter"


def _lbfgs(objective: _Objective, theta: torch.Tensor, tol: float, max_iter: int) -> _Outcome:
    f, g = objective.loss_grad(theta)
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / s.y), oldest first
    for it in range(max_iter):
        if float(g.abs().max()) <= tol:
            return theta, it, g, "converged"
        # Two-loop recursion: q = H_k g with H_0 = (s.y / y.y) I from the newest pair.
        q = g.clone()
        alphas = []
        for s, y, rho in reversed(pairs):
            alpha = rho * float(torch.dot(s, q))
            q.sub_(y, alpha=alpha)
            alphas.append(alpha)
        if pairs:
            s, y, rho = pairs[-1]
            q.mul_(1.0 / (rho * float(torch.dot(y, y))))
        else:
            q.mul_(min(1.0, 1.0 / float(g.abs().sum())))  # first step: bounded length along -g
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            q.add_(s, alpha=alpha - rho * float(torch.dot(y, q)))
        direction = q.neg_()
        slope = float(torch.dot(g, direction))
        if slope >= 0:  # not a descent direction (lost curvature information): restart along -g
            pairs.clear()
            direction, slope = -g, -float(torch.dot(g, g))
        found = _line_search(objective, theta, f, direction, slope, 1.0)
        if found is None:
            return theta, it, g, "line search failed"
        new_theta, f_new, g_new = found
        s, y = new_theta - theta, g_new - g
        sy = float(torch.dot(s, y))
        if sy > 1e-10 * float(torch.dot(y, y)):  # keep the pair only if it carries positive curvature
            pairs = [*pairs[-(_LBFGS_HISTORY - 1) :], (s, y, 1.0 / sy)]
        stalled = _stalled(f, f_new)
        theta, f, g = new_theta, f_new, g_new
        if stalled:
            return theta, it + 1, g, "stalled"
    return theta, max_iter, g, "max_iter"


def choose_solver(n: int, d: int, num_classes: int, l2: float) -> str:
    """"newton" when the (P, P) Hessian is small to build and factor and l2 > 0 makes it definite, else "lbfgs"."""
    params = (d + 1) * num_classes
    return "newton" if l2 > 0 and n * params**2 + params**3 / 3 <= _NEWTON_MAX_WORK else "lbfgs"


@contextlib.contextmanager
def cpu_threads_for(device: torch.device, n: int, d: int, num_classes: int, solver: str = "auto") -> Iterator[None]:
    """Run a small fit (and whatever the caller does around it) on one intra-op thread, restoring after.

    A step of a small fit is hundreds of sub-millisecond ops; with several intra-op threads each op pays a
    fork-join, and when the cores are shared (other processes, data-loader workers) one descheduled
    thread stalls every op for a scheduler slice: measured 20-40x slower than one thread on a busy
    2-core machine. Newton-sized problems (a step of at most ~5e7 multiply-adds) always run on one thread;
    L-BFGS ones from 2**26 multiply-adds per gradient product (~10 ms on one core; 10,000 x 512 x 10 is
    under) keep the caller's setting. Measured on that busy machine, 10,000 x 512: 3 s on one thread,
    19 s on two. `torch.set_num_threads` is process-wide, so concurrent torch work in other Python
    threads also runs on one thread while the scope lasts.
    """
    name = choose_solver(n, d, num_classes, 1.0) if solver == "auto" else solver
    small = name == "newton" or n * (d + 1) * num_classes < _SINGLE_THREAD_WORK
    previous = torch.get_num_threads()
    if device.type != "cpu" or not small or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def solve(
    z1: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    theta0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    solver: Solver = "auto",
) -> tuple[torch.Tensor, SolveInfo]:
    """Minimise the objective from theta0; z1 (N, D + 1) float64 with a ones column, theta0 (D + 1, C).

    Returns theta (D + 1, C) and how the fit ended. "newton" continues with L-BFGS from where it stopped
    if its Hessian turns out not to be numerically positive definite (then `SolveInfo.solver` is "lbfgs").
    """
    if solver not in ("auto", "newton", "lbfgs"):
        raise ValueError(f"solver must be 'auto', 'newton' or 'lbfgs', got {solver!r}")
    objective = _Objective(z1, labels, num_classes, l2)
    theta = theta0.reshape(-1).to(z1.dtype).clone()
    name = choose_solver(z1.shape[0], z1.shape[1] - 1, num_classes, l2) if solver == "auto" else solver
    done = 0
    with cpu_threads_for(z1.device, z1.shape[0], z1.shape[1] - 1, num_classes, name):
        if name == "newton":
            theta, done, g, stop = _newton(objective, theta, tol, max_iter)
            if stop == "not definite":
                name = "lbfgs"
        if name == "lbfgs":
            theta, iterations, g, stop = _lbfgs(objective, theta, tol, max_iter - done)
            done += iterations
    return theta.view(z1.shape[1], num_classes), SolveInfo(name, done, float(g.abs().max()), stop)

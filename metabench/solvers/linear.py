"""Linear solvers for H v = b with H symmetric positive definite, batched over tasks.

``matvec(v)`` returns H_i v_i for every task i (v has a leading task dimension); inner
products and step sizes are taken per task, so each task runs its own solver in lock-step.
Each solver returns ``(v, matvecs)``: the solution and how many batched products it used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metabench.errors import SolverBreakdown

__all__ = ["conjugate_gradient", "neumann_series"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-task inner product, shaped to broadcast against a task-batched tensor."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


def conjugate_gradient(
    matvec: MatVec, b: torch.Tensor, iters: int, x0: torch.Tensor | None = None, tol: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Conjugate gradient (Hestenes-Stiefel) for H x = b, ``iters`` iterations from ``x0`` (default 0).

    r_0 = b - H x_0, p_0 = r_0;  alpha_k = r_k'r_k / p_k'H p_k,  x_{k+1} = x_k + alpha_k p_k,
    r_{k+1} = r_k - alpha_k H p_k,  beta_k = r_{k+1}'r_{k+1} / r_k'r_k,  p_{k+1} = r_{k+1} + beta_k p_k.

    Stops early once every task has ||r|| <= tol ||b|| (tol = 0: only on an exactly zero
    residual); a task already converged takes zero steps. A starting point costs one extra
    product. Raises ``SolverBreakdown`` if p'H p <= 0 for a task that has not converged.
    """
    matvecs = 0
    if x0 is None:
        x, r = torch.zeros_like(b), b.clone()
    else:
        x, r = x0.clone(), b - matvec(x0)
        matvecs += 1
    p = r.clone()
    rr = _dot(r, r)
    threshold = (tol**2) * _dot(b, b)
    for _ in range(iters):
        active = ~(rr <= threshold)  # a NaN residual is not convergence: it runs on and surfaces as NaN
        if not bool(active.any()):
            break
        Hp = matvec(p)
        matvecs += 1
        pHp = _dot(p, Hp)
        if bool((active & (pHp <= 0)).any()):
            raise SolverBreakdown(
                "conjugate gradient met non-positive curvature p'Hp <= 0: the inner Hessian is not "
                "positive definite at phi_K (is the inner problem strongly convex?)"
            )
        alpha = torch.where(active, rr / torch.where(active, pHp, torch.ones_like(pHp)), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Hp
        rr_next = _dot(r, r)
        beta = torch.where(active, rr_next / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_next
    return x, matvecs


def neumann_series(matvec: MatVec, b: torch.Tensor, iters: int, lr: float) -> tuple[torch.Tensor, int]:
    """Truncated Neumann series for H^-1 b (Lorraine et al. 2020), N = ``iters`` products.

    v = lr sum_{j=0..N} (I - lr H)^j b  (N + 1 terms), which tends to H^-1 b when 0 < lr < 2/L.
    """
    term = b
    total = b
    for _ in range(iters):
        term = term - lr * matvec(term)
        total = total + term
    return lr * total, iters

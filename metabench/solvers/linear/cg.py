"""Conjugate gradient (Hestenes-Stiefel) for H x = b, H symmetric positive definite, batched over tasks.

    r_0 = b - H x_0, p_0 = r_0;  alpha_k = r_k'r_k / p_k'H p_k,  x_{k+1} = x_k + alpha_k p_k,
    r_{k+1} = r_k - alpha_k H p_k,  beta_k = r_{k+1}'r_{k+1} / r_k'r_k,  p_{k+1} = r_{k+1} + beta_k p_k.

``conjugate_gradient`` is the algorithm on any batched operator; ``cg(...)`` is the solver component
the implicit algorithms take (iMAML Algorithm 2, RM-MetaL's Subroutine 1).

**Non-positive curvature** (p_k'H p_k <= 0: H is not positive definite, e.g. a network's inner Hessian with
curvature below -lam): ``on_breakdown="raise"`` raises ``SolverBreakdown``; ``"stop"`` is truncated CG (Steihaug):
that task keeps x_k, the last iterate CG reached on directions of positive curvature, and takes no more steps,
while the other tasks go on; ``"continue"`` does what iMAML's released code does: nothing (its CG divides by the
negative p'Hp and goes on; only an exactly zero p'Hp stops a task, where the division is undefined). Both count
the tasks that met it.
"""

from __future__ import annotations

import torch

from metabench._checks import check_int, check_real
from metabench.errors import SolverBreakdown
from metabench.solvers.linear.base import LinearSolver, MatVec, per_task_dot

__all__ = ["BREAKDOWNS", "ConjugateGradient", "cg", "conjugate_gradient"]

#: what CG does on p'Hp <= 0 (``cg_breakdown``): raise, stop that task (truncated CG), or go on as iMAML's code
BREAKDOWNS = ("raise", "stop", "continue")


def conjugate_gradient(
    matvec: MatVec,
    b: torch.Tensor,
    iters: int,
    x0: torch.Tensor | None = None,
    tol: float = 0.0,
    on_breakdown: str = "raise",
    stopped: list | None = None,
) -> tuple[torch.Tensor, int]:
    """``iters`` CG iterations for H x = b from ``x0`` (default 0); returns (x, products used).

    Stops early once every task has ||r|| <= tol ||b|| (tol = 0: only on an exactly zero residual);
    a task already converged takes zero steps. A starting point costs one extra product. If p'H p <= 0 for a
    task that has not converged: ``on_breakdown="raise"`` raises ``SolverBreakdown``, ``"stop"`` freezes that
    task at its iterate, ``"continue"`` goes on (module docstring); either appends its index to ``stopped``.
    """
    if on_breakdown not in BREAKDOWNS:
        raise ValueError(f"cg_breakdown must be one of {list(BREAKDOWNS)}, got {on_breakdown!r}")
    tol = check_real("cg_tol", tol, low=0.0, high=1.0)
    matvecs = 0
    if x0 is None:
        x, r = torch.zeros_like(b), b.clone()
    else:
        x, r = x0.clone(), b - matvec(x0)
        matvecs += 1
    p = r.clone()
    rr = per_task_dot(r, r)
    threshold = tol * tol * per_task_dot(b, b)  # tol <= 1: no overflow
    frozen = torch.zeros_like(rr, dtype=torch.bool)  # tasks truncated at non-positive curvature
    for _ in range(iters):
        active = ~(rr <= threshold) & ~frozen  # a NaN residual is not convergence: it runs on and surfaces as NaN
        if not bool(active.any()):
            break
        Hp = matvec(p)
        matvecs += 1
        pHp = per_task_dot(p, Hp)
        negative = active & (pHp <= 0)
        if bool(negative.any()):
            if on_breakdown == "raise":
                raise SolverBreakdown(
                    "conjugate gradient met non-positive curvature p'Hp <= 0: the inner Hessian is not "
                    "positive definite at phi_K (is the inner problem strongly convex? damping > 0 makes it so; "
                    "cg_breakdown='stop' truncates CG there instead)"
                )
            if stopped is not None:
                rows = negative.reshape(negative.shape[0], -1).any(1)  # per_task_dot keeps broadcast dims
                stopped.extend(int(i) for i in rows.nonzero().flatten())
            halt = negative if on_breakdown == "stop" else active & (pHp == 0)
            frozen = frozen | halt
            active = active & ~halt
        alpha = torch.where(active, rr / torch.where(active, pHp, torch.ones_like(pHp)), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Hp
        rr_next = per_task_dot(r, r)
        beta = torch.where(active, rr_next / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_next
    return x, matvecs


class ConjugateGradient(LinearSolver):
    """``iters`` CG iterations on (H + damping I) x = b, stopping once ||r|| <= tol ||b|| (tol = 0: never early);
    ``breakdown`` ("raise" or "stop") says what meeting non-positive curvature does (module docstring)."""

    name = "cg"

    def __init__(self, iters: int = 5, tol: float = 0.0, damping: float = 0.0, breakdown: str = "raise"):
        super().__init__(damping)
        self.iters = check_int("cg_iters", iters, low=0)
        self.tol = check_real("cg_tol", tol, low=0.0, high=1.0)
        if breakdown not in BREAKDOWNS:
            raise ValueError(f"cg_breakdown must be one of {list(BREAKDOWNS)}, got {breakdown!r}")
        self.breakdown = breakdown

    def _solve(self, matvec, b, x0):
        stopped: list[int] = []
        x, products = conjugate_gradient(
            matvec, b, self.iters, x0=x0, tol=self.tol, on_breakdown=self.breakdown, stopped=stopped
        )
        return x, {"linear_solver_matvecs": products, "cg_truncated_tasks": len(stopped)}

    @property
    def options(self):
        out = {"linear_solver": self.name, "cg_iters": self.iters, "cg_tol": self.tol, "damping": self.damping}
        return out | ({"cg_breakdown": self.breakdown} if self.breakdown != "raise" else {})


def cg(iters: int = 5, tol: float = 0.0, damping: float = 0.0, breakdown: str = "raise") -> ConjugateGradient:
    """Conjugate gradient: ``iters`` iterations (``cg_iters``), relative residual ``tol`` in [0, 1], ``damping``,
    ``breakdown`` on non-positive curvature (``cg_breakdown``: "raise", "stop" or "continue")."""
    return ConjugateGradient(iters, tol, damping, breakdown)

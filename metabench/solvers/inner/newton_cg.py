"""Hessian-free Newton (Newton-CG) on the inner objective, with a backtracking line search, batched over tasks.

    d_k = -x,  x = ``newton_cg_iters`` CG iterations on  H(phi_k) x = grad g(phi_k)  from x = 0
    t_k = the first of 1, 1/2, 1/4, ... (at most ``MAX_HALVINGS`` halvings, per task) with
          g(phi_k + t d_k) <= g(phi_k) + c t grad g(phi_k)' d_k + 8 eps |g(phi_k)|
          (Armijo, c = ``ARMIJO_C``; the last term lets a step at the optimum pass on round-off)
    phi_{k+1} = phi_k + t_k d_k

Where CG meets non-positive curvature (H not positive definite at phi_k) or d_k is not a descent direction,
the step falls back to d_k = -grad g(phi_k) for that call (steepest descent, still line-searched). On a
quadratic g with ``newton_cg_iters`` >= dim, CG solves the Newton system exactly and t = 1 passes, so one
step reaches the inner optimum (``tests/test_solvers.py``). This is iMAML's Hessian-free inner solver.

Cost per step, all counted by the oracle: one inner gradient at phi_k (kept with its graph for the products),
at most ``newton_cg_iters`` Hessian-vector products, and one inner gradient per trial point (its loss value is
what the search needs).
The steps take Hessian-vector products, so they cannot be back-propagated: implicit algorithms only (an
unrolled one is refused with a clear error). ``inner_lr`` means nothing here (the first trial is t = 1).
"""

from __future__ import annotations

import torch

from metabench._checks import check_int
from metabench.errors import SolverBreakdown
from metabench.solvers.inner.base import InnerSolver
from metabench.solvers.linear.base import per_task_dot
from metabench.solvers.linear.cg import conjugate_gradient

__all__ = ["ARMIJO_C", "MAX_HALVINGS", "NewtonCG", "newton_cg"]

ARMIJO_C = 1e-4
MAX_HALVINGS = 20


class NewtonCG(InnerSolver):
    """Newton-CG steps with backtracking (module docstring); state (phi,)."""

    name = "newton_cg"
    differentiable = False

    def __init__(self, cg_iters: int = 5):
        self.cg_iters = check_int("newton_cg_iters", cg_iters, low=1)

    def init(self, phi0):
        return (phi0,)

    def step(self, inner, k, state):
        (phi,) = state
        phi = phi.detach()
        at = inner.linearize(phi)  # the gradient at phi, and products with the Hessian there
        grad, loss = at.grad.detach(), at.loss.detach()
        try:
            x, _ = conjugate_gradient(at.hvp, grad, self.cg_iters)
            direction = -x
        except SolverBreakdown:
            direction = -grad
        slope = per_task_dot(grad, direction).reshape(-1)
        if not bool((slope < 0).all()):  # not a descent direction for some task: steepest descent for the call
            direction, slope = -grad, -per_task_dot(grad, grad).reshape(-1)
        shape = (-1,) + (1,) * (phi.dim() - 1)
        t = torch.ones_like(slope)
        loss = loss.reshape(-1)
        roundoff = 8 * torch.finfo(loss.dtype).eps * loss.abs()  # at the optimum g cannot fall further than this
        accepted = slope >= 0  # a zero gradient: nothing to do
        new = phi
        for _ in range(MAX_HALVINGS + 1):
            trial = phi + t.view(shape) * direction
            value = inner.value(trial).reshape(-1)
            ok = ~accepted & (value <= loss + ARMIJO_C * t * slope + roundoff)
            new = torch.where(ok.view(shape), trial, new)
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, 0.5 * t)
        return (new,)

    @property
    def options(self):
        return {"inner_solver": self.name, "newton_cg_iters": self.cg_iters}


def newton_cg(lr: float | None = None, newton_cg_iters: int = 5) -> NewtonCG:
    """Newton-CG with ``newton_cg_iters`` CG iterations per step (``lr`` is accepted and ignored: t starts at 1)."""
    return NewtonCG(newton_cg_iters)

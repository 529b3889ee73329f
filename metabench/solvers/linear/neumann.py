"""Truncated Neumann series for H^-1 b (Lorraine, Vicol & Duvenaud 2020), batched over tasks.

    v = lr sum_{j=0..N} (I - lr H)^j b      (N + 1 terms, N products with H)

It tends to H^-1 b when 0 < lr < 2/L and H is positive definite: then ||I - lr H|| < 1 and every
term is shorter than the one before. A term longer than the first one, ||(I - lr H)^j b_i|| > ||b_i||
(beyond rounding), can only come from a direction that the series amplifies (H indefinite, or
lr >= 2/L): the series diverges, and ``DivergenceError`` says so instead of returning its sum.
"""

from __future__ import annotations

import torch

from metabench._checks import check_int, check_real
from metabench.errors import DivergenceError
from metabench.solvers.linear.base import LinearSolver, MatVec, per_task_dot

__all__ = ["GROWTH_TOLERANCE", "Neumann", "neumann", "neumann_series"]

#: a term may exceed the first one by this relative amount (rounding) before the series counts as diverging
GROWTH_TOLERANCE = 1e-3


def neumann_series(matvec: MatVec, b: torch.Tensor, iters: int, lr: float) -> tuple[torch.Tensor, int]:
    """v = lr sum_{j=0..N} (I - lr H)^j b with N = ``iters`` products; returns (v, N).

    Raises ``DivergenceError`` when a term grows longer than b itself (the series diverges)."""
    iters = check_int("neumann_iters", iters, low=0)
    lr = check_real("neumann_lr", lr, low=0.0, low_open=True)
    term, total = b, b
    limit = (1 + GROWTH_TOLERANCE) ** 2 * per_task_dot(b, b)
    for j in range(iters):
        term = term - lr * matvec(term)
        total = total + term
        if bool((per_task_dot(term, term) > limit).any()):
            raise DivergenceError(
                f"the Neumann series diverges: term {j + 1} is longer than the first (its terms grow), so "
                f"I - {lr:g} H has an eigenvalue beyond [-1, 1]: H is not positive definite at phi_K, or "
                "neumann_lr >= 2/L"
            )
    return lr * total, iters


class Neumann(LinearSolver):
    """N = ``iters`` Neumann-series terms with step ``lr`` on (H + damping I)."""

    name = "neumann"

    def __init__(self, iters: int = 10, lr: float = 0.1, damping: float = 0.0):
        super().__init__(damping)
        self.iters = check_int("neumann_iters", iters, low=0)
        self.lr = check_real("neumann_lr", lr, low=0.0, low_open=True)

    def _solve(self, matvec, b, x0):  # the series has no starting point: x0 is not used
        v, products = neumann_series(matvec, b, self.iters, self.lr)
        return v, {"linear_solver_matvecs": products}

    @property
    def options(self):
        return {"linear_solver": self.name, "neumann_iters": self.iters, "neumann_lr": self.lr, "damping": self.damping}


def neumann(iters: int = 10, lr: float = 0.1, damping: float = 0.0) -> Neumann:
    """The Neumann-series solver: ``iters`` terms (``neumann_iters``), step ``lr`` (``neumann_lr``), ``damping``."""
    return Neumann(iters, lr, damping)

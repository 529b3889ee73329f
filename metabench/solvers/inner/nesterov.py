"""Nesterov's accelerated gradient on the inner objective (iMAML Table 1, row 2).

    y_0 = phi_0;  phi_{k+1} = y_k - lr grad_phi g(theta, y_k);  y_{k+1} = phi_{k+1} + beta_k (phi_{k+1} - phi_k)

with beta_k = ``momentum`` when given (for a mu-strongly convex, L-smooth g the optimal constant is
(sqrt(kappa) - 1)/(sqrt(kappa) + 1) with lr = 1/L) and beta_k = k/(k+3) otherwise. State (phi, y).
"""

from __future__ import annotations

from metabench._checks import check_real
from metabench.solvers.inner.base import InnerSolver

__all__ = ["Nesterov", "nesterov"]


class Nesterov(InnerSolver):
    name = "nesterov"

    def __init__(self, lr: float, momentum: float | None = None):
        self.lr = check_real("inner_lr", lr, low=0.0, low_open=True)
        self.momentum = None if momentum is None else check_real("momentum", momentum, low=0.0, high=1.0)

    def init(self, phi0):
        return (phi0, phi0)

    def step(self, inner, k, state):
        phi, y = state
        phi_next = y - self.lr * inner.grad(y)
        beta = self.momentum if self.momentum is not None else k / (k + 3)
        return (phi_next, phi_next + beta * (phi_next - phi))

    @property
    def options(self):
        return {"inner_solver": self.name, "inner_lr": self.lr, "momentum": self.momentum}


def nesterov(lr: float = 0.1, momentum: float | None = None) -> Nesterov:
    """Nesterov's method with step ``lr`` and constant ``momentum`` (None: the k/(k+3) schedule)."""
    return Nesterov(lr, momentum)

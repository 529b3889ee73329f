"""Gradient descent on the inner objective: phi_{k+1} = phi_k - lr grad_phi g(theta, phi_k)."""

from __future__ import annotations

from metabench._checks import check_real
from metabench.solvers.inner.base import InnerSolver

__all__ = ["GradientDescent", "gradient_descent"]


class GradientDescent(InnerSolver):
    """phi_{k+1} = phi_k - lr grad_phi g(theta, phi_k); state (phi,). Stable on an L-smooth g for lr < 2/L."""

    name = "gd"

    def __init__(self, lr: float):
        self.lr = check_real("inner_lr", lr, low=0.0, low_open=True)

    def init(self, phi0):
        return (phi0,)

    def step(self, inner, k, state):
        (phi,) = state
        return (phi - self.lr * inner.grad(phi),)

    @property
    def options(self):
        return {"inner_solver": self.name, "inner_lr": self.lr}


def gradient_descent(lr: float = 0.1) -> GradientDescent:
    """Plain gradient descent with step size ``lr`` (alpha, ``inner_lr``)."""
    return GradientDescent(lr)

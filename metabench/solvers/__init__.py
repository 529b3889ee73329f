"""Shared numerical pieces: inner solvers (GD, Nesterov) and linear solvers (CG, Neumann)."""

from metabench.solvers.inner import INNER_SOLVERS, gradient_descent, nesterov, run_inner_solver
from metabench.solvers.linear import conjugate_gradient, neumann_series

__all__ = [
    "INNER_SOLVERS",
    "conjugate_gradient",
    "gradient_descent",
    "nesterov",
    "neumann_series",
    "run_inner_solver",
]

"""Shared numerical components: inner solvers (``solvers.inner``) and linear solvers (``solvers.linear``).

Each is a small object with its own options and one public factory (``gradient_descent``, ``nesterov``,
``cg``, ``neumann``); algorithms take them as components instead of reading string options by name.
"""

from metabench.solvers.inner import (
    INNER_SOLVERS,
    GradientDescent,
    InnerAccess,
    InnerSolver,
    Nesterov,
    gradient_descent,
    make_inner_solver,
    nesterov,
)
from metabench.solvers.linear import (
    LINEAR_SOLVERS,
    ConjugateGradient,
    LinearSolver,
    Neumann,
    cg,
    conjugate_gradient,
    neumann,
    neumann_series,
)

__all__ = [
    "INNER_SOLVERS",
    "LINEAR_SOLVERS",
    "ConjugateGradient",
    "GradientDescent",
    "InnerAccess",
    "InnerSolver",
    "LinearSolver",
    "Nesterov",
    "Neumann",
    "cg",
    "conjugate_gradient",
    "gradient_descent",
    "make_inner_solver",
    "nesterov",
    "neumann",
    "neumann_series",
]

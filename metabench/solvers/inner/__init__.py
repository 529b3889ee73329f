"""Inner solvers: K steps on g(theta, .) from phi0, one file each, registered by name.

``gradient_descent(lr)`` and ``nesterov(lr, momentum)`` are the public factories; an algorithm
takes a solver instance (``inner_solver=nesterov(0.1, 0.9)``) or a registered name with the
flat options ``inner_lr`` and ``momentum`` (what sweeps and records use). A new solver is one
file with an :class:`InnerSolver` subclass and a factory, plus its line in ``INNER_SOLVERS``.
"""

from __future__ import annotations

import inspect
from typing import Any

from metabench.solvers.inner.base import InnerAccess, InnerSolver, State
from metabench.solvers.inner.gd import GradientDescent, gradient_descent
from metabench.solvers.inner.nesterov import Nesterov, nesterov
from metabench.solvers.inner.newton_cg import NewtonCG, newton_cg

__all__ = [
    "INNER_SOLVERS",
    "GradientDescent",
    "InnerAccess",
    "InnerSolver",
    "Nesterov",
    "NewtonCG",
    "State",
    "gradient_descent",
    "make_inner_solver",
    "nesterov",
    "newton_cg",
]

#: name -> factory; the factory's keyword ``lr`` is the flat option ``inner_lr``, others keep their names.
INNER_SOLVERS = {"gd": gradient_descent, "nesterov": nesterov, "newton_cg": newton_cg}


def make_inner_solver(name: str, *, inner_lr: float, **options: Any) -> InnerSolver:
    """The registered solver ``name`` built from flat options; options its factory does not take are ignored
    (``momentum`` means nothing to plain gradient descent)."""
    if not isinstance(name, str) or name not in INNER_SOLVERS:
        raise ValueError(f"inner_solver must be one of {sorted(INNER_SOLVERS)} or an InnerSolver, got {name!r}")
    factory = INNER_SOLVERS[name]
    accepted = inspect.signature(factory).parameters
    return factory(lr=inner_lr, **{k: v for k, v in options.items() if k in accepted})

"""Linear solvers for (H + damping I) v = b from Hessian-vector products, one file each, registered by name.

``cg(iters, tol, damping)`` and ``neumann(iters, lr, damping)`` are the public factories (as TorchOpt's
``linear_solve``); ``conjugate_gradient`` and ``neumann_series`` are the algorithms on any batched
operator. A new solver is one file with a :class:`LinearSolver` subclass and a factory, plus its
line in ``LINEAR_SOLVERS``.
"""

from metabench.solvers.linear.base import LinearSolver, MatVec, per_task_dot
from metabench.solvers.linear.cg import ConjugateGradient, cg, conjugate_gradient
from metabench.solvers.linear.neumann import Neumann, neumann, neumann_series

__all__ = [
    "LINEAR_SOLVERS",
    "ConjugateGradient",
    "LinearSolver",
    "MatVec",
    "Neumann",
    "cg",
    "conjugate_gradient",
    "neumann",
    "neumann_series",
    "per_task_dot",
]

LINEAR_SOLVERS = {"cg": cg, "neumann": neumann}

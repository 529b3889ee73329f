"""metabench: benchmark and profiling harness for gradient-based meta-learning.

Problems (``metabench.problems``) give one bilevel shape with closed forms; algorithms
(``metabench.algorithms``) compute meta-gradients behind one interface::

    import torch, metabench
    problem = metabench.LinearMetaRegression.generate(n_tasks=4, dim=10, n_train=20, n_val=20,
                                                      kappa=100.0, lam=1.0, seed=0)
    theta = torch.zeros(10, dtype=torch.float64)
    hg = metabench.get_algorithm("imaml", inner_steps=200, inner_lr=0.01, cg_iters=10).hypergradient(problem, theta)
    error = (hg.grad - problem.exact_hypergradient(theta)).norm() / problem.exact_hypergradient(theta).norm()
"""

from importlib.metadata import PackageNotFoundError, version

from metabench.algorithms import Hypergradient, OracleCounts, available_algorithms, get_algorithm
from metabench.errors import DivergenceError, MetabenchError, SolverBreakdown
from metabench.problems import BilevelProblem, LinearMetaRegression, QuadraticBilevel
from metabench.train import TrainResult, train

try:
    __version__ = version("metabench")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "BilevelProblem",
    "DivergenceError",
    "Hypergradient",
    "LinearMetaRegression",
    "MetabenchError",
    "OracleCounts",
    "QuadraticBilevel",
    "SolverBreakdown",
    "TrainResult",
    "__version__",
    "available_algorithms",
    "get_algorithm",
    "train",
]

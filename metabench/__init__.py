"""metabench: benchmark and profiling harness for gradient-based meta-learning.

Problems (``metabench.problems``) give one bilevel shape with closed forms; algorithms
(``metabench.algorithms``) compute meta-gradients behind one interface::

    import torch, metabench
    problem = metabench.LinearMetaRegression.generate(n_tasks=4, dim=10, n_train=20, n_val=20,
                                                      kappa=100.0, lam=1.0, seed=0)
    theta = torch.zeros(10, dtype=torch.float64)
    hg = metabench.get_algorithm("imaml", inner_steps=200, inner_lr=0.01, cg_iters=10).hypergradient(problem, theta)
    error = (hg.grad - problem.exact_hypergradient(theta)).norm() / problem.exact_hypergradient(theta).norm()

The public names (``__all__``) are imported on first use (PEP 562), so ``import metabench`` (and the
``metabench`` command's ``--help``) does not import torch; a submodule (``metabench.results``,
``metabench.options``, ...) is likewise imported when first reached as an attribute.
"""

import importlib as _importlib
import importlib.util as _importlib_util
import pkgutil as _pkgutil
import sys as _sys
import types as _types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metabench")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

#: Each public name and the module it comes from, imported when first asked for.
_LAZY = {
    "Hypergradient": "metabench.algorithms",
    "OracleCounts": "metabench.algorithms",
    "available_algorithms": "metabench.algorithms",
    "get_algorithm": "metabench.algorithms",
    "DivergenceError": "metabench.errors",
    "MetabenchError": "metabench.errors",
    "SolverBreakdown": "metabench.errors",
    "BilevelProblem": "metabench.problems",
    "LinearMetaRegression": "metabench.problems",
    "QuadraticBilevel": "metabench.problems",
    "TrainResult": "metabench.train",
    "train": "metabench.train",
    "Verdict": "metabench.certify",
    "certify": "metabench.certify",
}

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
    "Verdict",
    "__version__",
    "available_algorithms",
    "certify",
    "get_algorithm",
    "train",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("__") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")  # a submodule: metabench.results, metabench.options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    submodules = {m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("__")}
    return sorted(set(globals()) | set(__all__) | submodules)


#: Submodules that share their name with the function they export: the package attribute stays the function.
_FUNCTION_MODULES = ("train", "certify")


class _Package(_types.ModuleType):
    """The package's module type: ``metabench.train`` and ``metabench.certify`` stay the functions.

    Importing the submodule ``metabench.train`` (as the sweep runner does) makes the import system bind
    the submodule on the package under the same name; this keeps the function there instead, as the eager
    ``from metabench.train import train`` of earlier versions did (``metabench.certify`` likewise).
    """

    def __setattr__(self, name: str, value) -> None:
        if (
            name in _FUNCTION_MODULES
            and isinstance(value, _types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            value = getattr(value, name, value)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

"""The registries of problems, models and task sources (data sets), each open to plugins by entry point.

- ``PROBLEMS`` (group ``metabench.problems``): ``BilevelProblem`` subclasses with a ``generate(seed=, dtype=,
  **params)`` classmethod; its keyword parameters, with their defaults, ARE the problem's sweep parameters (the
  sweep file, the CLI and the asv suites read them from there, :func:`problem_params`), and it checks them.
- ``MODELS`` (group ``metabench.models``): network factories for few-shot problems, called as
  ``factory(in_channels, n_out, *, image_size, filters, norm, seed, activation, pool, downsample)``; a factory
  may take fewer of the keywords by accepting ``**_``. ``model = "NAME"`` in a few-shot case picks one.
- ``DATASETS`` (group ``metabench.datasets``): task-source factories (:mod:`metabench.problems.task_sources`),
  called as ``factory(**params)`` or, where ``factory.needs_data_root``, ``factory(data_root, **params)``;
  ``dataset = "NAME"`` in a few-shot case picks one.

See :mod:`metabench.registry` for how plugins load (lazily; a failing one is reported, never fatal).
"""

from __future__ import annotations

import inspect
from typing import Any

from metabench.problems.base import BilevelProblem
from metabench.registry import Registry

__all__ = ["DATASETS", "MODELS", "PROBLEMS", "problem_params"]


def _check_problem(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, BilevelProblem)):
        raise TypeError(f"problem {name!r} must be a metabench BilevelProblem subclass, got {cls!r}")
    if not callable(getattr(cls, "generate", None)):
        raise TypeError(f"problem {name!r} ({cls.__qualname__}) needs a generate(seed=, dtype=, **params) classmethod")


def _check_callable(kind: str):
    def check(name: str, factory: Any) -> None:
        if not callable(factory):
            raise TypeError(f"{kind} {name!r} must be a callable factory, got {factory!r}")

    return check


PROBLEMS = Registry("problem", "metabench.problems", _check_problem)
MODELS = Registry("model", "metabench.models", _check_callable("model"))
DATASETS = Registry("dataset", "metabench.datasets", _check_callable("dataset"))


def problem_params(cls: type) -> dict[str, Any]:
    """A problem's sweep parameters and defaults: ``generate``'s keyword parameters but seed and dtype
    (``inspect.Parameter.empty`` marks one without a default, which a sweep must give)."""
    params = inspect.signature(cls.generate).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("seed", "dtype") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }

"""The one interface every algorithm implements, and the option checking they share.

An algorithm is a small class with a ``name``, the ``options`` it accepts (with defaults and
checks) and ``_compute``. ``Algorithm.hypergradient`` validates the call and dispatches.
The unrolled family (``unrolled.py``) and the implicit family (``implicit.py``) own the loops;
each algorithm file holds only what makes it different.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from metabench._checks import check_int, check_real
from metabench.algorithms.result import Hypergradient
from metabench.errors import DivergenceError
from metabench.problems.base import BilevelProblem
from metabench.solvers.inner import INNER_SOLVERS, run_inner_solver

__all__ = ["Algorithm", "Option"]


class Option:
    """An accepted option: its default and a check that returns the cleaned value or raises."""

    def __init__(self, default: Any, check: Callable[[str, Any], Any], doc: str = ""):
        self.default, self.check, self.doc = default, check, doc


def _inner_solver(name: str, value: Any) -> str:
    if not isinstance(value, str) or value not in INNER_SOLVERS:
        raise ValueError(f"{name} must be one of {sorted(INNER_SOLVERS)}, got {value!r}")
    return value


def _momentum(name: str, value: Any) -> float | None:
    return None if value is None else check_real(name, value, low=0.0, high=1.0)


INNER_OPTIONS: dict[str, Option] = {
    "inner_steps": Option(10, lambda n, v: check_int(n, v, low=0), "K, inner solver steps"),
    "inner_lr": Option(0.1, lambda n, v: check_real(n, v, low=0.0, low_open=True), "alpha, inner step size"),
    "inner_solver": Option("gd", _inner_solver, "'gd' or 'nesterov'"),
    "momentum": Option(None, _momentum, "Nesterov's beta; None for the k/(k+3) schedule"),
}


class Algorithm(ABC):
    """A hypergradient (meta-gradient) algorithm over a ``BilevelProblem``."""

    name: ClassVar[str]
    options_spec: ClassVar[dict[str, Option]] = INNER_OPTIONS
    stateful: ClassVar[bool] = False

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options_spec))
        if unknown:
            raise TypeError(
                f"{self.name} got unknown option(s) {unknown}; accepted options: {sorted(self.options_spec)}"
            )
        merged = {k: spec.default for k, spec in self.options_spec.items()} | options
        self.options = {k: self.options_spec[k].check(k, v) for k, v in merged.items()}
        self._check_options()

    def _check_options(self) -> None:  # noqa: B027  (an optional hook)
        """Checks across options (e.g. truncate <= inner_steps); raise ValueError."""

    def check_problem(self, problem: BilevelProblem) -> None:  # noqa: B027  (an optional hook)
        """Raise ValueError if this algorithm's formulation does not apply to ``problem``."""

    def differentiated_objective(self) -> dict | None:
        """Keyword arguments of ``problem.exact_algorithm_gradient`` that give exactly what this
        algorithm computes (K GD steps, back-prop through the last T), or None if it is not such a derivative."""
        return None

    def __getattr__(self, key: str) -> Any:
        options = self.__dict__.get("options", {})
        if key in options:
            return options[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    # ------------------------------------------------------------------ the one call
    def hypergradient(self, problem: BilevelProblem, theta: torch.Tensor, tasks=None, state=None) -> Hypergradient:
        """The meta-gradient d/dtheta mean_i f_i(theta, phi_i) for the tasks in ``tasks`` (all if None).

        Raises ``ValueError``/``TypeError`` for bad input, ``DivergenceError`` if the result
        is not finite, ``SolverBreakdown`` if a linear solve meets non-positive curvature.
        """
        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"problem must be a metabench BilevelProblem, got {type(problem).__name__}")
        problem.check_theta(theta)
        index = problem.task_index(tasks)
        if state is not None and not self.stateful:
            raise ValueError(f"{self.name} is stateless: pass state=None (got {type(state).__name__})")
        self.check_problem(problem)
        result = self._compute(problem, theta.detach(), index, state)
        if not bool(torch.isfinite(result.grad).all()):
            raise DivergenceError(f"{self.name} produced a non-finite hypergradient")
        return result

    @abstractmethod
    def _compute(self, problem: BilevelProblem, theta: torch.Tensor, tasks: torch.Tensor, state) -> Hypergradient:
        """The algorithm proper; ``theta`` is detached, ``tasks`` a validated index tensor."""

    # ------------------------------------------------------------------ shared pieces
    def _run_inner(self, problem, theta, phi0, tasks, backprop_steps: int) -> torch.Tensor:
        """phi_K from phi0 with the configured inner solver, tracked through the last ``backprop_steps``."""

        def grad_fn(phi: torch.Tensor, track: bool) -> torch.Tensor:
            if track:
                phi_in = phi if phi.requires_grad else phi.detach().requires_grad_()
                loss = problem.inner_loss(theta, phi_in, tasks).sum()
                return torch.autograd.grad(loss, phi_in, create_graph=True)[0]
            phi_in = phi.detach().requires_grad_()
            loss = problem.inner_loss(theta.detach(), phi_in, tasks).sum()
            return torch.autograd.grad(loss, phi_in)[0]

        with torch.enable_grad():
            return run_inner_solver(
                self.inner_solver, grad_fn, phi0, self.inner_steps, self.inner_lr, backprop_steps, self.momentum
            )

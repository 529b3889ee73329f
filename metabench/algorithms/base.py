"""The one interface every algorithm implements, and the option checking they share.

An algorithm is a small class with a ``name``, the ``options`` it accepts (with defaults and
checks) and ``_compute``. ``Algorithm.hypergradient`` validates the call and dispatches.
The unrolled family (``unrolled.py``) and the implicit family (``implicit.py``) own the loops;
each algorithm file holds only what makes it different.

Every algorithm takes ``task_chunk``: the tasks of a call are differentiated ``task_chunk`` at a time,
one autograd graph per chunk, and the meta-gradient is accumulated as the task-weighted mean
grad = sum_j (n_j / n) grad_j over the chunks j (n_j tasks each). A whole batch in one graph is
fastest on small problems (few large kernels); one task per graph is what researchers' MAML loops do
on networks and bounds the peak memory by one task's graph. None takes the problem's
``default_task_chunk`` (all tasks for the closed-form problems, one for the few-shot networks on
the loop path: chosen by measurement, see ``reports/peers``).
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


def _task_chunk(name: str, value: Any) -> int | None:
    return None if value is None else check_int(name, value, low=1)


INNER_OPTIONS: dict[str, Option] = {
    "inner_steps": Option(10, lambda n, v: check_int(n, v, low=0), "K, inner solver steps"),
    "inner_lr": Option(0.1, lambda n, v: check_real(n, v, low=0.0, low_open=True), "alpha, inner step size"),
    "inner_solver": Option("gd", _inner_solver, "'gd' or 'nesterov'"),
    "momentum": Option(None, _momentum, "Nesterov's beta; None for the k/(k+3) schedule"),
    "task_chunk": Option(None, _task_chunk, "tasks per autograd graph; None: the problem's default_task_chunk"),
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
        chunk = self.resolved_task_chunk(problem, theta, len(index))
        if chunk >= len(index):
            result = self._compute(problem, theta.detach(), index, state)
        else:
            result = self._accumulate(problem, theta, index, state, chunk)
        result.info["task_chunk"] = chunk
        if not bool(torch.isfinite(result.grad).all()):
            raise DivergenceError(f"{self.name} produced a non-finite hypergradient")
        return result

    def resolved_task_chunk(self, problem: BilevelProblem, theta: torch.Tensor, n_tasks: int) -> int:
        """Tasks per autograd graph for a call on ``n_tasks`` tasks (``task_chunk`` or the problem's default)."""
        chunk = self.task_chunk if self.task_chunk is not None else problem.default_task_chunk(theta)
        return n_tasks if chunk is None else min(int(chunk), n_tasks)

    def _accumulate(self, problem, theta, index: torch.Tensor, state, chunk: int) -> Hypergradient:
        """The call on consecutive chunks of ``index``, one graph at a time: grad = sum_j (n_j/n) grad_j.

        Oracle counts add up, phi is stacked back in task order, a stateful algorithm's state is
        threaded through the chunks, and a numeric ``info`` entry keeps its largest value over chunks.
        """
        n = len(index)
        grad = torch.zeros_like(theta)
        counts, phis, info = None, [], {}
        for part in index.split(chunk):
            result = self._compute(problem, theta.detach(), part, state)
            grad += result.grad * (len(part) / n)
            counts = result.counts if counts is None else counts + result.counts
            phis.append(result.phi)
            state = result.state
            for key, value in result.info.items():
                info[key] = max(info[key], value) if isinstance(value, (int, float)) and key in info else value
            del result
        return Hypergradient(grad=grad, counts=counts, phi=torch.cat(phis), tasks=index, state=state, info=info)

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

"""The one interface every algorithm implements: options, components, and the counted call.

An algorithm is a small class with a ``name``, the ``options_spec`` it accepts (typed once in
``metabench.options``) and ``_compute``. ``Algorithm.hypergradient`` validates the call, gives
``_compute`` an :class:`~metabench.oracle.Oracle` (the only way to the problem: whatever it performs is
counted) and assembles the result; the counts in a :class:`Hypergradient` are the oracle's, never a
formula. The unrolled family (``unrolled.py``) and the implicit family (``implicit.py``) own the loops;
each algorithm file holds only what makes it different.

Components: ``self.inner`` is the inner solver (an :class:`~metabench.solvers.InnerSolver`), built from
``inner_solver`` (a registered name, with the flat options ``inner_lr`` and ``momentum``, or an instance,
whose own options then rule: giving both is an error).

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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from metabench.algorithms.compiled_step import compiled_inner_loss
from metabench.algorithms.inner_loop import run_inner_loop
from metabench.algorithms.result import Hypergradient
from metabench.errors import DivergenceError
from metabench.options import Option, check_options, pick
from metabench.oracle import Oracle, OracleCounts
from metabench.problems.base import BilevelProblem
from metabench.solvers import InnerSolver, make_inner_solver

__all__ = ["INNER_OPTIONS", "Algorithm", "Computed", "Option"]

#: The options every algorithm takes.
INNER_OPTIONS = pick(
    "inner_steps", "inner_lr", "inner_solver", "momentum", "task_chunk", "features", "compile", "newton_cg_iters"
)


@dataclass
class Computed:
    """What ``_compute`` returns for the tasks of one oracle: the mean meta-gradient over them, phi_K, state, info."""

    grad: torch.Tensor
    phi: torch.Tensor
    state: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def _conflicts(given: dict[str, Any], component_options: dict[str, Any], keys) -> dict[str, tuple]:
    return {k: (given[k], component_options[k]) for k in keys if k in given and given[k] != component_options.get(k)}


class Algorithm(ABC):
    """A hypergradient (meta-gradient) algorithm over a ``BilevelProblem``."""

    name: ClassVar[str]
    options_spec: ClassVar[dict[str, Option]] = INNER_OPTIONS
    stateful: ClassVar[bool] = False
    #: False for an update rule that is not a (possibly approximate) gradient of the meta-objective (reptile)
    is_hypergradient: ClassVar[bool] = True

    def __init__(self, **options: Any):
        self.options = check_options(self.name, self.options_spec, options)
        self._given = dict(options)
        self._check_options()
        self.inner = self._build_inner_solver()
        self._check_inner()

    def _build_inner_solver(self) -> InnerSolver:
        chosen = self.options["inner_solver"]
        if isinstance(chosen, InnerSolver):
            clash = _conflicts(self._given, chosen.options, ("inner_lr", "momentum"))
            if clash:
                detail = ", ".join(f"{k}={a!r} vs the instance's {b!r}" for k, (a, b) in clash.items())
                raise ValueError(f"{self.name}: give the inner solver's options once, not twice ({detail})")
            return chosen
        return make_inner_solver(
            chosen,
            inner_lr=self.options["inner_lr"],
            momentum=self.options["momentum"],
            newton_cg_iters=self.options["newton_cg_iters"],
        )

    def _check_inner(self) -> None:  # noqa: B027  (an optional hook)
        """Checks of the built inner solver against the algorithm; raise ValueError."""

    def _check_options(self) -> None:  # noqa: B027  (an optional hook)
        """Checks across options (e.g. truncate <= inner_steps); raise ValueError."""

    def check_problem(self, problem: BilevelProblem) -> None:  # noqa: B027  (an optional hook)
        """Raise ValueError if this algorithm's formulation does not apply to ``problem``."""

    def differentiated_objective(self) -> dict | None:
        """Keyword arguments of ``problem.exact_algorithm_gradient`` that give exactly what this
        algorithm computes (K GD steps, back-prop through the last T), or None if it is not such a derivative."""
        return None

    def describe(self) -> dict[str, Any]:
        """The options as flat, JSON-friendly record fields: components expanded into their own options."""
        flat = {k: v for k, v in self.options.items() if not hasattr(v, "options")}
        return flat | self.inner.options

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

        Raises ``ValueError``/``TypeError`` for bad input, ``DivergenceError`` if the inner loop or the
        result diverged, ``SolverBreakdown`` if a linear solve meets non-positive curvature.
        """
        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"problem must be a metabench BilevelProblem, got {type(problem).__name__}")
        problem.check_theta(theta)
        index = problem.task_index(tasks)
        if state is not None and not self.stateful:
            raise ValueError(f"{self.name} is stateless: pass state=None (got {type(state).__name__})")
        self.check_problem(problem)
        chunk = self.resolved_task_chunk(problem, theta, len(index))
        features = self.features_form(problem)
        result = self._accumulate(problem, theta.detach(), index, state, chunk, features == "once")
        result.info["task_chunk"] = chunk
        result.info["features"] = features
        result.info.update(self._compile_info(problem, theta, result.info.pop("_compiled_used", False)))
        if not bool(torch.isfinite(result.grad).all()):
            raise DivergenceError(f"{self.name} produced a non-finite hypergradient")
        return result

    def resolved_task_chunk(self, problem: BilevelProblem, theta: torch.Tensor, n_tasks: int) -> int:
        """Tasks per autograd graph for a call on ``n_tasks`` tasks (``task_chunk`` or the problem's default)."""
        chunk = self.task_chunk if self.task_chunk is not None else problem.default_task_chunk(theta)
        return n_tasks if chunk is None else min(int(chunk), n_tasks)

    def features_form(self, problem: BilevelProblem) -> str | None:
        """What ``features`` means on ``problem``: "once" or "recompute" where it has a feature head, None where
        it has none (the option does not apply; "once" there is an error)."""
        if not problem.has_feature_head:
            if self.features == "once":
                form = getattr(problem, "formulation", problem.family)
                raise ValueError(
                    f"{self.name}: features='once' needs a problem whose phi is a head on theta's features "
                    f"(has_feature_head); {type(problem).__name__} ({form}) has none: use features='auto'"
                    " or 'recompute'"
                )
            return None
        return "recompute" if self.features == "recompute" else "once"

    def _compile_info(self, problem, theta: torch.Tensor, used: bool) -> dict[str, Any]:
        """``compile`` and ``compile_s`` of a result (``compiled_step.py``): what ran for the untracked inner
        gradients."""
        if self.compile == "off":
            return {"compile": "off", "compile_s": None}
        if not used:
            return {"compile": "unused", "compile_s": None}
        compiled = compiled_inner_loss(problem)
        status = compiled.status(theta.dtype) or "eager: ran under a TorchDispatchMode (e.g. the memory tracker)"
        return {"compile": status, "compile_s": compiled.compile_s.get(theta.dtype)}

    def _on_features(self, problem, theta, part: torch.Tensor, state):
        """``_compute`` on the head's problem at the features of ``part``, then one backward through the backbone:
        grad_theta = (dz/dtheta)' grad_z (``metabench.problems.few_shot.head``). Returns (Computed, counts)."""
        theta_in = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            head = problem.feature_head(theta_in, part)
        oracle = Oracle(head, part)
        out = self._compute(oracle, head.features.detach().reshape(-1), state)
        (grad,) = torch.autograd.grad(head.features, theta_in, grad_outputs=out.grad.view_as(head.features))
        out.grad = grad.detach()
        return out, oracle.counts

    def _accumulate(self, problem, theta, index: torch.Tensor, state, chunk: int, once: bool = False) -> Hypergradient:
        """``_compute`` on consecutive chunks of ``index``, one oracle and graph at a time: grad = sum_j (n_j/n) grad_j.
        With ``once``, each chunk's computation runs on its features (:meth:`_on_features`).

        The counts are the oracles' (summed), phi is stacked back in task order, a stateful algorithm's state
        is threaded through the chunks, and a numeric ``info`` entry keeps its largest value over chunks.
        """
        n = len(index)
        parts = index.split(chunk) if chunk < n else (index,)
        grad, counts, phis, info = None, OracleCounts(), [], {}
        for part in parts:
            if once:
                out, used = self._on_features(problem, theta, part, state)
            else:
                compiled = compiled_inner_loss(problem) if self.compile == "on" else None
                oracle = Oracle(problem, part, compiled)
                out = self._compute(oracle, theta, state)
                used = oracle.counts
                info["_compiled_used"] = info.get("_compiled_used", False) or oracle.compiled_used
            weighted = out.grad if len(parts) == 1 else out.grad * (len(part) / n)
            grad = weighted if grad is None else grad + weighted
            counts = counts + used
            phis.append(out.phi)
            state = out.state
            for key, value in out.info.items():
                info[key] = max(info[key], value) if isinstance(value, (int, float)) and key in info else value
            del out
        phi = phis[0] if len(phis) == 1 else torch.cat(phis)
        return Hypergradient(grad=grad.detach(), counts=counts, phi=phi, tasks=index, state=state, info=info)

    @abstractmethod
    def _compute(self, oracle: Oracle, theta: torch.Tensor, state) -> Computed:
        """The algorithm proper on the tasks of ``oracle``; ``theta`` is detached."""

    # ------------------------------------------------------------------ shared pieces
    def _run_inner(self, oracle: Oracle, theta: torch.Tensor, phi0: torch.Tensor, backprop_steps: int):
        """phi_K from phi0 with the inner solver, tracked through the last ``backprop_steps`` steps."""
        return run_inner_loop(oracle, theta, phi0, self.inner, self.inner_steps, backprop_steps)

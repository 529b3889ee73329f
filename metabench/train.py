"""Meta-training: outer steps theta_{t+1} = Opt(theta_t, hypergradient(theta_t)), with the trajectory.

The trajectory records, per outer step t = 0..T, the exact meta-objective F(theta_t) where the
problem has one (``meta_objective``), the norm of the exact hypergradient (``exact_hypergradient``),
the norm of the estimate used, cumulative oracle counts and cumulative wall time of the
hypergradient calls. A stateful algorithm (rm_metal) receives its own state back at every step.

A run that diverges stops there and says so: ``status`` is ``"diverged"`` and ``error`` the reason
when a hypergradient raised ``DivergenceError`` (an inner loop or the result blew up), when theta
stopped being finite, or when the exact objective or gradient did; the lists then end at that step.
Otherwise ``status`` is ``"ok"``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from metabench._checks import check_int, check_real
from metabench.algorithms import Algorithm, OracleCounts, get_algorithm
from metabench.errors import DivergenceError
from metabench.problems.base import BilevelProblem

__all__ = ["TrainResult", "train"]

_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass
class TrainResult:
    """Trajectory of a meta-training run; list entries are indexed by outer step t = 0..outer_steps."""

    theta: torch.Tensor
    objective: list[float | None] = field(default_factory=list)
    exact_grad_norm: list[float | None] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # t = 0..outer_steps-1
    counts: list[OracleCounts] = field(default_factory=list)  # cumulative, t = 1..outer_steps
    wall_time: list[float] = field(default_factory=list)  # cumulative seconds, t = 1..outer_steps
    state: object = None
    status: str = "ok"  # or "diverged" (the run stopped at the step named in ``error``)
    error: str | None = None


def _exact(problem: BilevelProblem, theta: torch.Tensor) -> tuple[float | None, float | None]:
    """(F(theta), ||grad F(theta)||) where the problem has them; None where it has no closed form.
    Raises ``DivergenceError`` where a closed form is not finite at this theta."""
    objective = getattr(problem, "meta_objective", None)
    hypergrad = getattr(problem, "exact_hypergradient", None)
    try:
        f = float(objective(theta)) if objective else None
        g = float(hypergrad(theta).norm()) if hypergrad else None
    except ValueError:  # no closed form for this instance (e.g. lam = 0)
        return None, None
    for name, value in (("F(theta)", f), ("||grad F(theta)||", g)):
        if value is not None and not math.isfinite(value):
            raise DivergenceError(f"the exact {name} is {value}")
    return f, g


def train(
    problem: BilevelProblem,
    algorithm: Algorithm | str,
    theta0: torch.Tensor,
    outer_steps: int,
    outer_lr: float,
    optimizer: str = "sgd",
    *,
    tasks=None,
    **options,
) -> TrainResult:
    """Run ``outer_steps`` meta-updates of theta from ``theta0`` with ``optimizer`` ("sgd" or "adam").

    ``algorithm`` is an ``Algorithm`` or a registered name (then ``options`` are its options).
    Every step uses the tasks in ``tasks`` (all when None): the run is deterministic.
    """
    if isinstance(algorithm, str):
        algorithm = get_algorithm(algorithm, **options)
    elif options:
        raise TypeError("options are only accepted with an algorithm name, not an Algorithm instance")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm or a name, got {type(algorithm).__name__}")
    outer_steps = check_int("outer_steps", outer_steps, low=0)
    outer_lr = check_real("outer_lr", outer_lr, low=0.0, low_open=True)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    problem.check_theta(theta0)

    theta = theta0.detach().clone().requires_grad_(True)
    opt = _OPTIMIZERS[optimizer]([theta], lr=outer_lr)
    result = TrainResult(theta=theta)
    total, elapsed, state = OracleCounts(), 0.0, None
    for t in range(outer_steps + 1):
        try:
            f, g = _exact(problem, theta.detach())
        except DivergenceError as err:
            result.status, result.error = "diverged", f"exact objective at outer step {t}: {err}"
            break
        result.objective.append(f)
        result.exact_grad_norm.append(g)
        if t == outer_steps:
            break
        start = time.perf_counter()
        try:
            hg = algorithm.hypergradient(problem, theta.detach(), tasks=tasks, state=state)
        except DivergenceError as err:
            result.status, result.error = "diverged", f"hypergradient at outer step {t}: DivergenceError: {err}"
            break
        elapsed += time.perf_counter() - start
        state = hg.state
        total = total + hg.counts
        result.grad_norm.append(float(hg.grad.norm()))
        result.counts.append(total)
        result.wall_time.append(elapsed)
        opt.zero_grad(set_to_none=True)
        theta.grad = hg.grad.to(theta)
        opt.step()
        if not bool(torch.isfinite(theta).all()):
            result.status, result.error = "diverged", f"theta is not finite after outer step {t}"
            break
    result.theta = theta.detach()
    result.state = state
    return result

"""The contract every problem keeps (``base.BilevelProblem``), checked on a generated instance before it is used.

For theta of ``theta_shape`` (the problem's ``initial_theta`` where it has one, zeros otherwise) and the first
tasks (at most 2): ``theta_shape``/``phi_shape`` are tuples of positive ints, ``n_tasks`` >= 1, ``family`` one of
``base.FAMILIES``; ``inner_init(theta, tasks)`` has shape (n, *phi_shape); ``inner_loss`` and ``outer_loss`` are
finite tensors of shape (n,), one value per task (not a scalar, not a matrix); ``inner_loss`` is differentiable in
phi. A problem that breaks it raises :class:`ProblemContractError` naming the problem and what broke, so a
plugin's mistake is a record that says so, not a wrong number later.
"""

from __future__ import annotations

import torch

from metabench.errors import MetabenchError
from metabench.problems.base import FAMILIES

__all__ = ["ProblemContractError", "check_contract"]


class ProblemContractError(MetabenchError):
    """A problem does not keep the shape every algorithm relies on (the message names it and what broke)."""


def _shape(value) -> bool:
    return isinstance(value, tuple) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)


def check_contract(problem, name: str | None = None) -> None:
    """Raise ``ProblemContractError`` unless ``problem`` keeps the contract (module docstring)."""
    name = name or type(problem).__name__

    def broken(what: str) -> ProblemContractError:
        return ProblemContractError(f"problem {name!r} ({type(problem).__qualname__}) breaks the contract: {what}")

    for attr in ("theta_shape", "phi_shape"):
        if not _shape(getattr(problem, attr, None)):
            raise broken(f"{attr} must be a tuple of positive ints, got {getattr(problem, attr, None)!r}")
    n_tasks = getattr(problem, "n_tasks", None)
    if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
        raise broken(f"n_tasks must be an int >= 1, got {n_tasks!r}")
    if getattr(problem, "family", None) not in FAMILIES:
        raise broken(f"family must be one of {list(FAMILIES)}, got {getattr(problem, 'family', None)!r}")
    initial = getattr(problem, "initial_theta", None)
    theta = initial() if callable(initial) else torch.zeros(problem.theta_shape, dtype=problem.dtype)
    if tuple(theta.shape) != problem.theta_shape:
        raise broken(f"initial_theta() has shape {tuple(theta.shape)}, theta_shape is {problem.theta_shape}")
    tasks = problem.task_index(list(range(min(2, n_tasks))))
    n = len(tasks)
    phi0 = problem.inner_init(theta, tasks)
    expected = (n, *problem.phi_shape)
    if not isinstance(phi0, torch.Tensor) or tuple(phi0.shape) != expected:
        got = tuple(phi0.shape) if isinstance(phi0, torch.Tensor) else type(phi0).__name__
        raise broken(f"inner_init(theta, tasks) for {n} tasks must have shape {expected}, got {got}")
    phi = phi0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        for loss_name in ("inner_loss", "outer_loss"):
            value = getattr(problem, loss_name)(theta, phi, tasks)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise broken(f"{loss_name}(theta, phi, tasks) must give one value per task, shape ({n},); got {got}")
            if not bool(torch.isfinite(value).all()):
                raise broken(f"{loss_name} is not finite at the initial theta: {value.detach().tolist()}")
            if loss_name == "inner_loss":
                if not value.requires_grad:
                    raise broken("inner_loss does not depend on phi differentiably (no autograd graph to phi)")
                (grad,) = torch.autograd.grad(value.sum(), phi, allow_unused=True)
                if grad is None:
                    raise broken("inner_loss does not depend on phi (its gradient in phi is missing)")

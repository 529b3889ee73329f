"""What a linear solver is: approximately H^-1 b per task, from Hessian-vector products alone.

``solve(matvec, b, x0)`` solves (H + damping I) x = b for every task at once: ``matvec(v)`` returns
H_i v_i for each task i (v has a leading task dimension), inner products and step sizes are per
task, so each task runs its own solver in lock-step. ``matvec`` is the oracle's counted
Hessian-vector product: the solver does not count, the oracle does. ``damping`` (delta >= 0,
Tikhonov) belongs to every solver: delta = 0 solves the system itself, delta > 0 the damped one
(well-posed where H is indefinite, biased by O(delta)).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from metabench._checks import check_real

__all__ = ["LinearSolver", "MatVec", "per_task_dot"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def per_task_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-task inner product <a_i, b_i>, shaped to broadcast against a task-batched tensor."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


class LinearSolver(ABC):
    """(H + damping I) x = b per task, from products with H."""

    name: ClassVar[str]

    def __init__(self, damping: float = 0.0):
        self.damping = check_real("damping", damping, low=0.0)

    def solve(self, matvec: MatVec, b: torch.Tensor, x0: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """x ~ (H + damping I)^-1 b from ``x0`` (None: the solver's own start); returns (x, info)."""
        if self.damping:
            plain, delta = matvec, self.damping

            def matvec(u: torch.Tensor) -> torch.Tensor:
                return plain(u) + delta * u

        return self._solve(matvec, b, x0)

    @abstractmethod
    def _solve(self, matvec: MatVec, b: torch.Tensor, x0: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The solver proper on the (damped) operator."""

    @property
    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The solver's options as flat, JSON-friendly record fields (e.g. cg_iters, cg_tol, damping)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.options == self.options

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.options.items()))))

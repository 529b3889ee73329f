"""What one hypergradient call returns: the gradient, its oracle counts, and carried state."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["Hypergradient", "OracleCounts"]


@dataclass(frozen=True)
class OracleCounts:
    """Oracle calls of one hypergradient, summed over the tasks of the call.

    - ``inner_grads``: gradients grad_phi g_i (one per inner step and task, plus the one at
      phi_K whose graph the implicit methods differentiate for their Hessian-vector products);
    - ``outer_grads``: gradients of f_i (one backward gives grad_theta f_i and grad_phi f_i);
    - ``hvps``: second-order products through the inner gradient: Hessian-vector products
      d2g/dphi2 v of a linear solver, and one per reverse step of back-prop through an inner
      step (that backward yields the d2g/dphi2 and d2g/(dtheta dphi) products together);
    - ``jvps``: mixed products d2g/(dtheta dphi) v taken in a pass of their own (the AID identity).
    """

    inner_grads: int = 0
    outer_grads: int = 0
    hvps: int = 0
    jvps: int = 0

    def __add__(self, other: OracleCounts) -> OracleCounts:
        return OracleCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.inner_grads, self.outer_grads, self.hvps, self.jvps)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Hypergradient:
    """Result of ``Algorithm.hypergradient``.

    ``grad`` has theta's shape (mean over the tasks of the call), ``phi`` is phi_K stacked
    over those tasks (detached), ``state`` is what a stateful algorithm carries to the next
    outer step (None for the stateless ones), ``info`` holds solver details.
    """

    grad: torch.Tensor
    counts: OracleCounts
    phi: torch.Tensor
    tasks: torch.Tensor
    state: Any = None
    info: dict[str, Any] = field(default_factory=dict)

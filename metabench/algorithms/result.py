"""What one hypergradient call returns: the gradient, its oracle counts, and carried state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from metabench.oracle import OracleCounts

__all__ = ["Hypergradient", "OracleCounts"]


@dataclass
class Hypergradient:
    """Result of ``Algorithm.hypergradient``.

    ``grad`` has theta's shape (mean over the tasks of the call), ``counts`` are the oracle calls the
    computation performed (counted by :class:`~metabench.oracle.Oracle`, summed over tasks), ``phi`` is
    phi_K stacked over those tasks (detached), ``state`` is what a stateful algorithm carries to the next
    outer step (None for the stateless ones), ``info`` holds solver details.
    """

    grad: torch.Tensor
    counts: OracleCounts
    phi: torch.Tensor
    tasks: torch.Tensor
    state: Any = None
    info: dict[str, Any] = field(default_factory=dict)

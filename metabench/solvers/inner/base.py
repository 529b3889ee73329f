"""What an inner solver is: a state, a start and one step on g(theta, .), nothing else.

An inner solver runs K steps on the inner objective g(theta, .) from phi0. It is written as a
step function over a tuple of tensors, ``state_{k+1} = step(inner, k, state_k)`` with
``state[0]`` the iterate phi_k, so that every engine can drive it the same way: the unrolled
engine back-propagates through the last T steps, the implicit engine runs them without a graph,
``maml_checkpointed`` recomputes segments of steps from stored states. The solver reaches the
problem only through ``inner`` (an :class:`InnerAccess`, counted by the oracle), so whatever it
evaluates is counted without being declared.

A solver whose step is a deterministic function of ``(theta, k, state)`` alone says so with
``checkpointable = True``; one that keeps hidden state between steps must set it False, and
``maml_checkpointed`` refuses it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import torch

__all__ = ["InnerAccess", "InnerSolver", "State"]

State = tuple[torch.Tensor, ...]


class InnerAccess(Protocol):
    """The inner objective as a solver sees it during one run (batched over the tasks of the call)."""

    def grad(self, phi: torch.Tensor) -> torch.Tensor:
        """grad_phi g_i(theta, phi_i), stacked over tasks (differentiable when the engine tracks the step)."""

    def hvp(self, phi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """d2g_i/dphi2 (phi_i) u_i, stacked over tasks."""

    def linearize(self, phi: torch.Tensor):
        """The inner gradient at phi kept with its graph: ``.loss``, ``.grad`` and ``.hvp(u)`` (one inner gradient,
        one product per ``hvp``); for solvers that take several products at one point."""

    def value(self, phi: torch.Tensor) -> torch.Tensor:
        """g_i(theta, phi_i), stacked over tasks (counted as an inner gradient: the oracle computes both)."""


class InnerSolver(ABC):
    """K steps on g(theta, .) from phi0; ``options`` describe it in records (JSON-friendly)."""

    name: ClassVar[str]
    #: whether ``step`` depends on (theta, k, state) alone, so that a segment of steps can be recomputed
    checkpointable: ClassVar[bool] = True
    #: whether its steps can be back-propagated (False for a solver that takes Hessian-vector products)
    differentiable: ClassVar[bool] = True

    @abstractmethod
    def init(self, phi0: torch.Tensor) -> State:
        """The state before step 0; ``state[0]`` is phi0 itself (not a copy: its graph to theta matters)."""

    @abstractmethod
    def step(self, inner: InnerAccess, k: int, state: State) -> State:
        """State k+1 from state k."""

    @property
    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The solver's name and options as flat, JSON-friendly record fields (e.g. inner_solver, inner_lr)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.options == self.options

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.options.items()))))

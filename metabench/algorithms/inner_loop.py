"""The loop that drives an inner solver: K steps from phi0, differentiable through the last T, watched.

``run_inner_loop`` runs ``solver.step`` K times; steps before K - T run untracked (their inner
gradients carry no graph and the state is detached at step K - T, so phi_{K-T} is held constant:
truncated back-prop), T = K keeps the dependence of phi0 on theta, T = 0 runs the whole loop without
a graph. The solver reaches the problem through an :class:`InnerRun`, which calls the oracle (so every
gradient it takes is counted) and watches the run.

**Divergence.** A run has diverged, and ``DivergenceError`` says so, when phi_K is not finite, or when
the inner objective grew: for some task, the last evaluated g_i exceeds the first, g_i(phi_0), by more
than ``GROWTH_FACTOR`` x s_i, with the scale s_i = |g_i(phi_0)| + lr ||grad g_i(phi_0)||^2 (lr ||grad||^2
is the decrease one gradient step of size lr promises; it keeps the scale meaningful where
g_i(phi_0) = 0). A converging solver never ends above its start by that much, while a step size beyond
2/L grows g geometrically and crosses it within a few steps: without this check such a run returns a
huge but finite meta-gradient (5e47 was once stored as "ok").
"""

from __future__ import annotations

import torch

from metabench.errors import DivergenceError
from metabench.oracle import Oracle
from metabench.solvers.inner import InnerSolver, State

__all__ = ["GROWTH_FACTOR", "InnerRun", "run_inner_loop"]

#: the inner objective may end at most this many scales above its start (module docstring)
GROWTH_FACTOR = 1.0


class InnerRun:
    """The inner objective as one run of a solver sees it (an ``InnerAccess``), counted and watched."""

    def __init__(self, oracle: Oracle, theta: torch.Tensor, solver: InnerSolver):
        self.oracle, self.theta, self.solver = oracle, theta, solver
        self.track = False
        self.first_loss: torch.Tensor | None = None
        self.first_grad_sq: torch.Tensor | None = None
        self.last_loss: torch.Tensor | None = None

    def grad(self, phi: torch.Tensor) -> torch.Tensor:
        loss, grad = self.oracle.inner_grad(self.theta, phi, differentiable=self.track)
        if self.first_loss is None:
            self.first_loss = loss
            self.first_grad_sq = grad.detach().flatten(1).pow(2).sum(1)
        self.last_loss = loss
        return grad

    def value(self, phi: torch.Tensor) -> torch.Tensor:
        loss, _ = self.oracle.inner_grad(self.theta, phi)
        self.last_loss = loss
        return loss

    def linearize(self, phi: torch.Tensor):
        """The inner gradient at phi with its graph (one counted inner gradient), for products with the inner
        Hessian there (``.loss``, ``.grad``, ``.hvp(u)``, each product counted)."""
        if self.track:
            raise NotImplementedError(
                f"inner solver {self.solver.name!r} takes Hessian-vector products, and back-propagating through "
                "them is not supported: use it where its steps are not differentiated (implicit algorithms)"
            )
        at = self.oracle.linearize(self.theta, phi)
        if self.first_loss is None:
            self.first_loss = at.loss
            self.first_grad_sq = at.grad.detach().flatten(1).pow(2).sum(1)
        self.last_loss = at.loss
        return at

    def hvp(self, phi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.linearize(phi).hvp(u)

    def check(self, phi: torch.Tensor, steps: int) -> None:
        """Raise ``DivergenceError`` if phi is not finite or the inner objective grew (module docstring)."""
        lr = getattr(self.solver, "lr", None)
        where = f"after {steps} steps of {self.solver!r}"
        if not bool(torch.isfinite(phi).all()):
            hint = " (GD on an L-smooth inner problem needs inner_lr < 2/L)" if lr is not None else ""
            raise DivergenceError(f"inner solver diverged: phi is not finite {where}{hint}")
        if self.first_loss is None:
            return
        first, last = self.first_loss, self.last_loss
        scale = first.abs() + (lr or 0.0) * self.first_grad_sq.to(first)
        grew = ~(last - first <= GROWTH_FACTOR * scale)  # NaN counts as grown
        if bool(grew.any()):
            i = int(grew.nonzero()[0, 0])
            raise DivergenceError(
                f"inner solver diverged: the inner objective of task {int(self.oracle.tasks[i])} grew from "
                f"{float(first[i]):.6g} to {float(last[i]):.6g} {where}"
                + (" (GD on an L-smooth inner problem needs inner_lr < 2/L)" if lr is not None else "")
            )


def run_inner_loop(
    oracle: Oracle, theta: torch.Tensor, phi0: torch.Tensor, solver: InnerSolver, steps: int, backprop_steps: int
) -> torch.Tensor:
    """phi_K after ``steps`` solver steps from ``phi0``, differentiable through the last ``backprop_steps``."""
    if steps == 0:  # phi_K = phi0, as a tensor of its own (phi0 may be a view of theta)
        return phi0.clone()
    start = steps - backprop_steps
    run = InnerRun(oracle, theta, solver)
    with torch.enable_grad():
        state: State = solver.init(phi0 if start == 0 else phi0.detach())
        for k in range(steps):
            if k == start and start > 0:
                state = tuple(s.detach() for s in state)
            run.track = k >= start
            state = solver.step(run, k, state)
    phi = state[0]
    run.check(phi, steps)
    return phi

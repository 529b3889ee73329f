"""RM-MetaL (Yang, Ma & Yu 2024, "Memory-Reduced Meta-Learning with Guaranteed Convergence"),
Algorithm 1 with Subroutine 1: AID with CG, warm-started across outer steps.

At outer step t, for each task i of the call: K inner steps start from phi_K,i of the last step
that saw task i (phi0 the first time); then ``cg_iters`` CG iterations on d2g_i/dphi2 v_i =
grad_phi f_i start from that step's v_i (0 the first time); grad = mean_i [grad_theta f_i -
d2g_i/(dtheta dphi) v_i]. No history of inner iterates is kept: memory is flat in K, and the
warm starts let few inner steps and CG iterations track the moving solution.
``.state`` carries (phi, v) per task; pass it back on the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metabench.algorithms.base import INNER_OPTIONS, Option
from metabench.algorithms.imaml import CG_OPTIONS
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import register
from metabench.solvers.linear import conjugate_gradient

__all__ = ["RMMetaL", "WarmStartState"]


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class WarmStartState:
    """Per-task warm starts: phi and v of the last outer step that saw each task."""

    phi: torch.Tensor  # (n_tasks, *phi_shape)
    v: torch.Tensor  # (n_tasks, *phi_shape)
    seen: torch.Tensor  # (n_tasks,) bool


@register
class RMMetaL(ImplicitAlgorithm):
    name = "rm_metal"
    stateful = True
    options_spec = (
        INNER_OPTIONS
        | CG_OPTIONS
        | {
            "warm_phi": Option(True, _flag, "start the inner solver from the last phi_K of the task"),
            "warm_v": Option(True, _flag, "start CG from the last v of the task"),
        }
    )

    def start(self, problem, theta, tasks, state):
        phi0 = problem.inner_init(theta, tasks).detach()
        if state is None:
            return phi0, None
        if not isinstance(state, WarmStartState) or tuple(state.phi.shape) != (problem.n_tasks, *problem.phi_shape):
            raise ValueError("state must be the .state of an earlier rm_metal call on this problem")
        seen = state.seen[tasks].reshape(-1, *([1] * len(problem.phi_shape))).to(theta.device)
        if self.warm_phi:
            phi0 = torch.where(seen, state.phi[tasks].to(phi0), phi0)
        if not self.warm_v or not bool(seen.any()):  # nothing to warm-start CG from: a cold start, as on call one
            return phi0, None
        v0 = torch.where(seen, state.v[tasks].to(phi0), torch.zeros_like(phi0))
        return phi0, v0

    def solve(self, matvec, rhs, v0):
        return conjugate_gradient(matvec, rhs, self.cg_iters, x0=v0, tol=self.cg_tol)

    def carry(self, problem, tasks, state, phi, v):
        if state is None:
            shape = (problem.n_tasks, *problem.phi_shape)
            state = WarmStartState(
                phi=torch.zeros(shape, dtype=phi.dtype, device=phi.device),
                v=torch.zeros(shape, dtype=phi.dtype, device=phi.device),
                seen=torch.zeros(problem.n_tasks, dtype=torch.bool, device=phi.device),
            )
        tasks = tasks.to(phi.device)
        return WarmStartState(
            phi=state.phi.index_put((tasks,), phi.to(state.phi)),
            v=state.v.index_put((tasks,), v.to(state.v)),
            seen=state.seen.index_put((tasks,), torch.ones(len(tasks), dtype=torch.bool, device=phi.device)),
        )

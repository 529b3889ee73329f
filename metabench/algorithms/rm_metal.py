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

from metabench.algorithms.base import INNER_OPTIONS
from metabench.algorithms.imaml import CG_OPTIONS
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import register
from metabench.options import pick
from metabench.solvers import cg

__all__ = ["RMMetaL", "WarmStartState"]


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
    options_spec = INNER_OPTIONS | CG_OPTIONS | pick("warm_phi", "warm_v")
    linear_options = ("cg_iters", "cg_tol", "damping", "cg_breakdown")

    def default_linear_solver(self):
        return cg(iters=self.cg_iters, tol=self.cg_tol, damping=self.damping, breakdown=self.cg_breakdown)

    def start(self, oracle, theta, state):
        phi0 = oracle.inner_init(theta).detach()
        if state is None:
            return phi0, None
        if not isinstance(state, WarmStartState) or tuple(state.phi.shape) != (oracle.n_tasks, *oracle.phi_shape):
            raise ValueError("state must be the .state of an earlier rm_metal call on this problem")
        tasks = oracle.tasks
        seen = state.seen[tasks].reshape(-1, *([1] * len(oracle.phi_shape))).to(theta.device)
        if self.warm_phi:
            phi0 = torch.where(seen, state.phi[tasks].to(phi0), phi0)
        if not self.warm_v or not bool(seen.any()):  # nothing to warm-start CG from: a cold start, as on call one
            return phi0, None
        v0 = torch.where(seen, state.v[tasks].to(phi0), torch.zeros_like(phi0))
        return phi0, v0

    def carry(self, oracle, state, phi, v):
        if state is None:
            shape = (oracle.n_tasks, *oracle.phi_shape)
            state = WarmStartState(
                phi=torch.zeros(shape, dtype=phi.dtype, device=phi.device),
                v=torch.zeros(shape, dtype=phi.dtype, device=phi.device),
                seen=torch.zeros(oracle.n_tasks, dtype=torch.bool, device=phi.device),
            )
        tasks = oracle.tasks.to(phi.device)
        return WarmStartState(
            phi=state.phi.index_put((tasks,), phi.to(state.phi)),
            v=state.v.index_put((tasks,), v.to(state.v)),
            seen=state.seen.index_put((tasks,), torch.ones(len(tasks), dtype=torch.bool, device=phi.device)),
        )

"""The unrolled (iterative differentiation) family: maml, anil, truncated, itd_bio, fomaml, maml_checkpointed, reptile.

phi_K = Solver^K(phi0(theta)); the hypergradient is d/dtheta mean_i f_i(theta, phi_K,i) with
reverse-mode back-prop through the last T inner steps (phi_{K-T} held constant when T < K).
A first-order member instead takes d phi_K/d theta as d phi0/d theta:
grad = grad_theta f + (d phi0/d theta)' grad_phi f(theta, phi_K).
Members set ``backprop_steps`` (T) or ``first_order``.
"""

from __future__ import annotations

import torch

from metabench.algorithms.base import Algorithm, Computed
from metabench.algorithms.deep_graph import call_with_stack
from metabench.solvers import GradientDescent

__all__ = ["UnrolledAlgorithm"]


class UnrolledAlgorithm(Algorithm):
    """Back-prop through the inner loop (or through none of it, for a first-order member)."""

    first_order = False

    def _check_inner(self) -> None:
        if not self.first_order and not self.inner.differentiable and self.backprop_steps() > 0:
            raise ValueError(
                f"{self.name} back-propagates through the inner steps, and inner_solver {self.inner.name!r} cannot be "
                "back-propagated (its steps take Hessian-vector products): use it with imaml, rm_metal or fomaml"
            )

    def backprop_steps(self) -> int:
        """T, the number of final inner steps back-propagated."""
        return self.inner_steps

    def graph_depth(self) -> int:
        """Inner steps held in one autograd graph at once (what freeing the graph recurses through)."""
        return self.backprop_steps()

    def differentiated_objective(self) -> dict | None:
        if self.first_order or not isinstance(self.inner, GradientDescent):
            return None
        return {"inner_steps": self.inner_steps, "inner_lr": self.inner.lr, "truncate": self.backprop_steps()}

    def _compute(self, oracle, theta, state) -> Computed:
        run = self._first_order if self.first_order else self._backprop
        depth = 0 if self.first_order else self.graph_depth()
        grad, phi = call_with_stack(lambda: run(oracle, theta), depth)  # a deep graph is freed on a deep stack
        return Computed(grad=grad, phi=phi, info={"backprop_steps": 0 if self.first_order else self.backprop_steps()})

    def _backprop(self, oracle, theta):
        theta = theta.requires_grad_(True)
        with torch.enable_grad():
            phi0 = oracle.inner_init(theta)
            phi = self._run_inner(oracle, theta, phi0, self.backprop_steps())
            (grad,) = oracle.outer_grad(theta, phi, wrt=(theta,))
        grad = torch.zeros_like(theta) if grad is None else grad  # theta does not reach f: a zero meta-gradient
        return grad.detach() / oracle.n, phi.detach()

    def _first_order(self, oracle, theta):
        theta = theta.requires_grad_(True)
        with torch.enable_grad():
            phi0 = oracle.inner_init(theta)
            phi = self._run_inner(oracle, theta, phi0, backprop_steps=0).detach().requires_grad_(True)
            grad_theta, grad_phi = oracle.outer_grad(theta, phi, wrt=(theta, phi))
            (through_phi0,) = torch.autograd.grad(phi0, theta, grad_outputs=grad_phi, allow_unused=True)
        parts = [g for g in (grad_theta, through_phi0) if g is not None]
        grad = torch.zeros_like(theta) if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return grad.detach() / oracle.n, phi.detach()

"""The unrolled (iterative differentiation) family: maml, truncated, itd_bio, fomaml.

phi_K = Solver^K(phi0(theta)); the hypergradient is d/dtheta mean_i f_i(theta, phi_K,i) with
reverse-mode back-prop through the last T inner steps (phi_{K-T} held constant when T < K).
A first-order member instead takes d phi_K/d theta as d phi0/d theta:
grad = grad_theta f + (d phi0/d theta)' grad_phi f(theta, phi_K).
Members set ``backprop_steps`` (T) or ``first_order``.
"""

from __future__ import annotations

import torch

from metabench.algorithms.base import Algorithm
from metabench.algorithms.result import Hypergradient, OracleCounts

__all__ = ["UnrolledAlgorithm"]


class UnrolledAlgorithm(Algorithm):
    """Back-prop through the inner loop (or through none of it, for a first-order member)."""

    first_order = False

    def backprop_steps(self) -> int:
        """T, the number of final inner steps back-propagated."""
        return self.inner_steps

    def differentiated_objective(self) -> dict | None:
        if self.first_order or self.inner_solver != "gd":
            return None
        return {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "truncate": self.backprop_steps()}

    def _compute(self, problem, theta, tasks, state) -> Hypergradient:
        n = len(tasks)
        steps = 0 if self.first_order else self.backprop_steps()
        run = self._first_order if self.first_order else self._backprop
        grad, phi = run(problem, theta, tasks)
        counts = OracleCounts(inner_grads=n * self.inner_steps, outer_grads=n, hvps=n * steps)
        return Hypergradient(grad=grad, counts=counts, phi=phi, tasks=tasks, info={"backprop_steps": steps})

    def _backprop(self, problem, theta, tasks):
        theta = theta.requires_grad_(True)
        with torch.enable_grad():
            phi0 = problem.inner_init(theta, tasks)
            phi = self._run_inner(problem, theta, phi0, tasks, self.backprop_steps())
            outer = problem.outer_loss(theta, phi, tasks).mean()
            (grad,) = torch.autograd.grad(outer, theta, allow_unused=True)
        grad = torch.zeros_like(theta) if grad is None else grad
        return grad.detach(), phi.detach()

    def _first_order(self, problem, theta, tasks):
        theta = theta.requires_grad_(True)
        with torch.enable_grad():
            phi0 = problem.inner_init(theta, tasks)
            phi = self._run_inner(problem, theta, phi0, tasks, backprop_steps=0).detach().requires_grad_(True)
            outer = problem.outer_loss(theta, phi, tasks).mean()
            grad_theta, grad_phi = torch.autograd.grad(outer, (theta, phi), allow_unused=True)
            (through_phi0,) = torch.autograd.grad(phi0, theta, grad_outputs=grad_phi, allow_unused=True)
        grad = torch.zeros_like(theta)
        for part in (grad_theta, through_phi0):
            if part is not None:
                grad = grad + part
        return grad.detach(), phi.detach()

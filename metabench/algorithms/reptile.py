"""Reptile (Nichol et al. 2018): the meta-update direction (theta - phi_K) / (K alpha), NOT a gradient of F.

grad = (d phi0/d theta)' (phi0 - phi_K) / (K alpha), mean over tasks; on the MAML family (phi0 = theta) this is
mean_i (theta - phi_K,i) / (K alpha). With gradient descent from phi0, phi0 - phi_K = alpha sum_k grad g(phi_k),
so the direction is the mean inner gradient along the trajectory: it never looks at the query (outer) loss
(no outer gradient is taken), and it is not d F / d theta for any K. metabench reports its error to the exact
hypergradient anyway (``rel_error_exact``), which is how far a Reptile update is from a meta-gradient step on
the problem at hand; ``differentiated_objective`` is None (there is no objective it differentiates).

Needs phi0 to depend on theta (MAML family), an inner solver with a step size alpha (gd or nesterov), and K >= 1;
refuses the anil formulation (phi is the head alone there, so the backbone would never move).
"""

from __future__ import annotations

import torch

from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm

__all__ = ["Reptile"]


@register
class Reptile(UnrolledAlgorithm):
    name = "reptile"
    first_order = True
    #: not a (possibly approximate) gradient of the meta-objective: a different update rule
    is_hypergradient = False

    def _check_options(self) -> None:
        if self.inner_steps < 1:
            raise ValueError(f"reptile needs inner_steps >= 1 (it divides by K alpha), got {self.inner_steps}")

    def _check_inner(self) -> None:
        if getattr(self.inner, "lr", None) is None:
            raise ValueError(
                f"reptile needs an inner solver with a step size alpha (gd or nesterov), got {self.inner.name!r}"
            )

    def check_problem(self, problem) -> None:
        if not problem.phi0_depends_on_theta:
            raise ValueError(
                f"reptile needs phi0 to depend on theta (MAML family); {type(problem).__name__} is "
                f"{problem.family}-family with phi0 independent of theta, where theta would get no update"
            )
        if problem.family == "anil":
            raise ValueError(
                "reptile moves every weight of theta toward phi_K; in the anil formulation phi is the head alone, so "
                "the backbone would get no update: use formulation='maml' (or anil, ANIL's meta-gradient)"
            )

    def _first_order(self, oracle, theta):
        theta = theta.requires_grad_(True)
        with torch.enable_grad():
            phi0 = oracle.inner_init(theta)
            phi = self._run_inner(oracle, theta, phi0, backprop_steps=0).detach()
            step = (phi0.detach() - phi) / (self.inner_steps * self.inner.lr)
            (grad,) = torch.autograd.grad(phi0, theta, grad_outputs=step)
        return grad.detach() / oracle.n, phi

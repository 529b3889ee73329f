"""The implicit (AID) family: imaml, rm_metal, neumann.

After K inner steps (no graph kept), the hypergradient comes from the implicit-function identity
(approximate implicit differentiation, AID), per task i at phi = phi_K,i::

    d2g_i/dphi2 · v_i = grad_phi f_i(theta, phi)                 (linear solve, the member's own)
    grad F = mean_i [ grad_theta f_i(theta, phi) - d2g_i/(dtheta dphi) · v_i ]

For the MAML family (g = Lhat + lam/2||phi - theta||^2, f = L(phi)) the cross term is -lam I, so
grad F = mean_i lam v_i with (H_i + lam I) v_i = grad L_i(phi): iMAML's (I + H_i/lam)^-1 grad L_i(phi).
Memory does not depend on K. The identity needs g strongly convex in phi: a problem whose inner
objective is not (MAML family with lam = 0) is refused with a clear error.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from metabench.algorithms.base import Algorithm
from metabench.algorithms.result import Hypergradient, OracleCounts

__all__ = ["ImplicitAlgorithm"]


class ImplicitAlgorithm(Algorithm):
    """K inner steps, then a linear solve on the inner Hessian at phi_K and the AID identity."""

    def check_problem(self, problem) -> None:
        if not problem.inner_strongly_convex:
            detail = f" (lam = {problem.lam}; set lam > 0)" if hasattr(problem, "lam") else ""
            raise ValueError(
                f"{self.name} needs a strongly convex inner problem for the implicit-function identity; "
                f"{type(problem).__name__}'s inner objective is not{detail}"
            )

    def start(self, problem, theta, tasks, state) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(phi_0, v_0) for the tasks of this call: phi0(theta) and no starting v by default."""
        return problem.inner_init(theta, tasks).detach(), None

    @abstractmethod
    def solve(self, matvec, rhs: torch.Tensor, v0: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Approximate H^-1 rhs per task; return (v, number of batched Hessian-vector products)."""

    def carry(self, problem, tasks, state, phi: torch.Tensor, v: torch.Tensor):
        """The state handed to the next outer step (None: stateless)."""
        return None

    def _compute(self, problem, theta, tasks, state) -> Hypergradient:
        n = len(tasks)
        phi0, v0 = self.start(problem, theta, tasks, state)
        phi_K = self._run_inner(problem, theta, phi0, tasks, backprop_steps=0)
        theta = theta.requires_grad_(True)
        phi = phi_K.detach().requires_grad_(True)
        with torch.enable_grad():
            outer = problem.outer_loss(theta, phi, tasks).sum()
            grad_theta, grad_phi = torch.autograd.grad(outer, (theta, phi), allow_unused=True)
            inner_grad = torch.autograd.grad(problem.inner_loss(theta, phi, tasks).sum(), phi, create_graph=True)[0]

            damping = self.options.get("damping", 0.0)

            def hvp(u: torch.Tensor) -> torch.Tensor:
                product = torch.autograd.grad(inner_grad, phi, grad_outputs=u, retain_graph=True)[0]
                return product + damping * u if damping else product

            v, matvecs = self.solve(hvp, grad_phi, v0)
            (cross,) = torch.autograd.grad(inner_grad, theta, grad_outputs=v.detach(), allow_unused=True)
        grad = torch.zeros_like(theta) if grad_theta is None else grad_theta.detach()
        if cross is not None:
            grad = grad - cross
        counts = OracleCounts(inner_grads=n * (self.inner_steps + 1), outer_grads=n, hvps=n * matvecs, jvps=n)
        return Hypergradient(
            grad=(grad / n).detach(),
            counts=counts,
            phi=phi_K.detach(),
            tasks=tasks,
            state=self.carry(problem, tasks, state, phi_K.detach(), v.detach()),
            info={"linear_solver_matvecs": matvecs},
        )

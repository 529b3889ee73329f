"""Implicit MAML (Rajeswaran et al. 2019), Algorithm 2: CG on the inner Hessian at phi_K.

K inner steps from phi0 = theta give phi_K; then ``cg_iters`` conjugate-gradient iterations from
v0 = 0 on (H_i + lam I) v_i = grad L_i(phi_K) (the AID system of ``implicit.py``), and
grad = mean_i lam v_i = mean_i (I + H_i/lam)^-1 grad L_i(phi_K). CG is invariant to scaling the
system, so its iterates are exactly iMAML's CG on (I + H/lam) u = grad L (u = lam v).
Works on the bilevel family too (AID with CG, cold start).
"""

from metabench._checks import check_int, check_real
from metabench.algorithms.base import INNER_OPTIONS, Option
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import register
from metabench.solvers.linear import conjugate_gradient

__all__ = ["CG_OPTIONS", "IMAML"]

CG_OPTIONS = {
    "cg_iters": Option(5, lambda n, v: check_int(n, v, low=0), "conjugate-gradient iterations"),
    "cg_tol": Option(
        0.0, lambda n, v: check_real(n, v, low=0.0), "stop CG once ||r|| <= cg_tol ||b|| (0: never early)"
    ),
}


@register
class IMAML(ImplicitAlgorithm):
    name = "imaml"
    options_spec = INNER_OPTIONS | CG_OPTIONS

    def solve(self, matvec, rhs, v0):
        return conjugate_gradient(matvec, rhs, self.cg_iters, x0=None, tol=self.cg_tol)

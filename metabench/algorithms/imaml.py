"""Implicit MAML (Rajeswaran et al. 2019), Algorithm 2: CG on the inner Hessian at phi_K.

K inner steps from phi0 = theta give phi_K; then ``cg_iters`` conjugate-gradient iterations from
v0 = 0 on (H_i + lam I) v_i = grad L_i(phi_K) (the AID system of ``implicit.py``), and
grad = mean_i lam v_i = mean_i (I + H_i/lam)^-1 grad L_i(phi_K). CG is invariant to scaling the
system, so its iterates are exactly iMAML's CG on (I + H/lam) u = grad L (u = lam v).
Works on the bilevel family too (AID with CG, cold start).

``damping`` delta >= 0 (shared with rm_metal) solves the Tikhonov-damped system
(d2g_i/dphi2 + delta I) v_i = grad_phi f_i instead: for the MAML family (H_i + (lam + delta) I) v_i =
grad L_i(phi_K), grad = mean_i lam v_i. delta = 0 (default) is the AID system itself; delta > 0 biases
the meta-gradient by O(delta) but keeps CG well-posed where the inner Hessian is indefinite at phi_K
(normalised conv nets: lambda_min(H) is about -45 on the 4-conv BatchNorm workload at its initial
weights), as the damping in iMAML's reference code does.
"""

from metabench.algorithms.base import INNER_OPTIONS
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import register
from metabench.options import pick
from metabench.solvers import cg

__all__ = ["CG_OPTIONS", "IMAML"]

#: the flat options of the default CG solver (and ``linear_solver``, an instance that replaces them)
CG_OPTIONS = pick("linear_solver", "cg_iters", "cg_tol", "damping", "cg_breakdown", "hvp")


@register
class IMAML(ImplicitAlgorithm):
    name = "imaml"
    options_spec = INNER_OPTIONS | CG_OPTIONS
    linear_options = ("cg_iters", "cg_tol", "damping", "cg_breakdown")

    def default_linear_solver(self):
        return cg(iters=self.cg_iters, tol=self.cg_tol, damping=self.damping, breakdown=self.cg_breakdown)

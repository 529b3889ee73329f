"""Neumann-series AID (Lorraine, Vicol & Duvenaud 2020).

After K inner steps, per task  v = beta sum_{j=0..N} (I - beta H)^j grad_phi f  (N + 1 terms,
N Hessian-vector products, H = d2g/dphi2 at phi_K), then the AID identity of ``implicit.py``.
It converges to H^-1 grad_phi f when 0 < beta < 2/L; ``neumann_lr`` defaults to ``inner_lr``,
which must satisfy the same bound for the inner GD steps to converge. A series whose terms grow
(H indefinite, or beta >= 2/L) raises ``DivergenceError``.
"""

from metabench.algorithms.base import INNER_OPTIONS
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import register
from metabench.options import pick
from metabench.solvers import neumann

__all__ = ["Neumann"]


@register
class Neumann(ImplicitAlgorithm):
    name = "neumann"
    options_spec = INNER_OPTIONS | pick("linear_solver", "neumann_iters", "neumann_lr", "damping", "hvp")
    linear_options = ("neumann_iters", "neumann_lr", "damping")

    def default_linear_solver(self):
        beta = getattr(self.inner, "lr", self.inner_lr) if self.neumann_lr is None else self.neumann_lr
        return neumann(iters=self.neumann_iters, lr=beta, damping=self.damping)

"""Neumann-series AID (Lorraine, Vicol & Duvenaud 2020).

After K inner steps, per task  v = beta sum_{j=0..N} (I - beta H)^j grad_phi f  (N + 1 terms,
N Hessian-vector products, H = d2g/dphi2 at phi_K), then the AID identity of ``implicit.py``.
It converges to H^-1 grad_phi f when 0 < beta < 2/L; ``neumann_lr`` defaults to ``inner_lr``,
which must satisfy the same bound for the inner GD steps to converge.
"""

from metabench._checks import check_int, check_real
from metabench.algorithms.base import INNER_OPTIONS, Option
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import register
from metabench.solvers.linear import neumann_series

__all__ = ["Neumann"]


@register
class Neumann(ImplicitAlgorithm):
    name = "neumann"
    options_spec = INNER_OPTIONS | {
        "neumann_iters": Option(10, lambda n, v: check_int(n, v, low=0), "N, Hessian-vector products"),
        "neumann_lr": Option(
            None,
            lambda n, v: None if v is None else check_real(n, v, low=0.0, low_open=True),
            "beta, the series step; None means inner_lr",
        ),
    }

    def solve(self, matvec, rhs, v0):
        beta = self.inner_lr if self.neumann_lr is None else self.neumann_lr
        return neumann_series(matvec, rhs, self.neumann_iters, beta)

"""MAML (Finn et al. 2017): back-prop through all K inner steps.

grad = d/dtheta mean_i L_i(phi_K,i(theta)),  phi_{k+1} = phi_k - alpha grad_phi g_i(theta, phi_k),
phi_0 = phi0(theta); reverse mode stores every step, so memory grows linearly in K.
With ``inner_solver="nesterov"`` the inner loop is Nesterov's accelerated gradient (iMAML Table 1, row 2).
"""

from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm

__all__ = ["MAML"]


@register
class MAML(UnrolledAlgorithm):
    name = "maml"

"""ITD-BiO (Ji, Yang & Liang 2021): iterative differentiation for bilevel optimisation.

grad = grad_theta f(theta, phi_K) + (d phi_K/d theta)' grad_phi f(theta, phi_K), with d phi_K/d theta
by reverse-mode back-prop through all K inner GD steps from a start phi0 that does not depend on theta.
The same engine as maml; on a MAML-family problem it computes maml's meta-gradient, on the few-shot anil
formulation anil's.
"""

from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm

__all__ = ["ITDBiO"]


@register
class ITDBiO(UnrolledAlgorithm):
    name = "itd_bio"

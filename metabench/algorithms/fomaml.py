"""First-order MAML (Finn et al. 2017): d phi_K/d theta taken as d phi0/d theta = I.

grad = grad_theta f(theta, phi_K) + (d phi0/d theta)' grad_phi f(theta, phi_K); on the MAML family
this is mean_i grad L_i(phi_K,i); on the few-shot anil formulation it is first-order ANIL (the backbone gets
grad_theta f at phi_K, the head's initialisation grad_phi f). No second-order products, memory of one inner gradient.
On the bilevel family phi0 does not depend on theta, so the approximation would drop the lower
level entirely: refused with a clear error.
"""

from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm

__all__ = ["FOMAML"]


@register
class FOMAML(UnrolledAlgorithm):
    name = "fomaml"
    first_order = True

    def check_problem(self, problem) -> None:
        if not problem.phi0_depends_on_theta:
            raise ValueError(
                f"fomaml needs phi0 to depend on theta (MAML family); {type(problem).__name__} is "
                f"{problem.family}-family with phi0 independent of theta, where fomaml would return "
                "grad_theta f alone. Use itd_bio, imaml, rm_metal or neumann."
            )

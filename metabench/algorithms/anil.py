"""ANIL (Raghu et al. 2020, "Rapid learning or feature reuse?"): MAML whose inner loop adapts the head alone.

theta = (w_backbone, w_head0) holds the backbone and the head's initial weights; per task i::

    phi_0 = w_head0,   phi_{k+1} = phi_k - alpha grad_phi g_i(theta, phi_k)   (k < K),
    g_i(theta, phi) = loss(support_i; w_backbone, phi) [+ lam/2 ||phi - w_head0||^2],
    grad = d/dtheta mean_i f_i(theta, phi_{i,K}(theta)),   f_i = loss(query_i; w_backbone, phi_{i,K}),

back-propagated through all K inner steps (reverse mode, as maml), so the meta-gradient reaches both the
backbone (through every inner step and the query loss) and w_head0 (through phi_0 and the proximal term).
It is maml's engine and options (``inner_solver="nesterov"`` too); what differs is the problem it takes:

- ``FewShotClassification`` in the ``"anil"`` formulation (the anil family: phi0 = the head's slice of theta);
- a closed-form MAML-family problem (``linear_meta_regression``): a linear model has no backbone, every weight
  is the head, so ANIL is MAML there and ``differentiated_objective`` gives the exact closed form, as for maml.

Everything else is refused with what to use instead (the "maml" or "bilevel" formulation: formulation='anil';
a bilevel-family problem such as quadratic_bilevel: its phi0 is no head initialisation in theta).
"""

from __future__ import annotations

from metabench.algorithms.maml import MAML
from metabench.algorithms.registry import register

__all__ = ["ANIL"]


@register
class ANIL(MAML):
    name = "anil"

    def check_problem(self, problem) -> None:
        if problem.family == "anil":
            return
        formulation = getattr(problem, "formulation", None)
        if formulation is not None:
            raise ValueError(
                f"anil adapts the head alone from its initialisation in theta; {type(problem).__name__} in the "
                f"{formulation!r} formulation adapts "
                + ("every weight (that is maml)" if formulation == "maml" else "a head that starts from 0")
                + ": use formulation='anil'"
            )
        if problem.family == "maml" and problem.truth == "exact":
            return  # a closed-form (linear) MAML-family problem: no backbone, every weight is the head
        if problem.family == "maml":
            raise ValueError(
                f"anil needs to know which weights are the head: {type(problem).__name__} is a MAML-family problem "
                "that adapts every weight (use maml), and only the closed-form ones (linear_meta_regression) have no "
                "backbone; for a network use FewShotClassification(formulation='anil')"
            )
        raise ValueError(
            f"anil needs the head's initialisation in theta (phi0 = w_head0); {type(problem).__name__} is "
            f"{problem.family}-family, its phi0 does not depend on theta: theta holds no head initialisation. Use "
            "itd_bio there, or FewShotClassification(formulation='anil') for ANIL"
        )

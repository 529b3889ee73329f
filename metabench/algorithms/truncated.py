"""Truncated back-propagation (Shaban et al. 2019): back-prop through the last T of K inner steps.

grad = d/dtheta mean_i f_i(theta, phi_K) with phi_{K-T} held constant: only the last T steps
are differentiated, so memory grows with T, not K, and the error decays like (1 - alpha mu)^T.
On the MAML family theta then enters only through the proximal term lam/2 ||phi - theta||^2,
so T < K with lam = 0 is refused (its meta-gradient would be exactly zero).
"""

from metabench.algorithms.base import INNER_OPTIONS
from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm
from metabench.options import pick

__all__ = ["Truncated"]


@register
class Truncated(UnrolledAlgorithm):
    name = "truncated"
    options_spec = INNER_OPTIONS | pick("truncate")

    def _check_options(self) -> None:
        if self.truncate > self.inner_steps:
            raise ValueError(f"truncate must be in 1..inner_steps = 1..{self.inner_steps}, got {self.truncate}")

    def backprop_steps(self) -> int:
        return self.truncate

    def check_problem(self, problem) -> None:
        if problem.family == "maml" and getattr(problem, "lam", 0.0) == 0 and self.truncate < self.inner_steps:
            raise ValueError(
                "truncated with truncate < inner_steps on a MAML-family problem with lam = 0 has a zero "
                "meta-gradient (theta enters only through phi0, which truncation cuts off); "
                "use lam > 0 or truncate = inner_steps"
            )

"""The implicit (AID) family: imaml, rm_metal, neumann.

After K inner steps (no graph kept), the hypergradient comes from the implicit-function identity
(approximate implicit differentiation, AID), per task i at phi = phi_K,i::

    d2g_i/dphi2 · v_i = grad_phi f_i(theta, phi)                 (the member's linear solver)
    grad F = mean_i [ grad_theta f_i(theta, phi) - d2g_i/(dtheta dphi) · v_i ]

For the MAML family (g = Lhat + lam/2||phi - theta||^2, f = L(phi)) the cross term is -lam I, so
grad F = mean_i lam v_i with (H_i + lam I) v_i = grad L_i(phi): iMAML's (I + H_i/lam)^-1 grad L_i(phi).
Memory does not depend on K. The identity needs g strongly convex in phi: a problem whose inner
objective is not (MAML family with lam = 0) is refused with a clear error, and so is the anil family
(FewShotClassification's "anil" formulation: ANIL is its unrolled K-step objective, and an implicit
hypergradient there has no reference to be checked against).

Components: ``self.linear`` is the linear solver (a :class:`~metabench.solvers.LinearSolver`): the
``linear_solver`` option's instance, or the member's default built from its flat options
(``default_linear_solver``). Its ``damping`` delta solves (d2g/dphi2 + delta I) v = grad_phi f.
"""

from __future__ import annotations

import torch

from metabench.algorithms.base import Algorithm, Computed
from metabench.oracle import require_hvp_mode
from metabench.solvers import LinearSolver

__all__ = ["ImplicitAlgorithm"]


class ImplicitAlgorithm(Algorithm):
    """K inner steps, then a linear solve on the inner Hessian at phi_K and the AID identity."""

    #: the flat options that describe the default linear solver (an instance replaces them)
    linear_options: tuple[str, ...] = ()

    def __init__(self, **options):
        super().__init__(**options)
        self.linear = self._build_linear_solver()

    def _build_linear_solver(self) -> LinearSolver:
        chosen = self.options.get("linear_solver")
        if chosen is None:
            return self.default_linear_solver()
        clash = {k for k in self.linear_options if k in self._given}
        if clash:
            raise ValueError(
                f"{self.name}: linear_solver={chosen!r} is given, so {sorted(clash)} must not be (give the "
                "solver's options once, in the instance)"
            )
        return chosen

    def default_linear_solver(self) -> LinearSolver:
        """The linear solver built from the flat options when ``linear_solver`` is None."""
        raise NotImplementedError(f"{self.name} has no default linear solver: pass linear_solver=...")

    def describe(self):
        return super().describe() | self.linear.options

    def check_problem(self, problem) -> None:
        if problem.family == "anil":
            raise ValueError(
                f"{self.name} does not take the anil formulation: ANIL is defined by its K unrolled inner steps on "
                "the head (use anil, maml, truncated or fomaml there), and an implicit hypergradient of its converged "
                "head problem is neither verified nor given a float64 reference in metabench; for AID on a head use "
                "formulation='bilevel', for iMAML formulation='maml' with lam > 0"
            )
        require_hvp_mode(problem, self.hvp)  # a mode other than reverse runs only where it was checked right
        if not problem.inner_strongly_convex:
            detail = f" (lam = {problem.lam}; set lam > 0)" if hasattr(problem, "lam") else ""
            raise ValueError(
                f"{self.name} needs a strongly convex inner problem for the implicit-function identity; "
                f"{type(problem).__name__}'s inner objective is not{detail}"
            )

    def start(self, oracle, theta, state) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(phi_0, v_0) for the tasks of this call: phi0(theta) and no starting v by default."""
        return oracle.inner_init(theta).detach(), None

    def carry(self, oracle, state, phi: torch.Tensor, v: torch.Tensor):
        """The state handed to the next outer step (None: stateless)."""
        return None

    def _compute(self, oracle, theta, state) -> Computed:
        phi0, v0 = self.start(oracle, theta, state)
        phi_K = self._run_inner(oracle, theta, phi0, backprop_steps=0).detach()
        # the outer gradients first, so that their graph is gone before the inner gradient's is built
        theta_in, phi_in = theta.detach().requires_grad_(True), phi_K.detach().requires_grad_(True)
        grad_theta, grad_phi = oracle.outer_grad(theta_in, phi_in, wrt=(theta_in, phi_in))
        del theta_in, phi_in
        at = oracle.linearize(theta, phi_K, hvp=self.hvp)
        v, info = self.linear.solve(at.hvp, grad_phi.detach(), v0)
        cross = at.cross(v)
        grad = -cross if grad_theta is None else grad_theta.detach() - cross
        return Computed(
            grad=(grad / oracle.n).detach(),
            phi=phi_K,
            state=self.carry(oracle, state, phi_K, v.detach()),
            info=info,
        )

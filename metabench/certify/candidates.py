"""The meta-gradients an implementation might compute, in closed form, on linear meta-regression.

Gradient descent with step lr on g(theta, phi) = Lhat(phi) + lam/2 ||phi - theta||^2 from phi0 = theta is
``phi_{k+1} = M phi_k + lr (b + lam theta)`` with ``M = I - lr A`` and ``A = H + lam I`` (the problem's
:meth:`~metabench.problems.LinearMetaRegression.quadratics`). Every candidate is ``J' grad L(phi_K)`` with
``grad L(phi) = Hv phi - bv`` and a matrix J that stands for d phi_K / d theta; with ``S_T = sum_{j<T} M^j``:

=========================  ========================  ==========================================================
candidate                  J                         what computes it
=========================  ========================  ==========================================================
maml                       M^K + lr lam S_K          back-prop through all K steps (create_graph everywhere)
fomaml                     I                         d phi_K/d theta taken as d phi0/d theta (no create_graph)
truncated, T (1 <= T <= K) lr lam S_T                back-prop through the last T steps, phi_{K-T} held constant
truncated, first-order     M^T + lr lam S_T          the first K - T steps first-order, the last T back-propagated
head, T (1 <= T < K)
implicit                   lam A^-1                  the implicit-function theorem at phi_K: what CG (or any
                                                     solver) on A v = grad L(phi_K) converges to, times lam
zero                       0                         a meta-gradient that never reaches theta
=========================  ========================  ==========================================================

M and A commute, so every J is diagonal in A's eigenbasis: the candidates cost one eigendecomposition and no
autograd, and share no code with what they judge. With lam = 0 "truncated" (held) is the zero gradient and is
not listed separately, and "implicit" does not exist (A = H need not be invertible). "truncated" with T = K
and phi_0 held constant (the start detached) is listed too: it differs from maml by the M^K path through
phi0 = theta. The exact hypergradient ``lam A^-1 grad L(phi*)`` at the exact inner minimiser is returned beside
them, for reference, and the magnitude ``||Hv phi_K|| + ||bv||`` of the terms whose difference is grad L(phi_K):
the scale of the round-off in any implementation's answer, however small the answer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metabench.problems._gd_closed_form import geometric_sum, step_powers

__all__ = ["FAMILIES", "Candidate", "candidate_gradients"]

#: What a claim can name, in the order verdicts list them.
FAMILIES = ("maml", "truncated", "fomaml", "implicit", "zero")


@dataclass(frozen=True)
class Candidate:
    """One closed-form meta-gradient: ``family`` is the claim it satisfies, ``truncate`` the T of a truncated one,
    ``head`` how the steps before the last T are treated ("held": phi_{K-T} constant, "first_order": the
    identity), ``grad`` the float64 value (theta's shape)."""

    family: str
    grad: torch.Tensor
    truncate: int | None = None
    head: str | None = None

    @property
    def label(self) -> str:
        """``maml``, ``truncated (T = 3)``, ``truncated (T = 3, first-order head)``, ..."""
        if self.family != "truncated":
            return self.family
        return f"truncated (T = {self.truncate})" + (", first-order head" if self.head == "first_order" else "")


def candidate_gradients(problem, theta: torch.Tensor, inner_steps: int, inner_lr: float):
    """``(candidates, exact, scale)``: every :class:`Candidate` for K = ``inner_steps`` GD steps of size
    ``inner_lr`` at ``theta`` (mean over the problem's tasks, float64), the exact hypergradient (None where
    lam = 0), and the round-off scale ``mean_i ||Hv_i phi_K|| + ||bv_i||``."""
    K, lr, lam = int(inner_steps), float(inner_lr), float(problem.lam)
    theta = theta.detach().to(torch.float64).reshape(-1)
    _, b, Hv, bv, A = problem.quadratics()
    a, Q = torch.linalg.eigh(A)
    rot = lambda v: torch.einsum("tde,td->te", Q, v)  # noqa: E731  (Q'v)
    unrot = lambda v: torch.einsum("tde,te->td", Q, v)  # noqa: E731  (Q v)
    start = rot(theta.expand_as(b))
    phi_K = unrot(step_powers(a, lr, K) * start + geometric_sum(a, lr, K) * lr * rot(b + lam * theta))
    Hv_phi = torch.einsum("tde,te->td", Hv, phi_K)
    outer = rot(Hv_phi - bv)
    scale = float((Hv_phi.norm(dim=-1) + bv.norm(dim=-1)).mean())

    def grad(jac: torch.Tensor | float) -> torch.Tensor:
        return unrot(jac * outer).mean(0)

    def head(T: int) -> torch.Tensor:  # the Jacobian of the last T steps, started from the identity
        return step_powers(a, lr, T) + lr * lam * geometric_sum(a, lr, T)

    out = [Candidate("maml", grad(head(K))), Candidate("fomaml", grad(1.0))]
    for T in range(1, K + 1):
        if lam > 0:
            out.append(Candidate("truncated", grad(lr * lam * geometric_sum(a, lr, T)), truncate=T, head="held"))
        if T < K:
            out.append(Candidate("truncated", grad(head(T)), truncate=T, head="first_order"))
    if lam > 0:
        out.append(Candidate("implicit", grad(lam / a)))
    out.append(Candidate("zero", torch.zeros_like(theta)))
    exact = problem.exact_hypergradient(theta) if lam > 0 else None
    return out, exact, scale

"""Closed form of K gradient-descent steps on a quadratic, in the eigenbasis of its Hessian, and the
guards every closed form puts on its result.

For phi_{k+1} = phi_k - lr (A phi_k - r) with A = Q diag(a) Q' (r constant in k)::

    phi_K = Q [ m^K * Q'phi_0 + s_K * lr Q'r ],   m = 1 - lr a,   s_T = sum_{j<T} m^j

Used by the problems' ``exact_algorithm_gradient``: a route that shares no code with the
algorithms (no autograd, no loop over steps), so it is an independent truth for them.

The closed forms return a finite float64 value or raise, as the algorithms do: a singular linear
system is a ValueError (:func:`check_nonsingular`), a result that overflows float64 a
``DivergenceError`` (:func:`require_finite`, :func:`check_gd_finite`).
"""

from __future__ import annotations

import math

import torch

from metabench.errors import DivergenceError

__all__ = ["check_gd_finite", "check_nonsingular", "geometric_sum", "require_finite", "step_powers"]

EPS = torch.finfo(torch.float64).eps


def step_powers(a: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """m^steps elementwise, m = 1 - lr a."""
    return (1.0 - lr * a) ** steps


def geometric_sum(a: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """s = sum_{j<steps} (1 - lr a)^j elementwise, accurate when lr a is tiny.

    s = (1 - m^steps) / (lr a), with 1 - m^steps = -expm1(steps log1p(-lr a)) where m > 0;
    s = steps where lr a == 0.
    """
    la = lr * a
    m = 1.0 - la
    positive = m > 0
    safe_log = torch.log1p(-torch.where(positive, la, torch.zeros_like(la)))
    one_minus_pow = torch.where(positive, -torch.expm1(steps * safe_log), 1.0 - m**steps)
    nonzero = la != 0
    safe_la = torch.where(nonzero, la, torch.ones_like(la))
    return torch.where(nonzero, one_minus_pow / safe_la, torch.full_like(la, float(steps)))


def check_nonsingular(what: str, extremes: torch.Tensor, size: int, tasks, matrix: str, hint: str) -> None:
    """Raise a ValueError unless every symmetric ``size`` x ``size`` matrix is nonsingular in float64.

    ``extremes[i] = (eig_min, eig_max)`` of task ``tasks[i]``'s matrix. It counts as singular when
    eig_min <= sqrt(size) * eps * |eig_max|: below the rounding error its entries carry (the model of
    ``_random.check_kappa``, which keeps every generated problem well above it), the smallest
    eigenvalue cannot be told from 0 and a solve returns inf, NaN or rounding noise.
    """
    low, high = extremes[:, 0], extremes[:, 1]
    tol = math.sqrt(size) * EPS * high.abs()
    bad = (low <= tol).nonzero()
    if len(bad):
        j = int(bad[0])
        raise ValueError(
            f"{what} needs a nonsingular {matrix}, but task {int(tasks[j])}'s is singular in float64: its "
            f"smallest eigenvalue {float(low[j]):.3g} is <= sqrt(dim) * eps * its largest ({float(tol[j]):.3g}), "
            f"so the linear solve would return inf, NaN or noise; {hint}"
        )


def require_finite(what: str, value: torch.Tensor, reason: str) -> torch.Tensor:
    """``value`` if all its entries are finite, else a DivergenceError: "<what> overflowed float64: <reason>"."""
    if not bool(torch.isfinite(value).all()):
        raise DivergenceError(f"{what} overflowed float64: {reason}")
    return value


def check_gd_finite(what: str, values, lr: float, L: float, steps: int, theta: torch.Tensor) -> None:
    """Raise a DivergenceError if the K-step closed form overflowed (a tensor in ``values`` is not finite).

    GD on a quadratic with largest Hessian eigenvalue L diverges for lr > 2/L: the iterates grow like
    |1 - lr L|^K, which leaves float64's range (1.8e308) once K log10|1 - lr L| > 308.
    """
    if all(bool(torch.isfinite(v).all()) for v in values):
        return
    bound = 2.0 / L if L > 0 else math.inf
    if lr > bound:
        growth = steps * math.log10(abs(1.0 - lr * L))
        raise DivergenceError(
            f"{what} overflowed: {steps} GD steps with inner_lr={lr:g} > 2/L={bound:g} diverge "
            f"(the iterates grow like |1 - inner_lr L|^K = 10^{growth:.0f}, beyond float64's 1.8e308)"
        )
    raise DivergenceError(
        f"{what} overflowed float64 although inner_lr={lr:g} <= 2/L={bound:g}: the result is not finite "
        f"at max |theta_j| = {float(theta.abs().max()):.3g}"
    )

"""Closed form of K gradient-descent steps on a quadratic, in the eigenbasis of its Hessian.

For phi_{k+1} = phi_k - lr (A phi_k - r) with A = Q diag(a) Q' (r constant in k)::

    phi_K = Q [ m^K * Q'phi_0 + s_K * lr Q'r ],   m = 1 - lr a,   s_T = sum_{j<T} m^j

Used by the problems' ``exact_algorithm_gradient``: a route that shares no code with the
algorithms (no autograd, no loop over steps), so it is an independent truth for them.
"""

from __future__ import annotations

import torch

__all__ = ["geometric_sum", "step_powers"]


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

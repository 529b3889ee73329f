"""Implicit MAML with a CG bug that downstream accuracy hides: the new search direction is built from the
*old* residual (``p = r_old + beta p`` instead of ``p = r_new + beta p``).

The result still points roughly the right way, so training works; but it is no longer what CG converges to,
and more iterations do not fix it. ``--claim implicit`` fails on the first problem.
"""

import torch
from _cg import implicit_meta_grad, inner_solution


def conjugate_gradient(matvec, b, iters):
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    for _ in range(iters):
        Ap = matvec(p)
        alpha = (r @ r) / (p @ Ap)
        x = x + alpha * p
        r_new = r - alpha * Ap
        beta = (r_new @ r_new) / (r @ r)
        p = r + beta * p  # BUG: the old residual; CG needs r_new here
        r = r_new
    return x


def meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, cg_iters=5):
    phi = inner_solution(theta, inner_loss, phi0, inner_steps, inner_lr)
    return implicit_meta_grad(theta, inner_loss, outer_loss, phi, conjugate_gradient, cg_iters)

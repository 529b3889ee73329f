"""Implicit MAML (Rajeswaran et al. 2019) with conjugate gradient, written correctly (functional shape).

phi_K from K GD steps, then CG from v = 0 on (d2g / dphi2) v = grad_phi f and the hypergradient
grad_theta f - (d2g / dtheta dphi) v, which for g = Lhat + lam/2 ||phi - theta||^2 is lam v =
(I + H/lam)^-1 grad L(phi_K). ``--claim implicit`` passes: its error to the exact linear solve falls as
``cg_iters`` grows.
"""

import torch
from _cg import implicit_meta_grad, inner_solution


def conjugate_gradient(matvec, b, iters):
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    for _ in range(iters):
        if rr == 0:
            break
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, cg_iters=5):
    phi = inner_solution(theta, inner_loss, phi0, inner_steps, inner_lr)
    return implicit_meta_grad(theta, inner_loss, outer_loss, phi, conjugate_gradient, cg_iters)

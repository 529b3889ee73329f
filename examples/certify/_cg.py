"""The pieces the two CG iMAML examples share: the inner loop, and the AID hypergradient around a CG solver."""

import torch


def inner_solution(theta, inner_loss, phi0, inner_steps, inner_lr):
    """phi_K by K plain GD steps (no graph), returned as a fresh leaf that requires grad."""
    phi = phi0(theta).detach().requires_grad_(True)
    for _ in range(inner_steps):
        (grad,) = torch.autograd.grad(inner_loss(theta, phi), phi)
        phi = (phi - inner_lr * grad).detach().requires_grad_(True)
    return phi


def implicit_meta_grad(theta, inner_loss, outer_loss, phi, cg, cg_iters):
    """grad_theta f - (d2g / dtheta dphi) v with (d2g / dphi2) v = grad_phi f, v from ``cg(hvp, b, cg_iters)``."""
    f = outer_loss(theta, phi)
    grad_phi_f, grad_theta_f = torch.autograd.grad(f, (phi, theta), allow_unused=True)
    if grad_theta_f is None:
        grad_theta_f = torch.zeros_like(theta)
    (grad_phi_g,) = torch.autograd.grad(inner_loss(theta, phi), phi, create_graph=True)

    def hvp(v):
        (out,) = torch.autograd.grad(grad_phi_g, phi, v, retain_graph=True)
        return out

    v = cg(hvp, grad_phi_f.detach(), cg_iters)
    (mixed,) = torch.autograd.grad(grad_phi_g, theta, v)
    return grad_theta_f - mixed

"""Truncated back-propagation (Shaban et al. 2019) in plain PyTorch (functional shape).

The first K - T inner steps run without a graph and phi_{K-T} is detached (held constant); the last T steps
are back-propagated. theta then reaches phi_K only through the proximal term of the inner loss, so the
meta-gradient is d outer_loss / d theta through those T steps. ``--claim truncated`` passes, with T = 2.
"""

import torch


def meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, truncate=2):
    phi = phi0(theta)
    for k in range(inner_steps):
        if k == inner_steps - truncate:
            phi = phi.detach().requires_grad_(True)  # phi_{K-T} held constant
        (grad,) = torch.autograd.grad(inner_loss(theta, phi), phi, create_graph=k >= inner_steps - truncate)
        phi = phi - inner_lr * grad
    (meta,) = torch.autograd.grad(outer_loss(theta, phi), theta)
    return meta

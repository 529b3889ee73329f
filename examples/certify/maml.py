"""MAML written correctly in plain PyTorch (functional shape): every inner gradient with ``create_graph=True``.

    phi_0 = phi0(theta),  phi_{k+1} = phi_k - inner_lr * grad_phi inner_loss(theta, phi_k),
    returns d outer_loss(theta, phi_K) / d theta, back-propagated through all K steps.

``metabench certify examples/certify/maml.py:meta_grad --claim maml`` passes.
"""

import torch


def meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
    phi = phi0(theta)
    for _ in range(inner_steps):
        (grad,) = torch.autograd.grad(inner_loss(theta, phi), phi, create_graph=True)
        phi = phi - inner_lr * grad
    (meta,) = torch.autograd.grad(outer_loss(theta, phi), theta)
    return meta

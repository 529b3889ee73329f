"""A "MAML" written the way some benchmarks write it: the inner gradient is taken without ``create_graph``.

The loop looks like MAML, but ``torch.autograd.grad(..., phi)`` without ``create_graph=True`` returns a
gradient with no history, so phi_K = theta - inner_lr * (constants) and d phi_K / d theta = I: this is
first-order MAML, grad L(phi_K), whatever it is called.

``metabench certify examples/certify/first_order_maml.py:meta_grad --claim maml`` exits 1:
"claims maml; computes fomaml on every case".
"""

import torch


def meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
    phi = phi0(theta)
    for _ in range(inner_steps):
        (grad,) = torch.autograd.grad(inner_loss(theta, phi), phi)  # no create_graph: the Jacobian is lost
        phi = phi - inner_lr * grad
    (meta,) = torch.autograd.grad(outer_loss(theta, phi), theta)
    return meta

"""MAML on an ``nn.Module`` in plain PyTorch (module shape), with ``torch.func.functional_call``.

Fast weights start as the module's own parameters, each inner step is ``w - inner_lr * grad`` with
``create_graph=True``, and the query loss is differentiated back to the module's parameters.
"""

import torch
from torch.func import functional_call


def meta_grad(model, loss_fn, support, query, inner_steps, inner_lr):
    (X_s, y_s), (X_q, y_q) = support, query
    params = dict(model.named_parameters())
    fast = dict(params)
    for _ in range(inner_steps):
        loss = loss_fn(functional_call(model, fast, (X_s,)), y_s)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {name: w - inner_lr * g for (name, w), g in zip(fast.items(), grads)}
    query_loss = loss_fn(functional_call(model, fast, (X_q,)), y_q)
    return torch.autograd.grad(query_loss, list(params.values()))

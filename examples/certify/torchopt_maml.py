"""MAML with TorchOpt 0.7.3 (module shape): ``torchopt.MetaSGD`` steps the module's parameters in place,
keeping the graph, so the query loss differentiates back to the parameters the module started with.
Needs ``pip install torchopt``.
"""

import torch
import torchopt


def meta_grad(model, loss_fn, support, query, inner_steps, inner_lr):
    (X_s, y_s), (X_q, y_q) = support, query
    start = list(model.parameters())
    inner_opt = torchopt.MetaSGD(model, lr=inner_lr)
    for _ in range(inner_steps):
        inner_opt.step(loss_fn(model(X_s), y_s))
    return torch.autograd.grad(loss_fn(model(X_q), y_q), start)

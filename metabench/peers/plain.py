"""Peer (a): hand-written second-order MAML with ``torch.autograd.grad(create_graph=True)``.

The network is evaluated with ``torch.func.functional_call`` on a dict of fast weights; per task
(a Python loop), K SGD steps on the support loss build the graph, then the query loss is
differentiated back to the initial weights. What a researcher writes without a library.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from metabench.peers._common import data_loss, flatten, module_at, task_batches

NAME = "plain"
DESCRIPTION = "torch.autograd.grad(create_graph=True) + torch.func.functional_call, loop over tasks"


def available() -> tuple[bool, str]:
    return True, f"torch {torch.__version__}"


def maml_meta_gradient(problem, theta, tasks, inner_steps: int, inner_lr: float) -> torch.Tensor:
    model = module_at(problem, theta)
    params = dict(model.named_parameters())
    batches = task_batches(problem, theta, tasks)
    total = None
    for X_s, y_s, X_q, y_q in batches:
        fast = params
        for _ in range(inner_steps):
            loss = data_loss(problem, functional_call(model, fast, (X_s,)), y_s)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {name: w - inner_lr * g for (name, w), g in zip(fast.items(), grads)}
        query = data_loss(problem, functional_call(model, fast, (X_q,)), y_q)
        grad = flatten(torch.autograd.grad(query, list(params.values())))
        total = grad if total is None else total + grad
    return total / len(batches)

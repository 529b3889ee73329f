"""Peer (a): hand-written MAML, first-order MAML and iMAML with plain ``torch.autograd``.

The network is evaluated with ``torch.func.functional_call`` on a dict of fast weights, per task (a
Python loop). MAML: K SGD steps on the support loss build the graph (``create_graph=True``), then the
query loss is differentiated back to the initial weights. First-order MAML: the same steps without a
graph, and the query gradient at phi_K. iMAML (Algorithm 2 of Rajeswaran et al.): K SGD steps on
support loss + lam/2 ||phi - theta||^2 without a graph, then ``cg_iters`` CG iterations from 0 on
(H + (lam + damping) I) v = grad L_query(phi_K) with double-backward Hessian-vector products, grad = lam v.
What a researcher writes without a library.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from metabench.peers._common import conjugate_gradient, data_loss, flatten, module_at, task_batches

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


def fomaml_meta_gradient(problem, theta, tasks, inner_steps: int, inner_lr: float) -> torch.Tensor:
    model = module_at(problem, theta)
    params = {name: w.detach() for name, w in model.named_parameters()}
    batches = task_batches(problem, theta, tasks)
    total = None
    for X_s, y_s, X_q, y_q in batches:
        fast = params
        for _ in range(inner_steps):
            fast = {name: w.detach().requires_grad_(True) for name, w in fast.items()}
            loss = data_loss(problem, functional_call(model, fast, (X_s,)), y_s)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {name: w - inner_lr * g for (name, w), g in zip(fast.items(), grads)}
        fast = {name: w.detach().requires_grad_(True) for name, w in fast.items()}
        query = data_loss(problem, functional_call(model, fast, (X_q,)), y_q)
        grad = flatten(torch.autograd.grad(query, list(fast.values())))
        total = grad if total is None else total + grad
    return total / len(batches)


def imaml_meta_gradient(
    problem, theta, tasks, inner_steps: int, inner_lr: float, cg_iters: int, damping: float = 0.0
) -> torch.Tensor:
    model = module_at(problem, theta, proximal=True)
    lam = problem.lam
    anchor = {name: w.detach() for name, w in model.named_parameters()}

    def inner_loss(fast, X, y):
        prox = sum(((fast[name] - anchor[name]) ** 2).sum() for name in anchor)
        return data_loss(problem, functional_call(model, fast, (X,)), y) + 0.5 * lam * prox

    total = None
    batches = task_batches(problem, theta, tasks)
    for X_s, y_s, X_q, y_q in batches:
        fast = anchor
        for _ in range(inner_steps):
            fast = {name: w.detach().requires_grad_(True) for name, w in fast.items()}
            grads = torch.autograd.grad(inner_loss(fast, X_s, y_s), list(fast.values()))
            fast = {name: (w - inner_lr * g).detach() for (name, w), g in zip(fast.items(), grads)}
        fast = {name: w.detach().requires_grad_(True) for name, w in fast.items()}
        weights = list(fast.values())
        rhs = list(torch.autograd.grad(data_loss(problem, functional_call(model, fast, (X_q,)), y_q), weights))
        inner_grad = torch.autograd.grad(inner_loss(fast, X_s, y_s), weights, create_graph=True)
        grad = lam * flatten(conjugate_gradient(_damped_hvp(inner_grad, weights, damping), rhs, cg_iters))
        total = grad if total is None else total + grad
    return total / len(batches)


def _damped_hvp(inner_grad, weights, damping: float):
    """v -> (H + damping I) v by double backward through ``inner_grad`` (kept for every product)."""

    def matvec(v):
        hv = torch.autograd.grad(inner_grad, weights, grad_outputs=v, retain_graph=True)
        return [h + damping * u for h, u in zip(hv, v)]

    return matvec

"""Peer (c): TorchOpt 0.7.3 (Ren et al.): ``torchopt.MetaSGD`` for MAML, implicit differentiation for iMAML.

MAML, per task (a Python loop): ``inner_opt.step(support_loss)`` K times (the module's parameters become
differentiable functions of the initial weights), the query loss is differentiated back to the
initial leaves, then ``torchopt.recover_state_dict`` restores the module and optimizer, as in
TorchOpt's ``maml_omniglot`` example. iMAML, as in TorchOpt's ``iMAML`` example: an inner solver (K SGD
steps on support loss + lam/2 ||phi - theta||^2) decorated with ``torchopt.diff.implicit.custom_root``,
whose optimality condition is ``torch.func.grad`` of that objective and whose backward solves with
``torchopt.linear_solve.solve_cg(maxiter=cg_iters, ridge=damping)``.
Install: ``pip install --no-deps torchopt==0.7.3 optree graphviz`` (or the ``peers`` extra after the CPU torch).
"""

from __future__ import annotations

import warnings

import torch
from torch.func import functional_call

from metabench.peers._common import data_loss, flatten, module_at, task_batches

NAME = "torchopt"
DESCRIPTION = "torchopt.MetaSGD + extract/recover_state_dict, loop over tasks"


def available() -> tuple[bool, str]:
    try:
        import torchopt
    except Exception as error:  # noqa: BLE001 - any import failure means "skip, with the reason"
        return False, f"cannot import torchopt: {type(error).__name__}: {error}"
    return True, f"torchopt {torchopt.__version__}"


def maml_meta_gradient(problem, theta, tasks, inner_steps: int, inner_lr: float) -> torch.Tensor:
    import torchopt

    model = module_at(problem, theta)
    params = list(model.parameters())
    inner_opt = torchopt.MetaSGD(model, lr=inner_lr)
    net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
    batches = task_batches(problem, theta, tasks)
    total = None
    for X_s, y_s, X_q, y_q in batches:
        for _ in range(inner_steps):
            inner_opt.step(data_loss(problem, model(X_s), y_s))
        query = data_loss(problem, model(X_q), y_q)
        grad = flatten(torch.autograd.grad(query, params))
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(inner_opt, opt_state)
        total = grad if total is None else total + grad
    return total / len(batches)


def imaml_meta_gradient(
    problem, theta, tasks, inner_steps: int, inner_lr: float, cg_iters: int, damping: float = 0.0
) -> torch.Tensor:
    import torchopt

    model = module_at(problem, theta, proximal=True)
    names = [name for name, _ in model.named_parameters()]
    meta = tuple(model.parameters())
    lam = problem.lam

    def objective(params, meta_params, X, y):
        prox = sum(((p - m) ** 2).sum() for p, m in zip(params, meta_params))
        return data_loss(problem, functional_call(model, dict(zip(names, params)), (X,)), y) + 0.5 * lam * prox

    solve = torchopt.linear_solve.solve_cg(maxiter=cg_iters, rtol=0.0, atol=0.0, ridge=damping or None)

    @torchopt.diff.implicit.custom_root(torch.func.grad(objective, argnums=0), argnums=1, solve=solve)
    def inner_solver(params, meta_params, X, y):
        meta_params = tuple(m.detach() for m in meta_params)
        for _ in range(inner_steps):
            params = tuple(p.detach().requires_grad_(True) for p in params)
            with torch.enable_grad():
                grads = torch.autograd.grad(objective(params, meta_params, X, y), params)
            params = tuple((p - inner_lr * g).detach() for p, g in zip(params, grads))
        return params

    total = None
    batches = task_batches(problem, theta, tasks)
    for X_s, y_s, X_q, y_q in batches:
        phi = inner_solver(tuple(m.detach().clone() for m in meta), meta, X_s, y_s)
        query = data_loss(problem, functional_call(model, dict(zip(names, phi)), (X_q,)), y_q)
        with warnings.catch_warnings():  # TorchOpt 0.7.3 calls the deprecated functorch.vjp in its backward
            warnings.simplefilter("ignore", FutureWarning)
            grad = flatten(torch.autograd.grad(query, meta))
        total = grad if total is None else total + grad
    return total / len(batches)

"""Peer (c): TorchOpt 0.7.3 (Ren et al.): ``torchopt.MetaSGD``, the differentiable SGD of its MAML example.

Per task (a Python loop): ``inner_opt.step(support_loss)`` K times (the module's parameters become
differentiable functions of the initial weights), the query loss is differentiated back to the
initial leaves, then ``torchopt.recover_state_dict`` restores the module and optimizer, as in
TorchOpt's ``maml_omniglot`` example. Install: ``pip install --no-deps torchopt==0.7.3 optree graphviz``
(or the ``peers`` extra after installing the CPU torch).
"""

from __future__ import annotations

import torch

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

"""Peer (b): ``higher`` 0.2.1 (Grefenstette et al.): ``higher.innerloop_ctx`` with ``torch.optim.SGD``.

``copy_initial_weights=False``, so the patched module's initial fast weights are the module's own
parameters and the query loss differentiates back to them; one context per task (a Python loop), as
in higher's MAML Omniglot example.
"""

from __future__ import annotations

import torch

from metabench.peers._common import data_loss, flatten, module_at, task_batches

NAME = "higher"
DESCRIPTION = "higher.innerloop_ctx(SGD, copy_initial_weights=False), loop over tasks"


def available() -> tuple[bool, str]:
    try:
        import higher
    except Exception as error:  # noqa: BLE001 - any import failure means "skip, with the reason"
        return False, f"cannot import higher: {type(error).__name__}: {error}"
    return True, f"higher {getattr(higher, '__version__', '0.2.1')}"


def maml_meta_gradient(problem, theta, tasks, inner_steps: int, inner_lr: float) -> torch.Tensor:
    import higher

    model = module_at(problem, theta)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=inner_lr)
    batches = task_batches(problem, theta, tasks)
    total = None
    for X_s, y_s, X_q, y_q in batches:
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(inner_steps):
                diffopt.step(data_loss(problem, fmodel(X_s), y_s))
            query = data_loss(problem, fmodel(X_q), y_q)
            grad = flatten(torch.autograd.grad(query, params))
        total = grad if total is None else total + grad
    return total / len(batches)

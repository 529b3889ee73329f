"""MAML with ``higher`` 0.2.1 (module shape): ``innerloop_ctx`` with SGD and ``copy_initial_weights=False``,
so the fast weights start from the module's own parameters and the query loss reaches them.

``meta_grad_copied`` is the same loop with higher's default ``copy_initial_weights=True``: the fast weights
start from detached copies, ``query_loss.backward()`` leaves ``model.weight.grad`` empty, and the
meta-gradient a training loop reads is zero (a long-standing source of "MAML does not learn" reports).
Needs ``pip install higher``.
"""

import higher
import torch


def meta_grad(model, loss_fn, support, query, inner_steps, inner_lr):
    return _loop(model, loss_fn, support, query, inner_steps, inner_lr, copy_initial_weights=False)


def meta_grad_copied(model, loss_fn, support, query, inner_steps, inner_lr):
    _loop(model, loss_fn, support, query, inner_steps, inner_lr, copy_initial_weights=True)
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _loop(model, loss_fn, support, query, inner_steps, inner_lr, copy_initial_weights):
    (X_s, y_s), (X_q, y_q) = support, query
    opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=copy_initial_weights) as (fmodel, diffopt):
        for _ in range(inner_steps):
            diffopt.step(loss_fn(fmodel(X_s), y_s))
        loss_fn(fmodel(X_q), y_q).backward()
    return [p.grad for p in model.parameters()]

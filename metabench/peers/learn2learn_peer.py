"""Peer (d): learn2learn (Arnold et al.): ``l2l.algorithms.MAML(model, lr, first_order=False)``, clone/adapt.

Known here: learn2learn 0.2.0's shipped C sources do not compile on Python 3.11, and its top-level import
pulls torchvision, which fails beside the CPU torch build. :func:`available` tries the import and returns
``(False, reason)`` instead of raising; the adapter below then never runs (it is untested here).
"""

from __future__ import annotations

import torch

from metabench.peers._common import data_loss, flatten, module_at, task_batches

NAME = "learn2learn"
DESCRIPTION = "learn2learn.algorithms.MAML clone()/adapt(), loop over tasks"


def available() -> tuple[bool, str]:
    try:
        import learn2learn
    except BaseException as error:  # noqa: BLE001 - a broken extension may raise anything; never crash
        if isinstance(error, KeyboardInterrupt):
            raise
        reason = f"cannot import learn2learn: {type(error).__name__}: {error}"
        if isinstance(error, ModuleNotFoundError) and getattr(error, "name", None) == "learn2learn":
            reason += (
                " (learn2learn 0.2.0's C sources do not compile on Python 3.11, and its import pulls torchvision, "
                "which fails beside the CPU torch build)"
            )
        return False, reason
    return True, f"learn2learn {getattr(learn2learn, '__version__', '?')}"


def maml_meta_gradient(problem, theta, tasks, inner_steps: int, inner_lr: float) -> torch.Tensor:
    import learn2learn as l2l

    model = module_at(problem, theta)
    params = list(model.parameters())
    maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=False)
    batches = task_batches(problem, theta, tasks)
    total = None
    for X_s, y_s, X_q, y_q in batches:
        learner = maml.clone()
        for _ in range(inner_steps):
            learner.adapt(data_loss(problem, learner(X_s), y_s))
        query = data_loss(problem, learner(X_q), y_q)
        grad = flatten(torch.autograd.grad(query, params))
        total = grad if total is None else total + grad
    return total / len(batches)

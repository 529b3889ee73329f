"""Shared pieces of the peer adapters: the problem's network as a plain ``nn.Module`` at theta, and its tasks.

Every peer starts from the same weights: :func:`module_at` deep-copies the problem's network, casts it to
theta's dtype and device, and loads theta into its parameters (``problem.named_weights(theta)``, whose
order is the module's ``named_parameters()`` order). The peers then compute with their own machinery on
that module; :func:`flatten` turns their per-parameter gradients back into metabench's flat layout.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["check_problem", "conjugate_gradient", "data_loss", "flatten", "module_at", "task_batches"]


def check_problem(problem, proximal: bool = False) -> None:
    """The peers take a ``FewShotClassification`` in the "maml" formulation: lam = 0 for MAML and
    first-order MAML, lam > 0 for iMAML (``proximal``)."""
    from metabench.problems import FewShotClassification

    if not isinstance(problem, FewShotClassification):
        raise TypeError(f"peers take a FewShotClassification, got {type(problem).__name__}")
    if problem.formulation != "maml" or (problem.lam > 0.0) != proximal:
        want = "iMAML: formulation='maml' with lam > 0" if proximal else "plain MAML: formulation='maml' with lam = 0"
        raise ValueError(f"peers compute {want}, got formulation={problem.formulation!r}, lam={problem.lam}")


def module_at(problem, theta: torch.Tensor, proximal: bool = False) -> nn.Module:
    """A private ``nn.Module`` copy of the problem's network holding theta's values (leaf parameters,
    requires_grad=True) in theta's dtype and on its device."""
    check_problem(problem, proximal)
    model = copy.deepcopy(problem.model).to(device=theta.device, dtype=theta.dtype)
    weights = problem.named_weights(theta.detach())
    names = [name for name, _ in model.named_parameters()]
    if names != list(weights):
        raise ValueError(f"the module's parameters {names} do not match theta's layout {list(weights)}")
    model.load_state_dict(weights, strict=False)  # buffers (none without running statistics) keep theirs
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train(False)


def task_batches(problem, theta: torch.Tensor, tasks):
    """``[(X_support, y_support, X_query, y_query), ...]``, one tuple per task, in theta's dtype."""
    data = problem.batch_data(theta, problem.task_index(tasks))
    return list(zip(data["X_support"], data["y_support"], data["X_query"], data["y_query"]))


def data_loss(problem, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The problem's per-task loss: mean cross-entropy (or mean squared error for ``loss="mse"``)."""
    return F.cross_entropy(out, y) if problem.loss == "cross_entropy" else F.mse_loss(out, y)


def conjugate_gradient(matvec, b: list[torch.Tensor], iters: int) -> list[torch.Tensor]:
    """``iters`` CG iterations from 0 on A x = b over lists of tensors (a peer's own, as a user writes it)."""

    def dot(u, v):
        return sum((a * c).sum() for a, c in zip(u, v))

    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = dot(r, r)
    for _ in range(iters):
        Ap = matvec(p)
        alpha = rs / dot(p, Ap)
        x = [a + alpha * c for a, c in zip(x, p)]
        r = [a - alpha * c for a, c in zip(r, Ap)]
        rs_new = dot(r, r)
        p = [a + (rs_new / rs) * c for a, c in zip(r, p)]
        rs = rs_new
    return x


def flatten(grads) -> torch.Tensor:
    """Per-parameter gradients (in ``named_parameters()`` order) as one flat vector, metabench's layout."""
    return torch.cat([g.reshape(-1) for g in grads])

"""The bilevel formulation on fixed features: the head's own bilevel problem, theta = the backbone's features.

In the bilevel formulation g_i = loss(support; theta, phi_i) + reg/2 ||phi_i||^2 and f_i = loss(query; theta,
phi_i), and the network is ``head(backbone(X; theta); phi)``, so both depend on theta only through the features
``z_i = backbone(X_i; theta)`` of the task's support and query inputs::

    g_i = loss(head(z_i^s; phi_i), y_i^s) + reg/2 ||phi_i||^2,      f_i = loss(head(z_i^q; phi_i), y_i^q).

:class:`HeadProblem` is that problem with its theta = z (the features of a chunk of tasks, flattened). Any
meta-gradient an engine computes on it, d/dz, becomes the meta-gradient in theta by one backward through the
backbone, ``grad_theta = (dz/dtheta)' grad_z`` (the chain rule; exact, since every engine's result is linear
in how f and g depend on theta): the inner loop and the linear solve touch the head alone, and the backbone
runs once forward and once backward per task, whatever K is.
"""

from __future__ import annotations

import torch

from metabench.problems.base import BilevelProblem
from metabench.problems.few_shot import network

__all__ = ["HeadProblem", "backbone_features"]


def backbone_features(model, weights: dict, X: torch.Tensor, head: str) -> torch.Tensor:
    """The input of the submodule ``head`` when ``model(X)`` runs with ``weights``, with its graph (a forward hook)."""
    captured = []
    handle = model.get_submodule(head).register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        network.forward(model, weights, X)
    finally:
        handle.remove()
    return captured[-1]


class HeadProblem(BilevelProblem):
    """The head's bilevel problem on the features of ``tasks`` (module docstring): theta is z flattened.

    ``features`` is z with its graph to the parent's theta, shape (len(tasks), n_support + n_query, width);
    the problem keeps the parent's task numbering (``tasks`` are parent indices, so stateful algorithms index
    their state as on the parent) and answers only for those tasks.
    """

    family = "bilevel"
    truth = "none"

    def __init__(self, parent, features: torch.Tensor, tasks: torch.Tensor, labels: dict):
        self.parent = parent
        self.features = features
        self.n_tasks = parent.n_tasks
        self._rows = {int(t): j for j, t in enumerate(tasks)}
        self._n_support = parent.n_support
        self._width = features.shape[-1]
        self.theta_shape = (features.numel(),)
        self.phi_shape = tuple(parent.phi_shape)
        self._data = labels  # y_support, y_query of the tasks, in the rows' order

    def _local(self, tasks) -> torch.Tensor:
        try:
            return torch.tensor([self._rows[int(t)] for t in tasks], dtype=torch.long)
        except KeyError as missing:
            raise ValueError(f"task {missing} is not among this head problem's tasks {sorted(self._rows)}") from None

    def _losses(self, theta, phi, tasks, query: bool) -> torch.Tensor:
        rows = self._local(tasks)
        z = theta.view(len(self._rows), -1, self._width)[rows.to(theta.device)]
        z = z[:, self._n_support :] if query else z[:, : self._n_support]
        y = self._data["y_query" if query else "y_support"][rows.to(self._data["y_query"].device)]
        parent = self.parent
        return torch.stack(
            [
                network.head_loss(z_i, y_i, phi_i, parent.head, parent._phi_spec, parent.loss)
                for z_i, y_i, phi_i in zip(z.unbind(0), y.unbind(0), phi.unbind(0))
            ]
        )

    def inner_loss(self, theta, phi, tasks):
        return self._losses(theta, phi, tasks, query=False) + 0.5 * self.parent.reg * phi.pow(2).sum(-1)

    def outer_loss(self, theta, phi, tasks):
        return self._losses(theta, phi, tasks, query=True)

    def inner_init(self, theta, tasks):
        return theta.new_zeros(len(tasks), *self.phi_shape)

    @property
    def inner_strongly_convex(self) -> bool:
        return True

    def default_task_chunk(self, theta: torch.Tensor) -> int | None:
        return None

    def describe(self) -> dict:
        return self.parent.describe()

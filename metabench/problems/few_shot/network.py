"""The network side of a few-shot problem: flat vectors <-> named weights, the functional call, the data loss.

A user's ``nn.Module`` is evaluated functionally (``torch.func.functional_call``) with its weights taken from
flat vectors. A *spec*, a list of ``(name, shape, numel)`` in ``model.named_parameters()`` order, tells how a
vector splits into the module's parameters: ``torch.split`` + ``view`` (views, no copies). The data loss is
the mean cross-entropy of logits against integer labels, or the mean squared error against targets.

Nothing here knows about tasks, formulations or algorithms.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = [
    "Spec",
    "data_loss",
    "detect_norm",
    "find_head",
    "forward",
    "head_inputs",
    "head_loss",
    "prepare_model",
    "views",
]

#: ``[(name, shape, numel), ...]``: how a flat vector splits into named weights.
Spec = list[tuple[str, tuple[int, ...], int]]


def prepare_model(model: nn.Module) -> tuple[nn.Module, Spec]:
    """A private copy of ``model`` in eval mode with frozen parameters, and its spec.

    Raises ValueError for a layer that keeps running statistics (its output would depend on call history)
    and for a model without parameters. The copy's own weights are never used in a loss: views of flat
    vectors are passed to :func:`forward` instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False):
            raise ValueError(
                f"model layer {name!r} ({type(module).__name__}) keeps running statistics, so its output "
                "depends on call history; build it with track_running_stats=False (as MAML does)"
            )
    params = dict(model.named_parameters())
    if not params:
        raise ValueError("model has no parameters")
    spec = [(name, tuple(p.shape), p.numel()) for name, p in params.items()]
    for p in params.values():
        p.requires_grad_(False)
    return model, spec


def views(flat: torch.Tensor, spec: Spec) -> dict[str, torch.Tensor]:
    """Named views of a flat vector (its last dimension) per ``spec``: ``torch.split`` + ``view``, no copies."""
    parts = torch.split(flat, [s[2] for s in spec], dim=-1)
    lead = flat.shape[:-1]
    return {name: part.view(*lead, *shape) for (name, shape, _), part in zip(spec, parts)}


def forward(model: nn.Module, weights: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """model(X) with its parameters (and buffers) replaced by ``weights`` (``functional_call``)."""
    return functional_call(model, weights, (X,))


def data_loss(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """mean_j CE(out_j, y_j) for ``loss="cross_entropy"``, mean ||out - y||^2 / numel for ``"mse"``."""
    if loss == "cross_entropy":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y)


def detect_norm(model: nn.Module) -> str:
    """``"batch"``, ``"group"``, ``"none"`` or ``"mixed"``: the normalisation layers the model holds."""
    kinds = {
        "batch" if isinstance(m, nn.modules.batchnorm._BatchNorm) else "group"
        for m in model.modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
    }
    return kinds.pop() if len(kinds) == 1 else ("none" if not kinds else "mixed")


def find_head(model: nn.Module, head: str | None, required: bool) -> str | None:
    """The name of the linear head: ``head`` if given (checked), else the model's last ``nn.Linear``.

    Returns None when the model has no ``nn.Linear`` and none is ``required``.
    """
    if head is None:
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            if not required:
                return None
            raise ValueError("model has no nn.Linear layer to serve as the head; pass head='module name'")
        return linears[-1]
    try:
        module = model.get_submodule(head)
    except AttributeError:
        raise ValueError(f"head must name a submodule of model, got {head!r}") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(f"head must name an nn.Linear layer, got {head!r} ({type(module).__name__})")
    return head


def head_loss(feats: torch.Tensor, y: torch.Tensor, phi: torch.Tensor, head: str, spec: Spec, loss: str):
    """data_loss(feats W' + b, y) with the head's weight W and bias b viewed from the flat ``phi``."""
    w = views(phi, spec)
    return data_loss(F.linear(feats, w[f"{head}.weight"], w.get(f"{head}.bias")), y, loss)


def head_inputs(model: nn.Module, weights: dict[str, torch.Tensor], X: torch.Tensor, head: str) -> torch.Tensor:
    """The input of the submodule ``head`` when model(X) runs with ``weights`` (a forward hook; no graph)."""
    captured = []
    handle = model.get_submodule(head).register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        with torch.no_grad():
            forward(model, weights, X)
    finally:
        handle.remove()
    return captured[-1]

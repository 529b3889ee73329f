"""The two ways an outside meta-gradient function is written, and how certification calls it.

1. **functional**: ``meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, **hyper)`` for one
   task. ``theta`` is a fresh leaf tensor with ``requires_grad=True``; ``inner_loss(theta, phi)`` is
   g(theta, phi) = 1/(2n) ||X_tr phi - y_tr||^2 + lam/2 ||phi - theta||^2 and ``outer_loss(theta, phi)`` is
   f = 1/(2m) ||X_val phi - y_val||^2, both scalar tensors; ``phi0(theta)`` returns the inner start (theta
   itself). It returns d outer_loss(theta, phi_K(theta)) / d theta, a tensor of theta's shape.
2. **module**: ``meta_grad(model, loss_fn, support, query, inner_steps, inner_lr, **hyper)``, as
   higher / learn2learn / TorchOpt loops are written. ``model`` is ``nn.Linear(dim, 1, bias=False)`` whose
   weight is theta, ``loss_fn(prediction, target)`` is half the mean squared error, ``support = (X_tr,
   y_tr)`` and ``query = (X_val, y_val)`` with targets of shape (rows, 1). It returns the meta-gradient of
   the weight: a tensor, a list with one tensor per parameter, or None after calling ``.backward()`` (the
   gradient is then read from ``model.weight.grad``).

Extra keyword parameters the function declares are filled in by name: the proximal weight (``lam``, ...) gets
the problem's lam (a module-shaped function without one is run on lam = 0 problems, plain MAML), an iteration
count (``cg_iters``, ...) is swept to see whether an implicit method converges, and ``hyper`` passes fixed
values for the rest. A parameter that none of these fill and that has no default is an error naming it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["FUNCTIONAL", "ITERATION_NAMES", "MODULE", "PROXIMAL_NAMES", "SHAPES", "Target", "inspect_target"]

FUNCTIONAL, MODULE = "functional", "module"
SHAPES = (FUNCTIONAL, MODULE)
#: Parameter names read as the number of iterations of an implicit solve (swept by certification).
ITERATION_NAMES = (
    "cg_iters",
    "cg_steps",
    "cg_iterations",
    "n_cg",
    "solver_iters",
    "solver_steps",
    "neumann_terms",
    "neumann_steps",
    "n_iters",
    "iters",
    "max_iter",
)
#: Parameter names read as the proximal weight lam of g = Lhat + lam/2 ||phi - theta||^2.
PROXIMAL_NAMES = ("lam", "lamb", "lambda_", "reg_lambda", "prox_lam", "proximal")
_FIRST = {FUNCTIONAL: ("theta", "params", "meta_params", "w"), MODULE: ("model", "module", "net", "network", "learner")}
_POSITIONAL = {
    FUNCTIONAL: "theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr",
    MODULE: "model, loss_fn, support, query, inner_steps, inner_lr",
}


@dataclass
class Target:
    """An outside function ready to be called on a case: its shape, the names of its iteration and proximal
    parameters (None if it declares none) and the fixed hyper-parameters passed to every call."""

    fn: object
    name: str
    shape: str
    iteration_param: str | None = None
    proximal_param: str | None = None
    hyper: dict = field(default_factory=dict)

    @property
    def proximal(self) -> bool:
        """Whether the problems have lam > 0: always in the functional shape (inner_loss carries the term);
        in the module shape only when the function takes the proximal weight."""
        return self.shape == FUNCTIONAL or self.proximal_param is not None

    def call(self, problem, theta: torch.Tensor, inner_steps: int, inner_lr: float, iterations: int | None = None):
        """``(gradient, calls)``: the function's meta-gradient at ``theta`` (flat, its own dtype) and how many times
        it evaluated each loss (``{"inner_loss": n, "outer_loss": m}``, or ``{}`` when it cannot be seen)."""
        hyper = dict(self.hyper)
        if self.proximal_param is not None:
            hyper[self.proximal_param] = problem.lam
        if iterations is not None and self.iteration_param is not None:
            hyper[self.iteration_param] = iterations
        if self.shape == FUNCTIONAL:
            return _call_functional(self.fn, problem, theta, inner_steps, inner_lr, hyper)
        return _call_module(self.fn, problem, theta, inner_steps, inner_lr, hyper), {}


def inspect_target(fn, shape: str | None = None, hyper: dict | None = None, iteration_param: str | None = None):
    """A :class:`Target` for ``fn``: its shape (given, or told from its first parameter's name), its iteration
    and proximal parameters, and ``hyper`` checked against its signature. Raises TypeError/ValueError naming
    what does not fit."""
    if not callable(fn):
        raise TypeError(f"the function to certify must be callable, got {type(fn).__name__}")
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as error:
        raise TypeError(f"cannot read the signature of {name}: {error}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if shape is None:
        shape = _tell_shape(name, positional)
    elif shape not in SHAPES:
        raise ValueError(f"shape must be one of {list(SHAPES)}, got {shape!r}")
    if len(positional) < 6 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise TypeError(
            f"{name}({', '.join(p.name for p in positional)}) takes {len(positional)} positional parameters; the "
            f"{shape} shape calls it as {name}({_POSITIONAL[shape]}, **hyper)"
        )
    extra = {p.name: p for p in params[6:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params)
    hyper = dict(hyper or {})
    unknown = [k for k in hyper if k not in extra and not takes_kwargs]
    if unknown:
        raise ValueError(f"hyper names {unknown}, which {name} does not take; it takes {sorted(extra) or 'none'}")
    if iteration_param is not None and iteration_param not in extra and not takes_kwargs:
        raise ValueError(f"iteration_param {iteration_param!r} is not a parameter of {name}; it takes {sorted(extra)}")
    if iteration_param is None:
        iteration_param = next((n for n in ITERATION_NAMES if n in extra and n not in hyper), None)
    proximal = next((n for n in PROXIMAL_NAMES if n in extra and n not in hyper), None)
    filled = set(hyper) | {iteration_param, proximal}
    missing = [n for n, p in extra.items() if p.default is p.empty and n not in filled]
    if missing:
        raise ValueError(
            f"{name} has required parameters {missing} that certification cannot fill: pass them as hyper "
            f"(--hyper NAME=VALUE); it fills {', '.join(PROXIMAL_NAMES[:1] + ITERATION_NAMES[:1])} and their "
            "synonyms itself"
        )
    return Target(fn, name, shape, iteration_param, proximal, hyper)


def _tell_shape(name: str, positional) -> str:
    first = positional[0].name if positional else ""
    second = positional[1].name if len(positional) > 1 else ""
    for shape, names in _FIRST.items():
        if first in names:
            return shape
    if "inner" in second:
        return FUNCTIONAL
    if "loss" in second:
        return MODULE
    raise TypeError(
        f"cannot tell the shape of {name}({', '.join(p.name for p in positional)}) from its parameter names; pass "
        f"shape='functional' ({_POSITIONAL[FUNCTIONAL]}) or shape='module' ({_POSITIONAL[MODULE]}) (--shape)"
    )


def _call_functional(fn, problem, theta, inner_steps, inner_lr, hyper):
    tasks = problem.task_index()
    calls = {"inner_loss": 0, "outer_loss": 0}

    def inner_loss(theta, phi):
        calls["inner_loss"] += 1
        return problem.inner_loss(theta, phi.reshape(1, -1), tasks)[0]

    def outer_loss(theta, phi):
        calls["outer_loss"] += 1
        return problem.outer_loss(theta, phi.reshape(1, -1), tasks)[0]

    def phi0(theta):
        return theta

    leaf = theta.detach().clone().requires_grad_(True)
    out = fn(leaf, inner_loss, outer_loss, phi0, inner_steps, inner_lr, **hyper)
    if out is None:
        out = leaf.grad
    return _flat(out, theta, "the function"), calls


def _call_module(fn, problem, theta, inner_steps, inner_lr, hyper):
    data = problem.batch_data(theta, problem.task_index())
    model = nn.Linear(problem.dim, 1, bias=False).to(dtype=theta.dtype, device=theta.device)
    with torch.no_grad():
        model.weight.copy_(theta.reshape(1, -1))

    def loss_fn(prediction, target):
        return 0.5 * torch.nn.functional.mse_loss(prediction, target)

    support = (data["X_tr"][0], data["y_tr"][0].unsqueeze(-1))
    query = (data["X_val"][0], data["y_val"][0].unsqueeze(-1))
    out = fn(model, loss_fn, support, query, inner_steps, inner_lr, **hyper)
    if out is None:
        out = model.weight.grad
    if isinstance(out, dict):
        out = list(out.values())
    return _flat(out, theta, "the function")


def _flat(out, theta: torch.Tensor, who: str) -> torch.Tensor:
    if out is None:
        raise ValueError(f"{who} returned None and left no gradient on theta: return the meta-gradient")
    if isinstance(out, (list, tuple)):
        if len(out) != 1 or out[0] is None:
            raise ValueError(f"{who} returned {len(out)} gradients; a linear model has one parameter (the weight)")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{who} returned a {type(out).__name__}, not a tensor")
    if out.numel() != theta.numel():
        raise ValueError(f"{who} returned a gradient of shape {tuple(out.shape)}; theta has shape {tuple(theta.shape)}")
    return out.detach().reshape(-1)

"""The only way algorithms touch a problem: gradients and second-order products, counted as performed.

iMAML's Table 1 states compute in oracle calls, so the counts are results, and they are counted
here, where the calls happen, never declared by an algorithm. One :class:`Oracle` serves one
hypergradient computation on a batch of tasks (a chunk of them); every call is batched over those
n tasks and counts n, one per task:

- ``inner_grad(theta, phi)``: grad_phi g_i(theta, phi_i)                       -> ``inner_grads``
  With ``differentiable=True`` the gradient keeps its graph (create_graph) so the step that uses it
  can be back-propagated; each backward pass through it is one ``hvps`` (that backward yields the
  d2g/dphi2 and d2g/(dtheta dphi) products together), counted by a hook when it happens.
- ``outer_grad(theta, phi, wrt)``: the gradients of sum_i f_i with respect to ``wrt`` (one backward,
  through whatever graph phi carries)                                           -> ``outer_grads``
- ``linearize(theta, phi)``: the inner gradient at phi with its graph           -> ``inner_grads``
  and, on the returned :class:`Linearization`, ``hvp(u)`` = d2g_i/dphi2 u_i        -> ``hvps``
  and ``cross(v)`` = d2g_i/(dtheta dphi) v_i, summed over tasks (the AID term)   -> ``jvps``
- ``inner_hvp(theta, phi, u)``: a Hessian-vector product at a point (an inner solver's Newton step)
  -> ``inner_grads`` + ``hvps``.

**How a Hessian-vector product is formed** (``linearize(..., hvp=MODE)``, ``HVP_MODES``): ``"reverse"``
(default) back-propagates u through the inner gradient's graph, built once at ``linearize`` and reused by
every product (reverse over reverse); ``"reverse_rebuild"`` builds that graph again for each product;
``"forward_over_reverse"`` is ``torch.func.jvp`` of ``torch.func.grad``; ``"reverse_over_forward"`` is
``torch.func.grad`` of the directional derivative ``torch.func.jvp(g, phi, u)``. All compute d2g/dphi2 u
in exact arithmetic; ``metabench.hvp_check`` checks each against "reverse" in float64 on a model before
trusting it, and times them. Each product counts one ``hvps`` whatever the mode.

``inner_init`` (phi0(theta)) and the problem's shapes are read without counting. ``.counts`` is
what was counted so far, as :class:`OracleCounts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "HVP_MODES",
    "HVP_TOL",
    "TORCH_FUNC_MODES",
    "Linearization",
    "Oracle",
    "OracleCounts",
    "check_hvp_modes",
    "require_hvp_mode",
]

HVP_MODES = ("reverse", "reverse_rebuild", "forward_over_reverse", "reverse_over_forward")
#: the modes formed by torch.func transforms (probed under a dispatch mode: ``check_hvp_modes``)
TORCH_FUNC_MODES = ("forward_over_reverse", "reverse_over_forward")
#: a mode agrees with reverse mode when its float64 relative error is below this (round-off is ~1e-12)
HVP_TOL = 1e-8


@dataclass(frozen=True)
class OracleCounts:
    """Oracle calls of one hypergradient, summed over the tasks of the call (see the module docstring)."""

    inner_grads: int = 0
    outer_grads: int = 0
    hvps: int = 0
    jvps: int = 0

    def __add__(self, other: OracleCounts) -> OracleCounts:
        return OracleCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.inner_grads, self.outer_grads, self.hvps, self.jvps)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Oracle:
    """Counted access to ``problem`` on the tasks ``tasks`` (a 1-D index tensor) of one computation."""

    def __init__(self, problem, tasks: torch.Tensor, compiled=None):
        self._problem = problem
        self.tasks = tasks
        self._compiled = compiled  # a CompiledInnerLoss for untracked inner gradients (option compile="on")
        self.compiled_used = False
        self.n = len(tasks)
        self._counts = {"inner_grads": 0, "outer_grads": 0, "hvps": 0, "jvps": 0}

    # ------------------------------------------------------------------ what may be read freely
    @property
    def counts(self) -> OracleCounts:
        return OracleCounts(**self._counts)

    @property
    def n_tasks(self) -> int:
        """Tasks in the whole problem (not only this call's)."""
        return self._problem.n_tasks

    @property
    def phi_shape(self) -> tuple[int, ...]:
        return tuple(self._problem.phi_shape)

    def inner_init(self, theta: torch.Tensor) -> torch.Tensor:
        """phi0_i(theta) stacked over the tasks (keeps its graph to theta; not an oracle call)."""
        return self._problem.inner_init(theta, self.tasks)

    def _count(self, kind: str) -> None:
        self._counts[kind] += self.n

    # ------------------------------------------------------------------ counted calls
    def inner_grad(self, theta: torch.Tensor, phi: torch.Tensor, *, differentiable: bool = False):
        """(g_i(theta, phi_i), grad_phi g_i(theta, phi_i)) stacked over tasks; the loss values are detached.

        ``differentiable=False``: both are computed at detached theta and phi, without a graph (through
        ``torch.compile`` when the oracle was given a ``compiled`` inner loss: ``algorithms/compiled_step.py``).
        ``differentiable=True``: the gradient keeps its graph to theta and phi (create_graph), and each
        backward pass through it is counted as one Hessian-vector product per task.
        """
        self._count("inner_grads")
        with torch.enable_grad():
            if differentiable:
                phi_in = phi if phi.requires_grad else phi.detach().requires_grad_(True)
                loss = self._problem.inner_loss(theta, phi_in, self.tasks)
                (grad,) = torch.autograd.grad(loss.sum(), phi_in, create_graph=True)
                if grad.requires_grad:
                    grad.register_hook(self._backward_through_inner_grad)
                return loss.detach(), grad
            if self._compiled is not None:
                self.compiled_used = True
                return self._compiled.grad(theta, phi, self.tasks)
            phi_in = phi.detach().requires_grad_(True)
            loss = self._problem.inner_loss(theta.detach(), phi_in, self.tasks)
            (grad,) = torch.autograd.grad(loss.sum(), phi_in)
        return loss.detach(), grad

    def _backward_through_inner_grad(self, grad_of_grad: torch.Tensor) -> None:
        self._count("hvps")

    def outer_grad(self, theta: torch.Tensor, phi: torch.Tensor, wrt: tuple[torch.Tensor, ...]):
        """d/d(wrt) of sum_i f_i(theta, phi_i), one backward (through phi's graph, if it has one).

        The sum, not the mean: its gradient with respect to phi is the stack of the per-task gradients
        grad_phi f_i, whatever the number of tasks in the call. Returns one gradient per tensor of ``wrt``,
        None where f does not depend on it (nothing is allocated for a gradient that is zero: on the MAML
        family f_i = L_i(phi) has no theta term)."""
        self._count("outer_grads")
        with torch.enable_grad():
            loss = self._problem.outer_loss(theta, phi, self.tasks).sum()
            return torch.autograd.grad(loss, wrt, allow_unused=True)

    def linearize(self, theta: torch.Tensor, phi: torch.Tensor, hvp: str = "reverse") -> Linearization:
        """The inner gradient at (theta, phi) with its graph, for products with the inner Hessian at phi
        formed in mode ``hvp`` (module docstring)."""
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {list(HVP_MODES)}, got {hvp!r}")
        self._count("inner_grads")
        theta_in = theta.detach().requires_grad_(True)
        phi_in = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self._problem.inner_loss(theta_in, phi_in, self.tasks)
            (grad,) = torch.autograd.grad(loss.sum(), phi_in, create_graph=True)
        return Linearization(self, theta_in, phi_in, loss.detach(), grad, hvp)

    def inner_hvp(self, theta: torch.Tensor, phi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """d2g_i/dphi2 (theta, phi_i) u_i, stacked over tasks (one inner gradient and one product per task)."""
        return self.linearize(theta, phi).hvp(u)


class Linearization:
    """The inner gradient at one point, kept with its graph: products with the inner Hessian there."""

    def __init__(self, oracle: Oracle, theta, phi, loss, grad, mode: str = "reverse"):
        self._oracle, self.theta, self.phi, self.loss, self.grad = oracle, theta, phi, loss, grad
        self.mode = mode

    def _g(self, phi: torch.Tensor) -> torch.Tensor:
        """sum_i g_i(theta, phi_i) at the linearization's theta (held constant)."""
        return self._oracle._problem.inner_loss(self.theta.detach(), phi, self._oracle.tasks).sum()

    def hvp(self, u: torch.Tensor) -> torch.Tensor:
        """d2g_i/dphi2 u_i stacked over tasks (no graph kept), formed in this linearization's mode."""
        self._oracle._count("hvps")
        u = u.detach()
        with torch.enable_grad():
            if self.mode == "reverse":
                (product,) = torch.autograd.grad(self.grad, self.phi, grad_outputs=u, retain_graph=True)
            elif self.mode == "reverse_rebuild":
                phi = self.phi.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self._g(phi), phi, create_graph=True)
                (product,) = torch.autograd.grad(grad, phi, grad_outputs=u)
            elif self.mode == "forward_over_reverse":
                _, product = torch.func.jvp(torch.func.grad(self._g), (self.phi.detach(),), (u,))
            else:  # reverse_over_forward
                product = torch.func.grad(lambda p: torch.func.jvp(self._g, (p,), (u,))[1])(self.phi.detach())
        return product.detach()

    def cross(self, v: torch.Tensor) -> torch.Tensor:
        """sum_i d2g_i/(dtheta dphi) v_i, theta's shape (zeros if g does not couple theta and phi)."""
        self._oracle._count("jvps")
        with torch.enable_grad():
            (product,) = torch.autograd.grad(
                self.grad, self.theta, grad_outputs=v.detach(), retain_graph=True, allow_unused=True
            )
        return torch.zeros_like(self.theta) if product is None else product


# ---------------------------------------------------------------------- is a mode right on this model?
def hvp_point(problem, theta: torch.Tensor, seed: int):
    """(tasks, phi, u): all tasks, phi0(theta) moved by 0.01 x noise, and a random direction (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    tasks = problem.task_index()
    phi = problem.inner_init(theta, tasks).detach().clone()
    phi = phi + 0.01 * torch.randn(phi.shape, generator=gen, dtype=torch.float64).to(phi)
    u = torch.randn(phi.shape, generator=gen, dtype=torch.float64).to(phi)
    return tasks, phi, u


class _PassThrough(TorchDispatchMode):
    """A dispatch mode that only calls each op: what any measuring mode does at the least."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _dispatch_probe(problem, theta, tasks, phi, u, mode: str) -> str | None:
    """None if one product in ``mode`` runs under a TorchDispatchMode, else why not. Run in a forked child: in
    torch 2.13 "reverse_over_forward" on the sinusoid MLP dies with a segfault under any dispatch mode (a
    pass-through one too), and metabench's live-tensor tracker and FLOP counter are dispatch modes."""
    from metabench.measure.forked import run_forked

    def one() -> bool:
        lin = Oracle(problem, tasks).linearize(theta, phi, hvp=mode)
        with _PassThrough():
            lin.hvp(u)
        return True

    ran, why = run_forked(one)
    return None if ran else f"one product under a TorchDispatchMode (as the memory and FLOP instruments are): {why}"


def check_hvp_modes(
    problem, theta: torch.Tensor, seed: int = 0, directions: int = 2, probe_dispatch: bool = True
) -> dict[str, dict]:
    """Every mode against "reverse" in float64: ``{mode: {"rel_error", "agree", "error", "dispatch_error"}}``, the
    worst relative error over ``directions`` random directions (agree: <= ``HVP_TOL``), or the exception a mode
    raised on this model (``error``; rel_error None, agree False). torch 2.13, measured: "reverse_over_forward" is
    wrong through ``F.batch_norm`` with batch statistics (the reverse derivative of its forward-mode tangent
    disagrees with finite differences of that tangent), "forward_over_reverse" raises "ZeroTensors are immutable"
    on a ReLU MLP. With ``probe_dispatch``, each agreeing mode of ``TORCH_FUNC_MODES`` is also run once under a
    dispatch mode in a forked child (``dispatch_error``: None, or why it died there: "reverse_over_forward" on the
    ReLU MLP segfaults)."""
    if theta.dtype != torch.float64:
        raise ValueError(f"the HVP check runs in float64 (round-off far below a wrong product); got {theta.dtype}")
    tasks, phi, _ = hvp_point(problem, theta, seed)
    ref_lin = Oracle(problem, tasks).linearize(theta, phi)
    directions_u = [hvp_point(problem, theta, seed + 1 + d)[2] for d in range(directions)]
    refs = [ref_lin.hvp(u) for u in directions_u]
    out = {}
    for mode in HVP_MODES:
        try:
            lin = Oracle(problem, tasks).linearize(theta, phi, hvp=mode)
            worst = max(float((lin.hvp(u) - r).norm() / r.norm()) for u, r in zip(directions_u, refs))
        except Exception as error:  # noqa: BLE001 - a mode torch cannot run here is a finding, not a crash
            out[mode] = {
                "rel_error": None,
                "agree": False,
                "error": f"{type(error).__name__}: {error}".split("\n")[0],
                "dispatch_error": None,
            }
            continue
        agree = worst <= HVP_TOL
        probe = probe_dispatch and agree and mode in TORCH_FUNC_MODES
        dispatch_error = _dispatch_probe(problem, theta, tasks, phi, directions_u[0], mode) if probe else None
        out[mode] = {"rel_error": worst, "agree": agree, "error": None, "dispatch_error": dispatch_error}
    return out


def require_hvp_mode(problem, mode: str) -> None:
    """Raise ValueError unless ``mode`` agrees with reverse mode on ``problem`` and runs under a dispatch mode there
    (checked once per problem, in float64 at the problem's initial theta, or theta = 0; the verdict is cached on
    the problem)."""
    if mode == "reverse":
        return
    cache = problem.__dict__.setdefault("_hvp_checks", {})
    if mode not in cache:
        start = problem.initial_theta() if hasattr(problem, "initial_theta") else torch.zeros(problem.theta_shape)
        cache.update(check_hvp_modes(problem, start.detach().to(torch.float64)))
    verdict = cache[mode]
    if verdict.get("dispatch_error"):
        raise ValueError(
            f"hvp={mode!r} computes the Hessian-vector product on this model, but torch cannot run it under a "
            f"dispatch mode here ({verdict['dispatch_error']}), so metabench could not measure its memory or FLOPs "
            "without the process dying; use hvp='reverse' (python -m metabench.hvp_check tabulates every mode)"
        )
    if not verdict["agree"]:
        why = verdict["error"] or f"relative error {verdict['rel_error']:.3g} to reverse mode in float64"
        raise ValueError(
            f"hvp={mode!r} does not compute the Hessian-vector product on this model ({why}); use hvp='reverse' "
            "(python -m metabench.hvp_check tabulates every mode)"
        )

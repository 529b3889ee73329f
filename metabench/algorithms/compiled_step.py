"""The untracked inner gradient under ``torch.compile``, checked against eager before it is trusted.

Option ``compile="on"``: every inner gradient taken without a graph (``Oracle.inner_grad(...,
differentiable=False)``: all of fomaml's, imaml's and rm_metal's inner steps, truncated's first K - T)
evaluates g_i through ``torch.compile(problem.inner_loss)``, and its backward is AOTAutograd's compiled
backward. Differentiated steps (MAML's, ITD-BiO's, truncated's last T) stay eager: double backward under
compile raises in torch 2.13 (``reports/structure/compile.md``) and has been silently wrong in other
versions.

**The check.** The first compiled gradient of a problem (in a dtype) is compared with the eager one at the
same point: if ||grad_compiled - grad_eager|| > ``COMPILE_TOL[dtype]`` ||grad_eager||, or compiling raises,
that problem runs eager for the rest of the process and every result says why (``compile`` = "eager: ...").
The result's ``compile`` says what ran: "off", "compiled", "unused" (no untracked inner gradient in the
call, e.g. maml) or "eager: <reason>"; ``compile_s`` is the first compiled call's time in that dtype (tracing
and code generation), which a sweep's warm-up call absorbs and the record states. Gathering a batch's data
(``BilevelProblem.batch_data``) stays outside the compiled graph.

**What dynamo would hide.** torch.compile falls back to eager without a word in three ways, and each is caught
here: past its recompile limit (raises instead, the problem runs eager and says so; each problem compiles a
copy of ``inner_loss``'s code of its own, so problems do not add up to that limit, and compiles with static
shapes: automatic dynamic shapes made inductor raise on the second problem), when a frame ran under a
``TorchDispatchMode`` (dynamo then skips that code for the rest of the process), and whenever no compiled graph
ran (the backend counts its graphs' executions). Under a dispatch mode, such as the live-tensor tracker of the
``memory`` instrument, the inner gradients run eager: a compiled case's ``live_peak_bytes`` is its eager steps'.
"""

from __future__ import annotations

import time
import types
import weakref

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["COMPILE_TOL", "CompiledInnerLoss", "compiled_inner_loss"]

#: torch.compile's backend (tests swap in "aot_eager", which traces and compiles the backward without C++ code
#: generation; the slow suite checks "inductor" itself)
BACKEND = "inductor"

#: the compiled gradient agrees with eager when its relative difference is below this
COMPILE_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}

_BY_PROBLEM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CompiledInnerLoss:
    """``problem.inner_loss`` under torch.compile, with its verdict per dtype (module docstring)."""

    def __init__(self, problem):
        self._problem = problem
        self._compiled = None
        self.graph_runs = 0  # compiled graphs executed: a call that ran none ran eager, whatever dynamo said
        self.verdict: dict[torch.dtype, str] = {}
        self.compile_s: dict[torch.dtype, float] = {}

    def status(self, dtype: torch.dtype) -> str | None:
        """ "compiled", "eager: <reason>", or None before the first use in ``dtype``."""
        return self.verdict.get(dtype)

    def grad(self, theta: torch.Tensor, phi: torch.Tensor, tasks: torch.Tensor):
        """(g_i, grad_phi g_i) at detached theta and phi, compiled where the check passed, eager otherwise."""
        dtype = phi.dtype
        if _get_current_dispatch_mode() is not None:  # a measuring mode: eager (module docstring)
            return _grad(self._problem.inner_loss, theta, phi, tasks)
        if dtype not in self.verdict:
            return self._first(theta, phi, tasks)
        if self.verdict[dtype] != "compiled":
            return _grad(self._problem.inner_loss, theta, phi, tasks)
        try:
            return self._compiled_grad(theta, phi, tasks)
        except Exception as error:  # noqa: BLE001 - e.g. a recompile (new shapes) that fails: eager from here on
            self.verdict[dtype] = _raised(error)
            return _grad(self._problem.inner_loss, theta, phi, tasks)

    def _first(self, theta, phi, tasks):
        dtype = phi.dtype
        eager = _grad(self._problem.inner_loss, theta, phi, tasks)
        tol = COMPILE_TOL.get(dtype)
        if tol is None:
            self.verdict[dtype] = f"eager: no compile check for {dtype}"
            return eager
        try:
            if self._compiled is None:
                self._compiled = torch.compile(
                    _own_code(self._problem.inner_loss), backend=self._counting_backend, dynamic=False
                )
            start = time.perf_counter()
            compiled = self._compiled_grad(theta, phi, tasks)
            self.compile_s[dtype] = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - any failure to compile means eager, said in the record
            self.verdict[dtype] = _raised(error)
            return eager
        scale = float(eager[1].norm())
        diff = float((compiled[1] - eager[1]).norm())
        if not diff <= tol * max(scale, torch.finfo(dtype).tiny):
            self.verdict[dtype] = (
                f"eager: compiled gradient differs from eager by {diff / max(scale, 1e-300):.1e} (tol {tol:g})"
            )
            return eager
        self.verdict[dtype] = "compiled"
        return eager

    def _compiled_grad(self, theta, phi, tasks):
        """``_grad`` through the compiled loss. Raises where dynamo would silently run it eagerly instead: past its
        recompile limit (new shapes, e.g. a last chunk of fewer tasks, recompile), or when no compiled graph ran
        (dynamo marks a frame it once met under a dispatch mode as skipped for good)."""
        before = self.graph_runs
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            out = _grad(self._compiled, theta, phi, tasks)
        if self.graph_runs == before:
            raise RuntimeError("no compiled graph ran: dynamo skipped the inner loss")
        return out

    def _counting_backend(self, graph, example_inputs):
        """``BACKEND``'s compiled graph, counting its executions in ``graph_runs``."""
        compiled = torch._dynamo.lookup_backend(BACKEND)(graph, example_inputs)

        def run(*args):
            self.graph_runs += 1
            return compiled(*args)

        if getattr(compiled, "_boxed_call", False):
            run._boxed_call = True
        return run


def _own_code(method):
    """``method`` with a code object of its own: dynamo keeps its compiled entries and recompile limit per code
    object, and every problem object would otherwise be one more guard on the one ``inner_loss`` of its class."""
    fn = getattr(method, "__func__", method)
    clone = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(clone, method.__self__) if hasattr(method, "__self__") else clone


def _raised(error: Exception) -> str:
    """The record's reason: the error, and the one at the root of it (dynamo wraps a backend's error)."""
    root = error
    while getattr(root, "inner_exception", None) or root.__cause__:
        root = getattr(root, "inner_exception", None) or root.__cause__
    first = (str(root).strip().splitlines() or [""])[0][:200]
    via = "" if root is error else f"{type(error).__name__}: "
    return f"eager: torch.compile raised {via}{type(root).__name__}: {first}"


def _grad(loss_fn, theta, phi, tasks):
    phi_in = phi.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(theta.detach(), phi_in, tasks)
        (grad,) = torch.autograd.grad(loss.sum(), phi_in)
    return loss.detach(), grad


def compiled_inner_loss(problem) -> CompiledInnerLoss:
    """The one :class:`CompiledInnerLoss` of ``problem`` in this process (compiled once, checked once per dtype)."""
    if problem not in _BY_PROBLEM:
        _BY_PROBLEM[problem] = CompiledInnerLoss(problem)
    return _BY_PROBLEM[problem]

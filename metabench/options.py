"""Every algorithm option, typed once: its default, its check (naming the accepted range) and its meaning.

Algorithms declare which of these they take (``options_spec = pick("inner_steps", ...)``); sweeps,
records, the CLI, reports and benchmarks read names, defaults and short labels from here instead of
repeating them. ``HEADLINE_OPTIONS`` are the options copied into record columns and case labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metabench._checks import check_int, check_real
from metabench.solvers import INNER_SOLVERS, InnerSolver, LinearSolver

__all__ = ["HEADLINE_OPTIONS", "OPTIONS", "Option", "check_options", "label", "pick"]


@dataclass(frozen=True)
class Option:
    """An accepted option: default, a check returning the cleaned value (or raising), meaning, short label."""

    default: Any
    check: Callable[[str, Any], Any]
    doc: str = ""
    short: str | None = None


def _int(low: int | None = None, high: int | None = None):
    return lambda name, value: check_int(name, value, low=low, high=high)


def _real(low: float | None = None, high: float | None = None, low_open: bool = False):
    return lambda name, value: check_real(name, value, low=low, high=high, low_open=low_open)


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(*choices: str):
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value

    return check


def _inner_solver(name: str, value: Any) -> str | InnerSolver:
    if isinstance(value, InnerSolver):
        return value
    if not isinstance(value, str) or value not in INNER_SOLVERS:
        raise ValueError(f"{name} must be one of {sorted(INNER_SOLVERS)} or an InnerSolver instance, got {value!r}")
    return value


def _linear_solver(name: str, value: Any) -> LinearSolver | None:
    if value is None or isinstance(value, LinearSolver):
        return value
    raise TypeError(
        f"{name} must be None (built from the flat options) or a LinearSolver instance such as "
        f"metabench.solvers.cg(iters=5), got {type(value).__name__} {value!r}"
    )


OPTIONS: dict[str, Option] = {
    "inner_steps": Option(10, _int(low=0), "K, inner solver steps", "K"),
    "inner_lr": Option(0.1, _real(low=0.0, low_open=True), "alpha, inner step size (GD is stable below 2/L)", "lr"),
    "inner_solver": Option(
        "gd", _inner_solver, "'gd', 'nesterov', 'newton_cg' (implicit algorithms), or an InnerSolver instance", "solver"
    ),
    "newton_cg_iters": Option(5, _int(low=1), "CG iterations per Newton step of inner_solver='newton_cg'", "newton-CG"),
    "momentum": Option(
        None, _optional(_real(low=0.0, high=1.0)), "Nesterov's beta in [0, 1]; None: the k/(k+3) schedule", "beta"
    ),
    "task_chunk": Option(
        None, _optional(_int(low=1)), "tasks per autograd graph; None: the problem's default_task_chunk", "chunk"
    ),
    "features": Option(
        "auto",
        _choice("auto", "once", "recompute"),
        "where phi is a head on theta's features: 'once' computes them once per task and runs the inner loop and "
        "the solve on the head alone (the same meta-gradient); 'recompute' re-runs the backbone in every loss; "
        "'auto': once where the problem has that structure",
        "features",
    ),
    "compile": Option(
        "off",
        _choice("off", "on"),
        "'on': the inner gradients that are not differentiated (first-order steps) run under torch.compile, "
        "after a check against eager on first use (falls back to eager, and says so, where it disagrees)",
        "compile",
    ),
    "truncate": Option(5, _int(low=1), "T, the last inner steps back-propagated (1..inner_steps)", "T"),
    "checkpoint_every": Option(
        None, _optional(_int(low=1)), "C, inner steps per recomputed segment; None: round(sqrt(K))", "C"
    ),
    "schedule": Option(
        "sqrt",
        _choice("sqrt", "revolve", "every_step"),
        "checkpoint schedule of maml_checkpointed: 'sqrt' segments, 'revolve' (binomial), 'every_step'",
        "schedule",
    ),
    "snapshots": Option(None, _optional(_int(low=1)), "s, states the revolve schedule stores; None: ceil(log2 K)", "s"),
    "snapshot_memory": Option(
        None,
        _optional(_real(low=0.0, low_open=True)),
        "bytes the revolve schedule may store states in (s = budget // one state's bytes); None: use snapshots",
        "budget",
    ),
    "hvp": Option(
        "reverse",
        _choice("reverse", "reverse_rebuild", "forward_over_reverse", "reverse_over_forward"),
        "how the linear solver's Hessian-vector products are formed (metabench.oracle; checked by metabench.hvp_check)",
        "hvp",
    ),
    "linear_solver": Option(
        None, _linear_solver, "a LinearSolver instance; None: built from the flat options (cg_iters, ...)", "linear"
    ),
    "cg_iters": Option(5, _int(low=0), "conjugate-gradient iterations", "CG"),
    "cg_tol": Option(0.0, _real(low=0.0, high=1.0), "stop CG once ||r|| <= cg_tol ||b|| (0: never early)", "tol"),
    "damping": Option(0.0, _real(low=0.0), "delta >= 0: the linear solve is on (d2g/dphi2 + delta I)", "damping"),
    "cg_breakdown": Option(
        "raise",
        _choice("raise", "stop", "continue"),
        "CG meeting p'Hp <= 0: 'raise' (SolverBreakdown), 'stop' (truncated CG: that task keeps its iterate) or "
        "'continue' (as iMAML's code: ignore it)",
        "on p'Hp<=0",
    ),
    "neumann_iters": Option(10, _int(low=0), "N, Neumann-series terms (Hessian-vector products)", "N"),
    "neumann_lr": Option(
        None, _optional(_real(low=0.0, low_open=True)), "beta, the Neumann series step; None: inner_lr", "beta"
    ),
    "warm_phi": Option(True, _flag, "start the inner solver from the task's last phi_K"),
    "warm_v": Option(True, _flag, "start the linear solver from the task's last v"),
}

#: Options copied from ``options`` into record columns of their own, and shown in case labels.
HEADLINE_OPTIONS = ("inner_steps", "inner_lr", "inner_solver", "truncate", "cg_iters", "neumann_iters")


def label(algorithm: str, options: dict[str, Any]) -> str:
    """A short label of a case, e.g. ``imaml solver=nesterov K=10 CG=5``: the algorithm and its headline options."""
    parts = [str(algorithm)]
    for name in HEADLINE_OPTIONS:
        value = options.get(name)
        if value is None or name == "inner_lr":
            continue
        text = value if isinstance(value, str) else getattr(value, "name", value)
        parts.append(f"{OPTIONS[name].short}={text:g}" if isinstance(text, float) else f"{OPTIONS[name].short}={text}")
    return " ".join(parts)


def pick(*names: str) -> dict[str, Option]:
    """The options ``names`` (an algorithm's ``options_spec``)."""
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise KeyError(f"no such option(s) {unknown}; defined: {sorted(OPTIONS)}")
    return {n: OPTIONS[n] for n in names}


def check_options(owner: str, spec: dict[str, Option], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` merged over the defaults of ``spec`` and checked; an unknown name lists the accepted ones."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise TypeError(f"{owner} got unknown option(s) {unknown}; accepted options: {sorted(spec)}")
    merged = {k: option.default for k, option in spec.items()} | given
    return {k: spec[k].check(k, v) for k, v in merged.items()}

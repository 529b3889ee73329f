"""What an implementation computes on one case: its meta-gradient against every closed-form candidate.

On case c with K inner steps, realised condition number kappa and dtype precision eps, the implementation's
gradient g matches candidate x when ``||g - x|| <= tol max(||x||, s)`` with the round-off tolerance
``tol = min(1e-2, 100 eps (K + 1) kappa)`` (back-propagating K contracting steps of a problem with condition
number kappa loses about that much; measured errors of correct implementations are 1e-15 in float64, 1e-7 in
float32) and s = ||Hv phi_K|| + ||bv||, the size of the terms whose difference is grad L(phi_K): a meta-gradient
far smaller than its terms carries their absolute round-off, not its own (found by the no-false-alarm sweep: a
maml gradient 1e-4 of s had relative error 5e-13). Reported errors are relative to ||x||. It is **zero** when
``||g|| <= tol ||maml||``. The default cases keep every pair of candidates at least 1e-2 apart, far above tol,
so an implementation matches one of them at most.

An **implicit** method solves a linear system approximately, so it is judged by how its error to the exact
solve at phi_K (candidate ``implicit``) behaves: when the function declares an iteration count (``cg_iters``,
...), it is called at 1, 2, 4, ... up to 2 dim iterations, and it is implicit if that error falls (the last is
at most half the first and no step raises it by more than 10%), converged if it ends within tol; without an
iteration count it is implicit if its error at the default is below 0.5 and under half that to any other
candidate (it cannot be seen to fall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from metabench.certify.candidates import FAMILIES, candidate_gradients
from metabench.certify.cases import Case

__all__ = ["CaseResult", "judge_case", "tolerance"]

ROUND_OFF = 100.0
FALLS_BY = 0.5  # the last iteration's error is at most this times the first's
RISE_ALLOWED = 1.1  # no iteration raises the error by more than 10%
APPROXIMATE = 0.5  # without an iteration count: the error to the exact solve is below this ...
CLOSER_BY = 2.0  # ... and this many times below the error to any other candidate


def tolerance(dtype: torch.dtype, inner_steps: int, kappa: float) -> float:
    """The relative error below which two meta-gradients are the same up to round-off (see the module docstring)."""
    return min(1e-2, ROUND_OFF * torch.finfo(dtype).eps * (inner_steps + 1) * kappa)


@dataclass
class CaseResult:
    """One case: ``status`` "ok", "raised" (the function threw: ``message``) or "non-finite"; the relative error to
    each candidate (``errors``, by label); the families matched (``families``; "none" when empty) with the
    truncation Ts of ``truncate`` (T >= K counts as full back-prop, maml); the error to the exact hypergradient
    (``exact_error``); the implicit iteration sweep (``iterations``: (count, error) pairs); loss evaluations."""

    index: int
    case: Case
    kappa: float
    inner_lr: float
    tolerance: float
    status: str = "ok"
    message: str | None = None
    errors: dict = field(default_factory=dict)
    families: list = field(default_factory=list)
    truncate: list = field(default_factory=list)
    heads: list = field(default_factory=list)  # "held" / "first_order", one per matched truncation
    implicit: str | None = None
    iterations: list = field(default_factory=list)
    exact_error: float | None = None
    closest: str | None = None
    scale: float | None = None
    calls: dict = field(default_factory=dict)
    scale_of_terms: float | None = None

    @property
    def label(self) -> str:
        """The family this case shows (the first in FAMILIES order), with T for truncated; "none" if none."""
        if self.status != "ok":
            return self.status
        if not self.families:
            return "none"
        family = self.families[0]
        if family == "truncated" and self.truncate:
            return f"truncated (T = {'/'.join(str(t) for t in self.truncate)})"
        return family

    def error_to(self, family: str) -> float | None:
        """The smallest relative error to a candidate of ``family`` (None if the case has none); for "truncated"
        maml counts too (truncation with T >= K is full back-prop)."""
        names = ("truncated", "maml") if family == "truncated" else (family,)  # T >= K is full back-prop
        values = [e for label, e in self.errors.items() if label.split(" ")[0] in names]
        return min(values) if values else None

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "case": self.case.to_dict(),
            "kappa": self.kappa,
            "inner_lr": self.inner_lr,
            "tolerance": self.tolerance,
            "status": self.status,
            "message": self.message,
            "label": self.label,
            "families": self.families,
            "truncate": self.truncate,
            "heads": self.heads,
            "implicit": self.implicit,
            "iterations": self.iterations,
            "errors": self.errors,
            "exact_error": self.exact_error,
            "closest": self.closest,
            "scale": self.scale,
            "scale_of_terms": self.scale_of_terms,
            "calls": self.calls,
        }


def _rel(g: torch.Tensor, x: torch.Tensor, floor: float) -> float:
    return float((g - x).norm() / max(float(x.norm()), floor))


def judge_case(target, index: int, case: Case) -> CaseResult:
    """Run ``target`` on ``case`` and compare its meta-gradient with every candidate."""
    problem = case.problem()
    theta = case.theta()
    lr = case.inner_lr(problem)
    K = case.inner_steps
    kappa = float(problem.condition_numbers().max())
    result = CaseResult(index, case, kappa, lr, tolerance(theta.dtype, K, kappa))
    candidates, exact, scale = candidate_gradients(problem, theta, K, lr)
    result.scale_of_terms = scale
    maml = candidates[0].grad
    floor = 1e-300 + 1e-12 * float(maml.norm())
    try:
        grad, result.calls = target.call(problem, theta, K, lr)
    except Exception as error:  # noqa: BLE001 - the function under test may raise anything: that is a result
        result.status, result.message = "raised", f"{type(error).__name__}: {error}"
        return result
    grad = grad.to(torch.float64)
    if not bool(torch.isfinite(grad).all()):
        result.status, result.message = "non-finite", "the meta-gradient has NaN or inf entries"
        return result
    tol = result.tolerance
    implicit = None
    for cand in candidates:
        if cand.family == "zero":
            continue
        err = _rel(grad, cand.grad, floor)
        result.errors[cand.label] = err
        if cand.family == "implicit":
            implicit = cand
        if float((grad - cand.grad).norm()) <= tol * max(float(cand.grad.norm()), scale):
            if cand.family == "truncated":
                result.truncate.append(cand.truncate)
                result.heads.append(cand.head)
            _add(result.families, cand.family)
    if "maml" in result.families:
        _add(result.families, "truncated")  # T >= K is full back-prop
    if float(grad.norm()) <= tol * float(maml.norm()):
        _add(result.families, "zero")
    if exact is not None:
        result.exact_error = _rel(grad, exact, floor)
    if implicit is not None:
        _judge_implicit(target, result, problem, theta, implicit, floor)
    result.families.sort(key=FAMILIES.index)
    if not result.families:
        result.closest, result.scale = _closest(grad, candidates, result.errors, floor, tol)
    return result


def _add(families: list, family: str) -> None:
    if family not in families:
        families.append(family)


def _schedule(dim: int) -> list[int]:
    counts, n = [], 1
    while n < 2 * dim:
        counts.append(n)
        n *= 2
    return [*counts, 2 * dim]


def _judge_implicit(target, result: CaseResult, problem, theta, implicit, floor: float) -> None:
    err_default = result.errors[implicit.label]
    tol = result.tolerance * max(1.0, result.scale_of_terms / max(float(implicit.grad.norm()), floor))
    if err_default <= tol:
        result.implicit = "exact"
    if target.iteration_param is None:
        others = [e for label, e in result.errors.items() if label != implicit.label]
        if result.implicit is None and err_default < APPROXIMATE and CLOSER_BY * err_default <= min(others):
            result.implicit = "approximate"
    else:
        case, K = result.case, result.case.inner_steps
        for n in _schedule(case.dim):
            try:
                grad, _ = target.call(problem, theta, K, result.inner_lr, iterations=n)
            except Exception as error:  # noqa: BLE001
                result.message = f"with {target.iteration_param}={n}: {type(error).__name__}: {error}"
                result.implicit = None
                break
            result.iterations.append([n, _rel(grad.to(torch.float64), implicit.grad, floor)])
        errs = [e for _, e in result.iterations]
        if len(errs) == len(_schedule(case.dim)) and all(math.isfinite(e) for e in errs):
            rises = any(b > RISE_ALLOWED * a and b > tol for a, b in zip(errs, errs[1:]))
            if errs[-1] <= tol:
                result.implicit = "converges"
            elif errs[-1] <= FALLS_BY * errs[0] and not rises:
                result.implicit = "falls"
            elif result.implicit != "exact":
                result.implicit = None
    if result.implicit is not None:
        _add(result.families, "implicit")


def _closest(grad, candidates, errors: dict, floor: float, tol: float):
    """The nearest candidate's label, and s if g = s x for some candidate x (a mean taken as a sum, a lost
    factor of 2): then that candidate's label and s."""
    for cand in candidates:
        x = cand.grad
        if cand.family == "zero" or float(x.norm()) <= floor:
            continue
        s = float(grad @ x) / float(x @ x)
        if _rel(grad, s * x, floor) <= max(tol, 1e-6):
            return cand.label, s
    return min(errors, key=errors.get), None

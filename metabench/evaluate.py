"""Errors of a computed hypergradient against the truth its problem offers: exact, or a float64 reference.

A problem says what truth it has (``problem.truth``):

- ``"exact"`` (closed forms): ``rel_error_exact`` = ||g - grad F|| / ||grad F|| with the exact hypergradient
  (where the inner problem is strongly convex), and ``rel_error_algorithm`` = the distance to the exact
  derivative of the algorithm that ran (K GD steps, back-prop through the last T), so that the error of the
  algorithm and the error of the approximation are told apart.
- ``"reference"`` (networks): ``rel_error_reference`` against the problem's float64 reference
  hypergradient: the implicit one at a converged inner solve with a tight linear solve where g is strongly
  convex, or, where it is not (the MAML formulation with lam = 0: F is then the K-step objective itself),
  the float64 derivative of K GD steps with the judged algorithm's K and step. ``rel_error_algorithm``
  against the float64 reference of the algorithm's own K-step derivative. A damped linear solve
  (``damping`` delta > 0) also gets ``damping_bias`` = ||ref_delta - ref|| / ||ref|| (how far the damped
  system's own answer is from the undamped reference) and ``rel_error_damped_reference`` = ||g - ref_delta|| /
  ||ref_delta||.

The references are computed once per (problem, theta, tasks, kind) in a process and reused
(:class:`TruthCache`), since a sweep judges many cases at the same point. A reference that cannot be had
leaves its fields null and says why in ``truth_status``; it never costs the case its other measures.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from typing import Any

import torch

__all__ = ["TRUTH_FIELDS", "TruthCache", "evaluate", "rel_error"]

#: The record fields ``evaluate`` returns.
TRUTH_FIELDS = (
    "grad_norm",
    "truth",
    "reference_kind",
    "truth_status",
    "rel_error_exact",
    "rel_error_reference",
    "rel_error_algorithm",
    "rel_error_damped_reference",
    "damping_bias",
)

#: How a sweep asks for a reference hypergradient: a bounded inner solve, and no reference rather than one that
#: stopped short of its tolerance (on a ReLU / max-pool net the converged inner solve does not exist to 1e-9).
REFERENCE_BUDGET = {"inner_iters": 200, "strict": True}

IMPLICIT_REFERENCE = "implicit: converged float64 inner solve, tight linear solve"
UNROLLED_REFERENCE = "unrolled: float64 derivative of K GD steps (the MAML objective itself, lam = 0)"


def rel_error(grad: torch.Tensor, reference: torch.Tensor) -> float:
    """||grad - reference|| / ||reference|| in float64 (the absolute distance where the reference is 0)."""
    reference = reference.detach().to(device=grad.device, dtype=torch.float64)
    diff = float((grad.detach().double() - reference).norm())
    scale = float(reference.norm())
    return diff / scale if scale > 0 else diff


def _digest(theta: torch.Tensor) -> str:
    data = theta.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()


class TruthCache:
    """References by (problem, theta, tasks, kind, parameters), the ``size`` most recent kept."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self.computed = 0  # how many references were computed (not served from the cache)

    def get(self, problem, theta, tasks, kind: str, compute, **params) -> torch.Tensor:
        """The cached reference, or ``compute()``'s; a reference that could not be had raises again, from the cache."""
        key = (id(problem), _digest(theta), tuple(tasks.tolist()), kind, tuple(sorted(params.items())))
        hit = self._items.get(key)
        if hit is None or hit[0] is not problem:
            try:
                with warnings.catch_warnings():  # a reference that stops short raises (strict); no noise
                    warnings.simplefilter("ignore", RuntimeWarning)
                    hit = (problem, compute(), None)
            except Exception as err:  # remembered: the next case at this point is not charged the attempt again
                hit = (problem, None, err)
            self.computed += 1
            self._items[key] = hit
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        if hit[2] is not None:
            raise hit[2]
        return hit[1]


_CACHE = TruthCache()


def evaluate(problem, algorithm, theta: torch.Tensor, tasks, grad: torch.Tensor, cache: TruthCache | None = None):
    """The error fields (``TRUTH_FIELDS``) of ``grad``, computed by ``algorithm`` at ``theta`` on ``tasks``."""
    cache = _CACHE if cache is None else cache
    index = problem.task_index(tasks)
    truth = getattr(problem, "truth", "none")
    out: dict[str, Any] = dict.fromkeys(TRUTH_FIELDS)
    out.update(grad_norm=float(grad.norm()), truth=None if truth == "none" else truth, truth_status="ok")
    if truth == "none":
        out["truth_status"] = f"unavailable: {type(problem).__name__} has neither closed forms nor a reference"
        return out
    try:
        if truth == "exact":
            _exact_errors(out, problem, algorithm, theta, index, grad)
        elif truth == "reference":
            _reference_errors(out, problem, algorithm, theta, index, grad, cache)
        else:
            raise ValueError(f"unknown truth {truth!r} (expected 'exact', 'reference' or 'none')")
    except Exception as err:  # a truth that cannot be had must not cost the case its measures
        out["truth_status"] = f"failed: {type(err).__name__}: {err}"
    return out


def _exact_errors(out, problem, algorithm, theta, index, grad) -> None:
    if problem.inner_strongly_convex:
        out["rel_error_exact"] = rel_error(grad, problem.exact_hypergradient(theta, tasks=index))
    spec = algorithm.differentiated_objective()
    if spec is not None:
        out["rel_error_algorithm"] = rel_error(grad, problem.exact_algorithm_gradient(theta, **spec, tasks=index))


def _reference_errors(out, problem, algorithm, theta, index, grad, cache: TruthCache) -> None:
    """Each reference in its own attempt: one that cannot be had leaves its fields null, not the others."""
    described = algorithm.describe()
    spec = algorithm.differentiated_objective()
    problems: list[str] = []

    def unrolled(inner_steps, inner_lr, truncate=None):
        truncate = None if truncate == inner_steps else truncate  # full back-prop: one reference, one key
        params = {"inner_steps": inner_steps, "inner_lr": inner_lr, "truncate": truncate}
        return cache.get(
            problem,
            theta,
            index,
            "algorithm",
            lambda: problem.reference_algorithm_gradient(theta, tasks=index, **params),
            **params,
        )

    def attempt(what: str, fill) -> None:
        try:
            fill()
        except Exception as err:
            problems.append(f"{what}: {type(err).__name__}: {err}")

    def implicit():
        reference = cache.get(
            problem,
            theta,
            index,
            "hypergradient",
            lambda: problem.reference_hypergradient(theta, tasks=index, **REFERENCE_BUDGET),
        )
        out["rel_error_reference"] = rel_error(grad, reference)
        damping = float(described.get("damping") or 0.0)
        if damping > 0:
            damped = cache.get(
                problem,
                theta,
                index,
                "hypergradient",
                lambda: problem.reference_hypergradient(theta, tasks=index, damping=damping, **REFERENCE_BUDGET),
                damping=damping,
            )
            out["damping_bias"] = rel_error(damped, reference)
            out["rel_error_damped_reference"] = rel_error(grad, damped)

    def k_step_objective():
        out["rel_error_reference"] = rel_error(
            grad, unrolled(inner_steps=algorithm.inner_steps, inner_lr=described["inner_lr"])
        )

    if problem.inner_strongly_convex:
        out["reference_kind"] = IMPLICIT_REFERENCE
        attempt("reference hypergradient", implicit)
    elif described.get("inner_solver") == "gd":
        out["reference_kind"] = UNROLLED_REFERENCE
        attempt("reference of the K-step objective", k_step_objective)
    else:
        problems.append(
            "reference hypergradient: unavailable: the inner problem is not strongly convex, so the reference is "
            "the derivative of the K-step GD objective, and this algorithm's inner solver is not GD"
        )
    if spec is not None:
        attempt(
            "reference of the algorithm's derivative",
            lambda: out.update(rel_error_algorithm=rel_error(grad, unrolled(**spec))),
        )
    if problems:
        out["truth_status"] = "; ".join(problems)

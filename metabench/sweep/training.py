"""Training cases of a sweep: run ``metabench.train`` and turn its trajectory into a record.

A training case (``mode = "train"``) records, per outer step, the exact objective gap F(theta_t) - F*,
the exact gradient norm, cumulative hypergradient wall time and cumulative oracle calls per task.
It has diverged when any of those is non-finite, or when the final gap exceeds
``TRAIN_DIVERGENCE_FACTOR`` times max(initial gap, |F(theta_0)|).
"""

from __future__ import annotations

import math

import torch

from metabench.train import train

__all__ = ["TRAIN_DIVERGENCE_FACTOR", "train_record", "training_params"]

#: A training case whose final objective gap exceeds this factor times max(initial gap, |F(theta_0)|)
#: has diverged even while every value is still finite (float64 overflows only after ~700 e-foldings).
TRAIN_DIVERGENCE_FACTOR = 1e6


def _meta_lipschitz(problem, tasks) -> float:
    """L_F: the largest eigenvalue of the meta-objective's Hessian (``problem.meta_hessian``)."""
    hessian = getattr(problem, "meta_hessian", None)
    if hessian is None:
        raise ValueError(f"outer_lr = 'auto' needs the meta-objective's Hessian, which {type(problem).__name__} lacks")
    return float(torch.linalg.eigvalsh(hessian(tasks)).max())


def training_params(case: dict, problem, tasks=None) -> tuple[int, float, str]:
    """``(outer_steps, outer_lr, optimizer)`` of a training case, checked, with ``outer_lr = "auto"``
    resolved to 1/L_F (L_F the largest eigenvalue of F's Hessian over ``tasks``: a stable SGD step
    on the exact F). Raises ValueError for a bad value."""
    steps, lr, optimizer = case.get("outer_steps", 50), case.get("outer_lr", "auto"), case.get("optimizer", "sgd")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"outer_steps must be an integer >= 0, got {steps!r}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if lr == "auto":
        lr = 1.0 / _meta_lipschitz(problem, tasks)
    elif isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"outer_lr must be a positive number or 'auto', got {lr!r}")
    return steps, float(lr), optimizer


def _optimum_value(problem) -> float | None:
    """F* from ``problem.exact_optimum()``, or None where it has none."""
    optimum = getattr(problem, "exact_optimum", None)
    if optimum is None:
        return None
    try:
        return float(optimum()[1])
    except ValueError:  # no closed form for this instance (e.g. lam = 0)
        return None


def _first_non_finite(values) -> int | None:
    for t, value in enumerate(values):
        if value is not None and not math.isfinite(value):
            return t
    return None


def train_record(record: dict, prepared, outer_steps: int, outer_lr: float, optimizer: str) -> dict:
    """Run ``metabench.train`` on a prepared case and put its trajectory into ``record`` (status ok or diverged).

    A run that ``train`` stopped as diverged keeps the trajectory up to the last complete outer step."""
    problem, batch = prepared.problem, record["task_batch"]
    f_star = _optimum_value(problem)
    run = train(problem, prepared.algorithm, prepared.theta, outer_steps, outer_lr, optimizer, tasks=prepared.tasks)
    trajectory = {
        "objective_gap": [None if f is None or f_star is None else f - f_star for f in run.objective],
        "exact_grad_norm": list(run.exact_grad_norm),
        "wall_time_s": [0.0, *run.wall_time],
        "oracle_calls": [0.0] + [sum(c.as_tuple()) / batch for c in run.counts],
    }
    length = min(len(values) for values in trajectory.values())
    trajectory = {name: values[:length] for name, values in trajectory.items()}
    record.update(
        trajectory=trajectory,
        final_objective_gap=trajectory["objective_gap"][-1] if length else None,
        total_wall_time_s=trajectory["wall_time_s"][-1] if length else None,
    )
    if run.status != "ok":
        return record | {"status": run.status, "error": run.error}
    for name, values in (*trajectory.items(), ("hypergradient norm", run.grad_norm)):
        t = _first_non_finite(values)
        if t is not None:
            return record | {"status": "diverged", "error": f"non-finite {name} at outer step {t}"}
    gap, f0 = trajectory["objective_gap"], run.objective[0]
    if gap[0] is not None and gap[-1] is not None:
        scale = max(gap[0], abs(f0))
        if gap[-1] > TRAIN_DIVERGENCE_FACTOR * scale:
            return record | {
                "status": "diverged",
                "error": f"objective gap grew from {gap[0]:.3g} to {gap[-1]:.3g} "
                f"(more than {TRAIN_DIVERGENCE_FACTOR:g} x max(gap_0, |F(theta_0)|))",
            }
    return record | {"status": "ok"}

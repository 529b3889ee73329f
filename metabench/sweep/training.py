"""Training cases of a sweep: run ``metabench.train`` and turn its trajectory into a record.

A training case (``mode = "train"``) records, per outer step, the exact objective gap F(theta_t) - F*,
the exact gradient norm, cumulative hypergradient wall time and cumulative oracle calls per task.
It has diverged when any of those is non-finite, or when the final gap exceeds
``TRAIN_DIVERGENCE_FACTOR`` times max(initial gap, |F(theta_0)|).

A training case on a few-shot problem (``trains_to_accuracy``) runs ``metabench.meta_train`` instead: fresh
episodes of the case's task source (its ``dataset``: generated, shipped, or a folder under ``data_root``) every
outer step, ``task_batch`` of them (default 4), validation accuracy every ``eval_every`` steps on
``eval_tasks`` episodes, test accuracy after ``fine_tune_steps`` of adaptation on ``test_tasks`` new episodes
(``ACCURACY_TRAIN_DEFAULTS``); its record keeps the trajectory, the best and final validation accuracy, the
test accuracy and the peak memory of one outer step.
"""

from __future__ import annotations

import math

import torch

from metabench.train import train

__all__ = [
    "ACCURACY_FIELDS",
    "ACCURACY_TRAIN_DEFAULTS",
    "TRAIN_DIVERGENCE_FACTOR",
    "accuracy_train_record",
    "accuracy_training_params",
    "task_source_of",
    "train_record",
    "trains_to_accuracy",
    "training_params",
]

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


# ---------------------------------------------------------------------- few-shot: meta-training to accuracy
#: Training parameters of cases whose problem trains to accuracy (few-shot classification), with defaults
ACCURACY_TRAIN_DEFAULTS = {"eval_every": 10, "eval_tasks": 20, "fine_tune_steps": 20, "test_tasks": 50}
#: What a record of such a case adds (null in every other record)
ACCURACY_FIELDS = (
    "task_source",
    "val_accuracy_best",
    "val_accuracy_final",
    "test_accuracy",
    "test_loss",
    "eval_seconds",
    "cg_truncated_steps",
)


def trains_to_accuracy(problem) -> bool:
    """True for a problem (class or instance) whose training cases run ``metabench.meta_train`` (fresh episodes
    from a task source, accuracy): one that says so (``trains_to_accuracy``, the few-shot problem)."""
    return bool(getattr(problem, "trains_to_accuracy", False))


def accuracy_training_params(case: dict, problem) -> dict:
    """The checked keyword arguments of ``meta_train`` a few-shot training case gives (ValueError if bad): the
    outer steps, step size and optimizer as every training case takes them (``training_params``; ``outer_lr =
    "auto"`` needs a closed form, which a network lacks), and ``ACCURACY_TRAIN_DEFAULTS``."""
    outer_steps, outer_lr, optimizer = training_params(case, problem)
    out = {"outer_steps": outer_steps, "outer_lr": outer_lr, "optimizer": optimizer}
    for name, default in ACCURACY_TRAIN_DEFAULTS.items():
        value = case.get(name, default)
        low = 0 if name == "fine_tune_steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        out[name] = value
    batch = case.get("task_batch") or 4
    out["meta_batch"] = int(batch)
    return out


def task_source_of(case: dict):
    """The task source a few-shot case's ``dataset`` names (with its ``data_root`` and ``image_size``)."""
    from metabench.problems.task_sources import make_task_source

    params = case.get("problem_params") or {}
    dataset = params.get("dataset", "omniglot_like")
    if dataset == "sinusoid":
        raise ValueError("meta-training to accuracy needs classification episodes; dataset 'sinusoid' is regression")
    extra = {}
    if params.get("image_size") is not None and dataset != "digits":
        extra["image_size"] = params["image_size"]
    return make_task_source(dataset, data_root=params.get("data_root"), **extra)


def accuracy_train_record(record: dict, prepared, params: dict, source) -> dict:
    """Run ``metabench.meta_train`` for a few-shot training case and put what it measured into ``record``."""
    from metabench.meta_train import meta_train

    run = meta_train(
        prepared.problem, source, prepared.algorithm, prepared.theta, seed=record.get("seed") or 0, **params
    )
    best = max((a for a in run.val_accuracy if a is not None), default=None)
    trajectory = {
        "wall_time_s": [0.0, *run.step_wall_time_s],
        "oracle_calls": [0.0, *run.oracle_calls],
        "eval_step": list(run.eval_steps),
        "eval_wall_time_s": list(run.eval_wall_time_s),
        "val_accuracy": list(run.val_accuracy),
        "val_loss": list(run.val_loss),
    }
    record.update(
        {k: params[k] for k in ("outer_steps", "outer_lr", "optimizer", *ACCURACY_TRAIN_DEFAULTS)},
        task_batch=params["meta_batch"],
        **{k: run.info.get(k) for k in ("features", "task_chunk", "compile")},
        task_source=source.describe(),
        trajectory=trajectory,
        total_wall_time_s=run.step_wall_time_s[-1] if run.step_wall_time_s else 0.0,
        val_accuracy_best=best,
        val_accuracy_final=run.val_accuracy[-1] if run.val_accuracy else None,
        test_accuracy=run.test_accuracy,
        test_loss=run.test_loss,
        eval_seconds=run.eval_seconds,
        cg_truncated_steps=run.cg_truncated_steps,
        live_peak_bytes=run.step_live_peak_bytes,
        rss_peak_bytes=run.rss_peak_bytes,
        cuda_max_allocated_bytes=run.cuda_max_allocated_bytes,
    )
    if run.status != "ok":
        return record | {"status": run.status, "error": run.error}
    for name in ("val_loss", "oracle_calls"):
        t = _first_non_finite(trajectory[name])
        if t is not None:
            return record | {"status": "diverged", "error": f"non-finite {name} at entry {t}"}
    if run.test_loss is not None and not math.isfinite(run.test_loss):
        return record | {"status": "diverged", "error": f"non-finite test loss {run.test_loss}"}
    return record | {"status": "ok"}

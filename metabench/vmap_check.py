"""Does the vmap path of a few-shot problem compute what its loop path computes? (a check above both rooms)

The check runs an algorithm (by default second-order MAML, 2 inner steps) on the problem twice, once with
every loss on the Python loop over tasks and once with ``torch.func.vmap`` over them, and compares the two
meta-gradients. It imports ``metabench.algorithms``, so it lives here, above the problems (which never import
algorithms); the verdict goes back to the problem through its public
:meth:`~metabench.problems.few_shot.FewShotClassification.set_vmap_check`, where it gates ``path="vmap"``
(and ``path="auto"`` on CUDA).
"""

from __future__ import annotations

import math

import torch

from metabench.algorithms import get_algorithm
from metabench.errors import DivergenceError

__all__ = ["VMAP_CHECK_OPTIONS", "verify_vmap"]

#: The meta-gradient :func:`verify_vmap` compares unless told otherwise.
VMAP_CHECK_OPTIONS = {"inner_steps": 2, "inner_lr": 0.1}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (||a - b|| where b = 0)."""
    scale = float(b.norm())
    diff = float((a - b).norm())
    return diff / scale if scale > 0 else diff


def verify_vmap(
    problem, theta: torch.Tensor, tasks=None, algorithm: str = "maml", *, float64_baseline: bool = True, **options
) -> dict:
    """Compare the vmap and loop paths of ``problem`` on one meta-gradient, and store the verdict on it.

    ``algorithm`` with ``options`` (default :data:`VMAP_CHECK_OPTIONS`: 2 inner steps, lr 0.1) runs on the
    tasks ``tasks`` (None: all), all of them in one autograd graph (``task_chunk = len(tasks)``, so that vmap
    really maps over them), once under ``problem.forced_path("loop")`` and once under ``forced_path("vmap")``.
    Returns ``{"rel_diff", "agree", "tol", "algorithm", "dtype", "device", "n_tasks"}`` with
    rel_diff = ||g_vmap - g_loop|| / ||g_loop|| and agree = rel_diff <= tol (1e-6 in float64, 1e-4
    otherwise; a vmap run that diverges disagrees), and passes it to ``problem.set_vmap_check``, where it
    gates the vmap path for theta's device and dtype. It never raises for a mismatch.

    Below float64, with ``float64_baseline`` (default), the loop path is also run in float64 and
    ``loop_error_float64`` / ``vmap_error_float64`` (each path's relative distance to it) are added: they
    tell a wrong vmap result from rounding that both paths share (the gate still uses ``tol``).
    """
    theta = problem.check_theta(theta).detach()
    index = problem.task_index(tasks)
    algo = get_algorithm(algorithm, **{**VMAP_CHECK_OPTIONS, "task_chunk": len(index), **options})
    runs = [("loop", theta), ("vmap", theta)]
    if float64_baseline and theta.dtype != torch.float64:
        runs.append(("loop", theta.double()))
    grads = []
    for path, at in runs:
        with problem.forced_path(path):
            try:
                grads.append(algo.hypergradient(problem, at, tasks=index).grad.double())
            except DivergenceError:
                if path == "loop":
                    raise
                grads.append(torch.full_like(at, math.nan, dtype=torch.float64))
    rel_diff = _rel(grads[1], grads[0])
    tol = 1e-6 if theta.dtype == torch.float64 else 1e-4
    result = {
        "rel_diff": rel_diff,
        "agree": bool(math.isfinite(rel_diff) and rel_diff <= tol),
        "tol": tol,
        "algorithm": algo.name,
        "dtype": str(theta.dtype).replace("torch.", ""),
        "device": str(theta.device),
        "n_tasks": len(index),
    }
    if len(grads) == 3:
        result["loop_error_float64"] = _rel(grads[0], grads[2])
        result["vmap_error_float64"] = _rel(grads[1], grads[2])
    problem.set_vmap_check(result)
    return result

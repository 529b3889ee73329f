"""The demo: every algorithm on one small problem of each family, next to the exact answer.

A small default sweep over inner steps; each row gives the relative l2 error of the meta-gradient
to the exact hypergradient, its oracle counts and the wall time of one call. A failing case
becomes a row with its status, never a crash.
"""

from __future__ import annotations

import time

import torch

from metabench.algorithms import get_algorithm
from metabench.errors import MetabenchError
from metabench.problems import LinearMetaRegression, QuadraticBilevel

__all__ = ["demo_rows", "format_table"]

# (algorithm, options) per family; inner_lr = 1/L for both generated problems below (L = 1).
_CASES = {
    "linear_meta_regression": [
        ("maml", {}),
        ("maml", {"inner_solver": "nesterov", "momentum": (10**0.5 - 1) / (10**0.5 + 1)}),
        ("truncated", {"truncate": 5}),
        ("fomaml", {}),
        ("imaml", {"cg_iters": 5}),
        ("rm_metal", {"cg_iters": 5}),
        ("neumann", {"neumann_iters": 20}),
    ],
    "quadratic_bilevel": [
        ("itd_bio", {}),
        ("truncated", {"truncate": 5}),
        ("imaml", {"cg_iters": 5}),
        ("rm_metal", {"cg_iters": 5}),
        ("neumann", {"neumann_iters": 20}),
    ],
}


def _problems(kappa: float, seed: int):
    return {
        "linear_meta_regression": LinearMetaRegression.generate(
            n_tasks=8, dim=20, n_train=40, n_val=40, kappa=kappa, lam=1.0 / kappa, seed=seed
        ),
        "quadratic_bilevel": QuadraticBilevel.generate(n_tasks=8, p=10, q=20, kappa=kappa, rho=0.1, seed=seed),
    }


def demo_rows(inner_steps=(5, 20, 80), kappa: float = 10.0, seed: int = 0) -> list[dict]:
    """One dict per (problem, algorithm, inner_steps): error, counts, time and status."""
    rows = []
    for problem_name, problem in _problems(kappa, seed).items():
        theta = torch.zeros(problem.theta_shape, dtype=torch.float64)
        exact = problem.exact_hypergradient(theta)
        for name, options in _CASES[problem_name]:
            for steps in inner_steps:
                row = {"problem": problem_name, "algorithm": name, "inner_steps": steps, **options}
                try:
                    alg = get_algorithm(name, inner_steps=steps, inner_lr=1.0, **options)
                    start = time.perf_counter()
                    hg = alg.hypergradient(problem, theta)
                    row["seconds"] = time.perf_counter() - start
                    row["rel_error"] = float((hg.grad - exact).norm() / exact.norm())
                    row.update(hg.counts.as_dict())
                    row["status"] = "ok"
                except (ValueError, MetabenchError) as err:
                    row["status"], row["error"] = "failed", str(err)
                rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the demo rows."""
    head = "| problem | algorithm | options | K | rel. error | inner grads | HVPs | time (ms) | status |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        extra = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k in ("inner_solver", "momentum", "truncate", "cg_iters", "neumann_iters")
        )
        if r["status"] == "ok":
            cells = f"{r['rel_error']:.2e} | {r['inner_grads']} | {r['hvps']} | {1e3 * r['seconds']:.1f}"
        else:
            cells = "- | - | - | -"
        lines.append(f"| {r['problem']} | {r['algorithm']} | {extra} | {r['inner_steps']} | {cells} | {r['status']} |")
    return "\n".join(lines)

"""The ``table1`` preset: iMAML's Table 1 measured at least-compute points found by search.

Problem: one task of linear meta-regression, dim = 200 with a geometric spectrum (200 distinct eigenvalues), so CG
does not end by exhausting the dimension on the rows the paper states (imaml with Nesterov's inner solver needs at
most 170 of 200 iterations at kappa = 1e4, target 0.01); kappa = 10 .. 1e4 in half-decades; lam = 1;
inner_lr = 1/L; Nesterov's momentum (sqrt(kappa) - 1)/(sqrt(kappa) + 1).

For each variant (maml and imaml, each with GD and with Nesterov's inner solver), kappa and target relative error
(0.1, 0.01), :func:`metabench.sweep.least_compute.least_compute_search` finds the least-compute point (K, and m CG
iterations for imaml). The search is exact but takes a minute or two, and its answers must not depend on the
machine (they decide the cases' ids), so they are kept in ``table1_plan.json`` beside this file;
``python -m metabench.sweep.table1`` recomputes it (a test re-searches the small kappas and compares). The sweep
measures each point and its neighbours (K - 1 and K + 1; for imaml also m - 1 and m + 1), so the report reads the
least compute from records and shows it is least, even where rounding moves the measured point by one step.
Alongside: truncated back-prop (T = 1, 10, 100) and first-order MAML with a converged inner loop (their error
floors, kappa <= 1e3), and a memory block at kappa = 100 (K = 10 .. 1000 for every variant, T = 1 .. 100 at
K = 1000 for truncated back-prop) for the memory columns. Points whose K makes a call longer than a few seconds are
counted but not timed (``instruments = []``), which keeps the preset under 10 minutes on 2 cores (7 min here).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["PLAN_PATH", "SETTINGS", "VARIANTS", "build_plan", "load_plan", "table1_spec"]

PLAN_PATH = Path(__file__).with_name("table1_plan.json")

#: the Table 1 problem and grid (changing any of it means recomputing the plan)
SETTINGS: dict[str, Any] = {
    "problem": "linear_meta_regression",
    "n_tasks": 1,
    "dim": 200,
    "n_train": 200,
    "n_val": 50,
    "lam": 1.0,
    "seed": 0,
    "theta": "random",
    "kappas": [round(10 ** (1 + i / 2), 6) for i in range(7)],  # 10, 31.6, ..., 1e4
    "targets": [0.1, 0.01],
}
#: variant label -> (algorithm, inner solver)
VARIANTS = {
    "maml (GD)": ("maml", "gd"),
    "maml (Nesterov)": ("maml", "nesterov"),
    "imaml (GD)": ("imaml", "gd"),
    "imaml (Nesterov)": ("imaml", "nesterov"),
}
#: a point whose K exceeds this is counted but not timed (one call of K steps costs ~0.4-0.8 ms a step here)
TIMED_STEPS = 3000
#: kappa up to which the floors of truncated back-prop and first-order MAML are measured
FLOOR_KAPPA_MAX = 1000.0
TRUNCATIONS = [1, 10, 100]
MEMORY_STEPS = [10, 30, 100, 300, 1000]
MEMORY_TRUNCATIONS = [1, 3, 10, 30, 100]


def _case(algorithm: str, solver: str, kappa: float, **options) -> dict:
    base = {k: v for k, v in SETTINGS.items() if k not in ("kappas", "targets")}
    case = {**base, "algorithm": algorithm, "inner_solver": solver, "kappa": kappa, "inner_lr": "auto", **options}
    if solver == "nesterov":
        case["momentum"] = "auto"
    return case


def build_plan(progress: bool = True) -> dict:
    """Search every (variant, kappa, target): the least-compute points, as ``table1_plan.json`` holds them."""
    from metabench.sweep.case import prepare_case
    from metabench.sweep.least_compute import SEARCH_MARGIN, least_compute_search
    from metabench.sweep.spec import normalise_case

    points = []
    for variant, (algorithm, solver) in VARIANTS.items():
        for kappa in SETTINGS["kappas"]:
            prepared = prepare_case(normalise_case(_case(algorithm, solver, kappa, inner_steps=1)))
            options = prepared.algorithm.describe()
            momentum = options["momentum"] if solver == "nesterov" else None
            for target in SETTINGS["targets"]:
                found = least_compute_search(
                    prepared.problem, prepared.theta, algorithm, options["inner_lr"], target, momentum
                )
                points.append(
                    {
                        "variant": variant,
                        "kappa": kappa,
                        "target": target,
                        "inner_steps": found.inner_steps,
                        "cg_iters": found.cg_iters,
                        "predicted_error": None if math.isnan(found.predicted_error) else found.predicted_error,
                        "cost": None if math.isnan(found.cost) else found.cost,
                        "reachable": found.reachable,
                        "note": found.note,
                    }
                )
                if progress:
                    print(f"{variant} kappa={kappa:g} target={target:g}: K={found.inner_steps} m={found.cg_iters}")
    return {
        "generated_by": "python -m metabench.sweep.table1",
        "settings": SETTINGS,
        "search_margin": SEARCH_MARGIN,
        "points": points,
    }


def load_plan() -> dict:
    """The committed plan; refuses one made for other settings (recompute it: ``python -m metabench.sweep.table1``)."""
    from metabench.sweep.least_compute import SEARCH_MARGIN

    plan = json.loads(PLAN_PATH.read_text())
    if plan.get("settings") != json.loads(json.dumps(SETTINGS)) or plan.get("search_margin") != SEARCH_MARGIN:
        raise ValueError(f"{PLAN_PATH} was made for other settings; run `python -m metabench.sweep.table1`")
    return plan


def _least_points(plan: dict) -> list[dict]:
    blocks = []
    for point in plan["points"]:
        if not point["reachable"]:
            continue
        algorithm, solver = VARIANTS[point["variant"]]
        K, m = point["inner_steps"], point["cg_iters"]
        neighbours = [(K - 1, m), (K, m), (K + 1, m)]
        if m is not None:
            neighbours += [(K, m - 1), (K, m + 1)]
        for k, cg in neighbours:
            if k < 0 or (cg is not None and cg < 0):
                continue
            case = _case(algorithm, solver, point["kappa"], inner_steps=k)
            if cg is not None:
                case["cg_iters"] = cg
            case["instruments"] = ["time"] if k <= TIMED_STEPS else []
            blocks.append({key: [value] for key, value in case.items()})
    return blocks


def _floor_blocks(plan: dict) -> list[dict]:
    """truncated (T in TRUNCATIONS) and fomaml with the inner loop converged: their error floors."""
    blocks = []
    for point in plan["points"]:
        if point["variant"] != "maml (GD)" or point["target"] != min(SETTINGS["targets"]):
            continue
        if point["kappa"] > FLOOR_KAPPA_MAX or not point["reachable"]:
            continue
        steps = 2 * point["inner_steps"]  # twice what maml needs for the smallest target: the inner loop converged
        for algorithm, extra in [("fomaml", {})] + [("truncated", {"truncate": t}) for t in TRUNCATIONS]:
            case = _case(algorithm, "gd", point["kappa"], inner_steps=steps, **extra)
            case["instruments"] = []
            blocks.append({key: [value] for key, value in case.items()})
    return blocks


def _memory_blocks() -> list[dict]:
    kappa = 100.0
    blocks = []
    for algorithm, solver, extra in (
        ("maml", "gd", {}),
        ("maml", "nesterov", {}),
        ("imaml", "gd", {"cg_iters": 10}),
        ("imaml", "nesterov", {"cg_iters": 10}),
        ("fomaml", "gd", {}),
    ):
        for steps in MEMORY_STEPS:
            case = _case(algorithm, solver, kappa, inner_steps=steps, **extra)
            case["instruments"] = ["memory"]
            blocks.append({key: [value] for key, value in case.items()})
    for t in MEMORY_TRUNCATIONS:  # truncated back-prop's memory grows with T, not K
        case = _case("truncated", "gd", kappa, inner_steps=max(MEMORY_STEPS), truncate=t)
        case["instruments"] = ["memory"]
        blocks.append({key: [value] for key, value in case.items()})
    return blocks


def table1_spec() -> dict:
    """The ``table1`` sweep: every block is one case (points, neighbours, floors, memory)."""
    plan = load_plan()
    return {
        "name": "table1",
        "description": DESCRIPTION,
        "defaults": {"threads": 1, "min_run_time": 0.05},
        "grid": _least_points(plan) + _floor_blocks(plan) + _memory_blocks(),
    }


DESCRIPTION = (
    "iMAML Table 1 on linear meta-regression (one task, dim 200, kappa 10..1e4 in half-decades): maml and imaml "
    "with GD and Nesterov inner solvers at the least-compute points for targets 0.1 and 0.01 (found by search) and "
    "their neighbours, truncated back-prop and fomaml floors, a memory block"
)


def main(argv: list[str] | None = None) -> int:
    """Recompute ``table1_plan.json``."""
    plan = build_plan(progress=True)
    PLAN_PATH.write_text(json.dumps(plan, indent=1) + "\n")
    reachable = sum(p["reachable"] for p in plan["points"])
    print(f"wrote {PLAN_PATH} ({len(plan['points'])} points, {reachable} reachable)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

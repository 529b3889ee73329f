"""The iMAML Table 1 section of a report: least compute per variant, kappa and target, its fitted growth in
kappa with the verdict against the theory line each row is compared with, the error floors of the biased
methods, and the memory laws.

Everything is read from the records: the least compute of a (variant, kappa, target) is the cheapest measured
case within the target, and the records of its neighbours (one inner step fewer; one CG iteration fewer) show
whether it is least (the ``table1`` preset measures them: ``metabench/sweep/table1.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from metabench.report.document import Section, Table, fmt_number
from metabench.report.fitting import CANDIDATE_EXPONENTS, TOLERANCE, error_floors, memory_per_step, table1
from metabench.report.variants import THEORY

__all__ = ["TARGETS", "table1_section"]

TARGETS = (0.1, 0.01)
#: a fitted memory slope below half a byte per step is rounding of integer byte counts: shown as 0
_ROUND_OFF_BYTES = 0.5


def _exponent(row) -> str:
    if row is None or not np.isfinite(row["exponent"]):
        return "not enough points"
    text = f"{row['exponent']:.3f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    else:
        text += " (2 points, no interval)"
    return text


def _kappa_range(row) -> str:
    if row is None or row["kappa_range"] is None:
        return "-"
    low, high = row["kappa_range"]
    return f"{low:g}..{high:g}"


def _count(value) -> int | None:
    try:
        return None if value is None or not math.isfinite(float(value)) else int(value)
    except (TypeError, ValueError):
        return None


def _cg(row) -> str:
    m, dim = (None, None) if row is None else (_count(row["cg_at_largest"]), _count(row["dim"]))
    if m is None:
        return "-"
    text = f"{m} of {dim}" if dim else str(m)
    if dim and m >= dim:
        text += " (capped: CG ends by exhausting the dimension)"
    return text


def _bytes_per_step(slope: float) -> str:
    return "0" if abs(slope) < _ROUND_OFF_BYTES else f"{slope:.4g}"


def _explain_missing(linear: pd.DataFrame) -> Section:
    section = Section("iMAML Table 1, measured")
    section.blocks.append(
        f"No Table 1 here: the linear meta-regression records hold {linear['kappa'].nunique()} condition "
        "number(s), and a growth in kappa needs at least 3 (run the `table1` preset)."
    )
    return section


def table1_section(records: pd.DataFrame) -> Section | None:
    """The Table 1 section; a short explanation where the linear records cannot make one; None without them."""
    linear = records[records["problem"] == "linear_meta_regression"]
    if linear.empty or "rel_error_exact" not in linear:
        return None
    if linear["kappa"].nunique() < 3:
        return _explain_missing(linear)
    calls = table1(linear, TARGETS, cost="oracle_calls")
    seconds = table1(linear, TARGETS, cost="time_median_s") if "time_median_s" in linear else None
    section = Section("iMAML Table 1, measured")
    dims = sorted({int(d) for d in linear["dim"].dropna()}) if "dim" in linear else []
    section.blocks.append(
        "For each variant, condition number kappa and target relative error (to the exact hypergradient), the "
        "least compute among the measured cases within the target: oracle calls per task (inner and outer "
        "gradients, Hessian-vector and cross products, as the oracle counted them), and separately the median "
        "wall time of one hypergradient where it was timed. The growth of that least compute in kappa is fitted "
        "on log-log axes (kappa >= 10, 95% interval from the t distribution). "
        f"Verdict: agrees when the fit is within {TOLERANCE:g} of the row's theory line and its interval does not "
        f"also hold the other candidate exponent ({' or '.join(f'{c:g}' for c in CANDIDATE_EXPONENTS)}); "
        "inconclusive when the interval holds both (or there are fewer than 3 points); disagrees otherwise. "
        "'Shown least' counts the points whose measured neighbours (one inner step fewer, one CG iteration "
        "fewer) miss the target. " + (f"Problem dimension {', '.join(map(str, dims))}. " if dims else "")
    )
    for target in TARGETS:
        rows = []
        for variant, theory in THEORY.items():
            c = calls[(calls["variant"] == variant) & (calls["target"] == target)]
            if c.empty or theory["exponent"] is None:
                continue
            c = c.iloc[0]
            t = None
            if seconds is not None:
                match = seconds[(seconds["variant"] == variant) & (seconds["target"] == target)]
                t = match.iloc[0] if len(match) else None
            missed = ", ".join(f"{k:g}" for k in c["kappas_missed"]) or "none"
            rows.append(
                [
                    variant,
                    f"{theory['exponent']:g}: {theory['compute']} ({theory['source']})",
                    _exponent(c),
                    c["verdict"],
                    f"{_exponent(t)} over kappa {_kappa_range(t)}" if t is not None else "-",
                    c["least"],
                    _cg(c),
                    missed,
                    fmt_number(c["error_floor"])
                    if c["kappas_missed"]
                    else "-",  # a floor only where a target was missed
                ]
            )
        section.blocks.append(
            Table(
                [
                    "variant",
                    "theory exponent: compute (source)",
                    "fitted exponent, oracle calls [95% CI]",
                    "verdict",
                    "fitted exponent, wall time [95% CI]",
                    "shown least",
                    "CG iterations at the largest kappa",
                    "kappa not reached",
                    "error floor at the largest kappa (where a kappa was not reached)",
                ],
                rows,
                caption=f"Target relative error {target:g}",
            )
        )
    floors = error_floors(linear[linear["algorithm"].isin(["truncated", "fomaml"])])
    if not floors.empty:
        kappas = sorted(floors["kappa"].unique())
        rows = []
        for (variant, t), group in floors.groupby(["variant", floors["truncate"].fillna(-1)], sort=True):
            by_kappa = dict(zip(group["kappa"], group["error_floor"]))
            label = variant if t == -1 else f"{variant}, T = {int(t)}"
            rows.append([label, *(fmt_number(by_kappa.get(k)) for k in kappas)])
        section.blocks.append(
            Table(
                ["variant", *(f"kappa {k:g}" for k in kappas)],
                rows,
                caption="Error floors: the smallest relative error measured (inner loop converged: twice the steps "
                "maml needs for the smallest target); truncated back-prop's floor is set by T, first-order MAML's "
                "by its bias",
            )
        )
    memory = memory_per_step(linear)
    if not memory.empty:
        rows = []
        for variant, theory in THEORY.items():
            m = memory[memory["variant"] == variant]
            if m.empty:
                continue
            m = m.iloc[0]
            rows.append(
                [
                    variant,
                    theory["memory"],
                    f"{_bytes_per_step(m['slope_bytes_per_step'])} per {m['steps_axis']}",
                    fmt_number(m["mem_grad_bytes"]),
                    "0" if abs(m["slope_bytes_per_step"]) < _ROUND_OFF_BYTES else fmt_number(m["slope_over_mem_grad"]),
                    fmt_number(m["peak_over_mem_grad"]),
                    theory["error"],
                    m["steps"],
                ]
            )
        section.blocks.append(
            Table(
                [
                    "variant",
                    "paper: memory",
                    "fitted bytes per step",
                    "Mem(grad) bytes",
                    "slope / Mem(grad)",
                    "largest peak / Mem(grad)",
                    "paper: error",
                    "steps measured",
                ],
                rows,
                caption="Memory: peak live-tensor bytes fitted against the steps each variant back-propagates "
                "(a slope below half a byte per step is rounding and shown as 0)",
            )
        )
    return section

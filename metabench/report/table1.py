"""The iMAML Table 1 section of a report: least compute per variant, kappa and target, fitted growth in kappa,
the verdict against the theory line each row is compared with, and the memory laws."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from metabench.report.document import Section, Table
from metabench.report.fitting import memory_per_step, table1
from metabench.report.variants import THEORY

__all__ = ["TARGETS", "table1_section"]

TARGETS = (0.5, 0.1, 0.01)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _exponent(row) -> str:
    if row is None or not np.isfinite(row["exponent"]):
        return "not enough points"
    text = f"{row['exponent']:.2f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    else:
        text += " (2 points, no CI)"
    return text


def _mark(row) -> str:
    if row is None or row["agrees"] is None:
        return ""
    return "agrees" if row["agrees"] else "DISAGREES"


def table1_section(records: pd.DataFrame) -> Section | None:
    """The Table 1 section, or None where the records hold no Table 1 sweep (fewer than 3 kappa values)."""
    linear = records[records["problem"] == "linear_meta_regression"]
    if linear.empty or linear["kappa"].nunique() < 3 or "rel_error_exact" not in linear:
        return None
    calls = table1(linear, TARGETS, cost="oracle_calls")
    seconds = table1(linear, TARGETS, cost="time_median_s") if "time_median_s" in linear else None
    memory = memory_per_step(linear)
    section = Section("iMAML Table 1, measured")
    section.blocks.append(
        "For each variant, condition number kappa and target relative error, the least compute among the "
        "measured cases that reach the target; the growth of that least compute in kappa is fitted on log-log "
        "axes (kappa >= 10; 95% confidence interval from the t distribution) and set beside iMAML's Table 1. "
        "Compute is oracle calls per task (inner and outer gradients, Hessian-vector and mixed products) and, "
        "separately, the median wall time of one hypergradient. A variant that never reaches a target is "
        "shown with the error floor it reached at the largest kappa instead of being dropped."
    )
    for target in TARGETS:
        rows = []
        for variant, theory in THEORY.items():
            c = calls[(calls["variant"] == variant) & (calls["target"] == target)]
            if c.empty:
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
                    theory["compute"],
                    _fmt(theory["exponent"]),
                    _exponent(c),
                    _mark(c),
                    _exponent(t) if t is not None else "-",
                    missed,
                    _fmt(c["error_floor"]),
                ]
            )
        section.blocks.append(
            Table(
                [
                    "variant",
                    "paper: compute",
                    "theory exponent",
                    "fitted exponent (oracle calls) [95% CI]",
                    "vs theory",
                    "fitted exponent (wall time) [95% CI]",
                    "kappa not reached",
                    "error floor at largest kappa",
                ],
                rows,
                caption=f"Target relative error {target:g}",
            )
        )
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
                    f"{m['slope_bytes_per_step']:.4g} per {m['steps_axis']}",
                    _fmt(m["mem_grad_bytes"]),
                    _fmt(m["slope_over_mem_grad"]),
                    _fmt(m["peak_over_mem_grad"]),
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
                caption="Memory: peak live-tensor bytes fitted against the steps each variant back-propagates",
            )
        )
    return section

"""Growth laws from measurements: power-law fits with confidence intervals, iMAML's Table 1, memory per step.

``fit_power_law``: least squares on log y = a + b log x; the exponent b comes with a two-sided
Student-t confidence interval b +- t_{(1+level)/2, n-2} se(b) (``scipy.stats.linregress``).

``least_compute`` reads a Table 1 sweep: for each variant, condition number kappa and target
relative error, the least compute (oracle calls per task, or wall time) among the measured cases
whose error is within the target; a variant that never reaches a target keeps NaN there and its
error floor (the smallest error it reached). ``table1`` fits the growth of that least compute in
kappa per variant and target, next to iMAML's theoretical exponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from metabench.report.variants import THEORY, with_variants

__all__ = ["PowerLawFit", "fit_power_law", "least_compute", "memory_per_step", "table1"]


@dataclass(frozen=True)
class PowerLawFit:
    """y ~ C x^exponent; ``ci_low``/``ci_high`` are NaN with fewer than 3 points."""

    exponent: float
    ci_low: float
    ci_high: float
    log_intercept: float
    n_points: int

    def agrees_with(self, theory: float | None, tolerance: float = 0.25) -> bool | None:
        """Whether ``theory`` lies in the CI (or, without a CI, within ``tolerance``); None if unknown."""
        if theory is None or not np.isfinite(self.exponent):
            return None
        if np.isfinite(self.ci_low):
            return bool(self.ci_low <= theory <= self.ci_high)
        return bool(abs(self.exponent - theory) <= tolerance)


def fit_power_law(x, y, level: float = 0.95) -> PowerLawFit:
    """Fit y = C x^b by least squares in log-log space; needs positive x and y (others are dropped)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    n = int(keep.sum())
    if n < 2 or np.ptp(lx) == 0:
        return PowerLawFit(np.nan, np.nan, np.nan, np.nan, n)
    fit = stats.linregress(lx, ly)
    if n < 3:
        return PowerLawFit(float(fit.slope), np.nan, np.nan, float(fit.intercept), n)
    half = stats.t.ppf(0.5 + level / 2, n - 2) * fit.stderr
    return PowerLawFit(float(fit.slope), float(fit.slope - half), float(fit.slope + half), float(fit.intercept), n)


def least_compute(records: pd.DataFrame, targets, cost: str = "oracle_calls") -> pd.DataFrame:
    """Per (variant, kappa, target): the least ``cost`` reaching rel_error_exact <= target, and the error floor.

    Columns: variant, kappa, target, cost (NaN if never reached), reached (bool), error_floor.
    """
    data = with_variants(records[records["status"] == "ok"])
    data = data[np.isfinite(data["rel_error_exact"].astype(float))]
    rows = []
    for (variant, kappa), group in data.groupby(["variant", "kappa"]):
        floor = float(group["rel_error_exact"].min())
        for target in targets:
            hit = group[group["rel_error_exact"] <= target]
            best = float(hit[cost].min()) if len(hit) else np.nan
            rows.append(
                {
                    "variant": variant,
                    "kappa": float(kappa),
                    "target": float(target),
                    "cost": best,
                    "reached": bool(len(hit)),
                    "error_floor": floor,
                }
            )
    return pd.DataFrame(rows, columns=["variant", "kappa", "target", "cost", "reached", "error_floor"])


def table1(
    records: pd.DataFrame, targets=(0.5, 1e-1, 1e-2), cost: str = "oracle_calls", kappa_min: float = 10.0
) -> pd.DataFrame:
    """Fitted exponent of least compute in kappa, per variant and target, beside iMAML's theory.

    Kappas below ``kappa_min`` are left out of the fit (kappa = 1 is solved in one step by every
    method, before the asymptotic regime). Columns: variant, target, exponent, ci_low, ci_high,
    n_points, theory, agrees, kappas_reached, kappas_missed, error_floor (the smallest error
    reached at the largest kappa).
    """
    best = least_compute(records, targets, cost)
    rows = []
    for (variant, target), group in best.groupby(["variant", "target"]):
        fit_on = group[(group["kappa"] >= kappa_min) & group["reached"]]
        fit = fit_power_law(fit_on["kappa"], fit_on["cost"])
        theory = THEORY.get(variant, {}).get("exponent")
        largest = group.loc[group["kappa"].idxmax()]
        rows.append(
            {
                "variant": variant,
                "target": target,
                "exponent": fit.exponent,
                "ci_low": fit.ci_low,
                "ci_high": fit.ci_high,
                "n_points": fit.n_points,
                "theory": theory,
                "agrees": fit.agrees_with(theory),
                "kappas_reached": sorted(group.loc[group["reached"], "kappa"].tolist()),
                "kappas_missed": sorted(group.loc[~group["reached"], "kappa"].tolist()),
                "error_floor": float(largest["error_floor"]),
            }
        )
    return pd.DataFrame(rows)


def memory_per_step(records: pd.DataFrame, value: str = "live_peak_bytes") -> pd.DataFrame:
    """Per variant (and problem): least-squares slope of peak bytes against the steps it back-propagates.

    The steps are inner_steps K, except for truncated back-prop, whose memory grows with the
    truncation length T (iMAML Table 1: Mem(grad) x T).
    Columns: variant, problem, steps_axis, slope_bytes_per_step, intercept_bytes, mem_grad_bytes (median
    ``inner_grad_peak_bytes`` where recorded), slope_over_mem_grad, peak_over_mem_grad (largest
    peak / Mem(grad)), steps (range measured).
    """
    data = with_variants(records[(records["status"] == "ok")])
    data = data[np.isfinite(data[value].astype(float))]
    rows = []
    for (variant, problem), group in data.groupby(["variant", "problem"]):
        axis = "truncate" if variant.startswith("truncated") else "inner_steps"
        steps = group[axis].astype(float)
        if steps.nunique() < 2:
            continue
        fit = stats.linregress(steps, group[value].astype(float))
        mem_grad = float(group["inner_grad_peak_bytes"].median()) if "inner_grad_peak_bytes" in group else np.nan
        rows.append(
            {
                "variant": variant,
                "problem": problem,
                "steps_axis": axis,
                "slope_bytes_per_step": float(fit.slope),
                "intercept_bytes": float(fit.intercept),
                "mem_grad_bytes": mem_grad,
                "slope_over_mem_grad": float(fit.slope) / mem_grad if mem_grad and np.isfinite(mem_grad) else np.nan,
                "peak_over_mem_grad": float(group[value].max()) / mem_grad
                if mem_grad and np.isfinite(mem_grad)
                else np.nan,
                "steps": f"{int(steps.min())}..{int(steps.max())}",
            }
        )
    return pd.DataFrame(rows)

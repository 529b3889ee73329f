"""Growth laws from measurements: power-law fits with confidence intervals, iMAML's Table 1, memory per step.

``fit_power_law``: least squares on log y = a + b log x; the exponent b comes with a two-sided
Student-t confidence interval b +- t_{(1+level)/2, n-2} se(b) (``scipy.stats.linregress``).

``least_compute`` reads a Table 1 sweep: for each variant, condition number kappa and target
relative error, the least compute (oracle calls per task, or wall time) among the measured cases
whose error is within the target, where it was found (K, CG iterations) and whether the records show
it is least (its neighbours with one inner step or one CG iteration fewer, when measured, miss the
target); a variant that never reaches a target keeps NaN there and its error floor (the smallest error
it reached). ``table1`` fits the growth of that least compute in kappa per variant and target and gives
a verdict against the theory line the row is compared with (``verdict``).

**The verdict rule** (points are deterministic and quantised by integer K, so the interval reflects the
curvature of log K in log kappa, not noise): "agrees" when the fitted exponent is within ``TOLERANCE``
(0.1) of the theory and its 95% interval does not also hold another candidate exponent (0.5 or 1:
sqrt(kappa) against kappa); "inconclusive" when the interval holds both candidates, or there are fewer
than 3 points; "disagrees" otherwise. An interval as wide as [-0.08, 1.67] can never "agree".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from metabench.report.variants import THEORY, with_variants

__all__ = [
    "CANDIDATE_EXPONENTS",
    "TOLERANCE",
    "PowerLawFit",
    "error_floors",
    "fit_power_law",
    "least_compute",
    "memory_per_step",
    "table1",
    "verdict",
]

#: how close to the theory a fitted exponent must be to agree with it
TOLERANCE = 0.1
#: the exponents Table 1 tells apart: sqrt(kappa) (accelerated) and kappa (plain GD)
CANDIDATE_EXPONENTS = (0.5, 1.0)


@dataclass(frozen=True)
class PowerLawFit:
    """y ~ C x^exponent; ``ci_low``/``ci_high`` are NaN with fewer than 3 points."""

    exponent: float
    ci_low: float
    ci_high: float
    log_intercept: float
    n_points: int

    def agrees_with(self, theory: float | None, tolerance: float = TOLERANCE) -> bool | None:
        """True / False where :func:`verdict` says "agrees" / "disagrees"; None where it is inconclusive."""
        said = verdict(self, theory, tolerance)
        return {"agrees": True, "disagrees": False}.get(said)


def verdict(
    fit: PowerLawFit, theory: float | None, tolerance: float = TOLERANCE, candidates=CANDIDATE_EXPONENTS
) -> str:
    """ "agrees", "disagrees", "inconclusive" or "no theory" (module docstring: the rule)."""
    if theory is None:
        return "no theory"
    if not np.isfinite(fit.exponent):
        return "inconclusive"
    if not np.isfinite(fit.ci_low):  # two points: no interval, nothing to tell the candidates apart with
        return "inconclusive"
    held = [c for c in candidates if fit.ci_low <= c <= fit.ci_high]
    if len(held) >= 2:
        return "inconclusive"
    return "agrees" if abs(fit.exponent - theory) <= tolerance else "disagrees"


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

    Columns: variant, kappa, target, cost (NaN if never reached), reached (bool), error_floor, inner_steps and
    cg_iters of the least point, dim, and ``least`` (True when its measured neighbours one step cheaper, one inner
    step fewer or, for a CG method, one CG iteration fewer, all miss the target; False when one of them reaches
    it, which cannot happen for the least point; None when neither was measured).
    """
    data = with_variants(records[records["status"] == "ok"])
    data = data[np.isfinite(data["rel_error_exact"].astype(float))]
    if cost not in data:
        data = data.assign(**{cost: np.nan})
    rows = []
    for (variant, kappa), group in data.groupby(["variant", "kappa"]):
        floor = float(group["rel_error_exact"].min())
        for target in targets:
            hit = group[(group["rel_error_exact"] <= target) & np.isfinite(group[cost].astype(float))]
            row = {"variant": variant, "kappa": float(kappa), "target": float(target), "error_floor": floor}
            if len(hit):
                best = hit.loc[hit[cost].astype(float).idxmin()]
                row.update(
                    cost=float(best[cost]),
                    reached=True,
                    inner_steps=int(best["inner_steps"]),
                    cg_iters=_int_or_none(best.get("cg_iters")),
                    dim=_int_or_none(best.get("dim")),
                    least=_least(group, best, target),
                )
            else:
                row.update(cost=np.nan, reached=False, inner_steps=None, cg_iters=None, dim=None, least=None)
            rows.append(row)
    columns = [
        "variant",
        "kappa",
        "target",
        "cost",
        "reached",
        "error_floor",
        "inner_steps",
        "cg_iters",
        "dim",
        "least",
    ]
    return pd.DataFrame(rows, columns=columns)


def _int_or_none(value):
    try:
        return None if value is None or not np.isfinite(float(value)) else int(value)
    except (TypeError, ValueError):
        return None


def _least(group: pd.DataFrame, best, target: float) -> bool | None:
    """Do the point's measured cheaper neighbours (K - 1; m - 1 for a CG method) miss the target? None if none
    was measured."""
    K, m = int(best["inner_steps"]), _int_or_none(best.get("cg_iters"))
    same_m = group["cg_iters"].isna() if m is None else group["cg_iters"] == m
    neighbours = [group[(group["inner_steps"] == K - 1) & same_m]]
    if m is not None:
        neighbours.append(group[(group["inner_steps"] == K) & (group["cg_iters"] == m - 1)])
    measured = [n for n in neighbours if not n.empty]
    if not measured:
        return None
    return bool(all((n["rel_error_exact"] > target).all() for n in measured))


def table1(
    records: pd.DataFrame, targets=(0.5, 1e-1, 1e-2), cost: str = "oracle_calls", kappa_min: float = 10.0
) -> pd.DataFrame:
    """Fitted exponent of least compute in kappa, per variant and target, and the verdict against its theory.

    Kappas below ``kappa_min`` are left out of the fit (kappa = 1 is solved in one step by every
    method, before the asymptotic regime). Columns: variant, target, exponent, ci_low, ci_high,
    n_points, theory, theory_source, verdict, agrees (True/False where the verdict is agrees/disagrees,
    None otherwise), kappas_reached, kappas_missed, kappa_range (of the fit), error_floor (the smallest
    error reached at the largest kappa), least ("k/n": points whose neighbours show them least, of the n
    with neighbours measured), cg_at_largest and dim (CG iterations of the point at the largest kappa, and
    the dimension: CG needs at most dim iterations, so a count at dim is a cap, not a rate).
    """
    best = least_compute(records, targets, cost)
    rows = []
    for (variant, target), group in best.groupby(["variant", "target"]):
        fit_on = group[(group["kappa"] >= kappa_min) & group["reached"]]
        fit = fit_power_law(fit_on["kappa"], fit_on["cost"])
        theory = THEORY.get(variant, {}).get("exponent")
        largest = group.loc[group["kappa"].idxmax()]
        said = verdict(fit, theory)
        known = fit_on["least"].dropna()
        rows.append(
            {
                "variant": variant,
                "target": target,
                "exponent": fit.exponent,
                "ci_low": fit.ci_low,
                "ci_high": fit.ci_high,
                "n_points": fit.n_points,
                "theory": theory,
                "theory_source": THEORY.get(variant, {}).get("source"),
                "verdict": said,
                "agrees": {"agrees": True, "disagrees": False}.get(said),
                "kappas_reached": sorted(group.loc[group["reached"], "kappa"].tolist()),
                "kappas_missed": sorted(group.loc[~group["reached"], "kappa"].tolist()),
                "kappa_range": (float(fit_on["kappa"].min()), float(fit_on["kappa"].max())) if len(fit_on) else None,
                "error_floor": float(largest["error_floor"]),
                "least": f"{int(known.sum())}/{len(known)}" if len(known) else "-",
                "cg_at_largest": _int_or_none(fit_on.loc[fit_on["kappa"].idxmax(), "cg_iters"])
                if len(fit_on)
                else None,
                "dim": _int_or_none(fit_on["dim"].max()) if len(fit_on) else None,
            }
        )
    return pd.DataFrame(rows)


def error_floors(records: pd.DataFrame) -> pd.DataFrame:
    """The smallest error each (variant, truncation T, kappa) reached: truncated back-prop's floor per T, fomaml's.

    Columns: variant, truncate (None for untruncated variants), kappa, error_floor, inner_steps (of the record
    with the floor)."""
    data = with_variants(records[records["status"] == "ok"])
    data = data[np.isfinite(data["rel_error_exact"].astype(float))]
    rows = []
    keys = data["truncate"].where(data["truncate"].notna(), -1) if "truncate" in data else -1
    for (variant, t, kappa), group in data.assign(_t=keys).groupby(["variant", "_t", "kappa"]):
        floor = group.loc[group["rel_error_exact"].astype(float).idxmin()]
        rows.append(
            {
                "variant": variant,
                "truncate": None if t == -1 else int(t),
                "kappa": float(kappa),
                "error_floor": float(floor["rel_error_exact"]),
                "inner_steps": int(floor["inner_steps"]),
            }
        )
    return pd.DataFrame(rows, columns=["variant", "truncate", "kappa", "error_floor", "inner_steps"])


def memory_per_step(records: pd.DataFrame, value: str = "live_peak_bytes") -> pd.DataFrame:
    """Per variant (and problem): least-squares slope of peak bytes against the steps it back-propagates.

    The steps are inner_steps K, except for truncated back-prop, whose memory grows with the
    truncation length T (iMAML Table 1: Mem(grad) x T).
    Columns: variant, problem, steps_axis, slope_bytes_per_step, intercept_bytes, mem_grad_bytes (median
    ``inner_grad_peak_bytes`` where recorded), slope_over_mem_grad, peak_over_mem_grad (largest
    peak / Mem(grad)), steps (range measured).
    """
    data = with_variants(records[(records["status"] == "ok")])
    if value not in data:  # no memory pass in these records
        return pd.DataFrame()
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

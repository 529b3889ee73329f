"""How an implementation's cost grows with the inner steps K: peak live-tensor memory, wall time and (in the
functional shape) loss evaluations, at K = 1, 2, 4, ..., 32 on one float64 case.

Memory growth is read from the peaks y(K): **flat** when the largest is within 25% (and 64 KiB) of the
smallest; otherwise the better least-squares fit of ``y = a + b sqrt(K)`` (**sqrt**, as checkpointing every
sqrt(K) steps gives) or ``y = a + b K`` (**linear**, as storing every step does), whose b is the bytes per
step. Time is the median of repeats (``metabench.measure.time_call``) and is reported, never judged: it is
noisy, and its growth depends on more than the algorithm.
"""

from __future__ import annotations

import math

import torch

from metabench.certify.cases import PROFILE_CASE, Case
from metabench.measure.memory import LiveTensorTracker
from metabench.measure.timing import time_call

__all__ = ["GROWTHS", "PROFILE_STEPS", "memory_growth", "profile"]

PROFILE_STEPS = (1, 2, 4, 8, 16, 32)
GROWTHS = ("flat", "sqrt", "linear")
FLAT_RATIO, FLAT_BYTES = 1.25, 64 * 1024


def memory_growth(steps, peaks) -> tuple[str, float | None]:
    """``(growth, bytes_per_step)``: "flat", "sqrt" or "linear" (see the module docstring); the slope b of the
    chosen fit (bytes per step for linear, per sqrt(step) for sqrt), None when flat."""
    low, high = min(peaks), max(peaks)
    if high <= FLAT_RATIO * low or high - low <= FLAT_BYTES:
        return "flat", None
    y = torch.tensor(peaks, dtype=torch.float64)
    fits = {}
    for name, power in (("sqrt", 0.5), ("linear", 1.0)):
        X = torch.stack(
            [torch.ones(len(steps), dtype=torch.float64), torch.tensor(steps, dtype=torch.float64) ** power], 1
        )
        coef = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
        fits[name] = (float((X @ coef - y).norm()), float(coef[1]))
    name = min(fits, key=lambda n: fits[n][0])
    return name, fits[name][1]


def profile(target, case: Case | None = None, steps=PROFILE_STEPS, min_run_time: float = 0.05) -> dict:
    """Peak live-tensor bytes, median time and loss evaluations of one call at each K in ``steps``.

    ``case`` defaults to :data:`~metabench.certify.cases.PROFILE_CASE` (lam = 0 for a module-shaped function
    without a proximal weight). Returns lists by K and the memory growth; ``{"status": "raised", ...}`` if the
    function raised."""
    case = case or PROFILE_CASE
    if not target.proximal:
        case = Case(**{**case.to_dict(), "lam": 0.0})
    problem = case.problem()
    theta = case.theta()
    lr = case.inner_lr(problem)
    out = {"case": case.to_dict(), "threads": torch.get_num_threads(), "inner_steps": list(steps)}
    peaks, times, calls = [], [], []
    try:
        for K in steps:
            target.call(problem, theta, K, lr)  # warm-up: lazy initialisation is no memory of the algorithm
            with LiveTensorTracker() as tracker:
                _, counted = target.call(problem, theta, K, lr)
            peaks.append(int(tracker.peak_bytes))
            calls.append(counted.get("inner_loss"))
            times.append(
                time_call(lambda K=K: target.call(problem, theta, K, lr), "cpu", min_run_time, 3)["time_median_s"]
            )
    except Exception as error:  # noqa: BLE001 - the function under test may raise anything
        return {**out, "status": "raised", "message": f"{type(error).__name__}: {error}"}
    growth, slope = memory_growth(list(steps), peaks)
    out.update(status="ok", live_peak_bytes=peaks, time_median_s=times, memory_growth=growth, memory_slope=slope)
    if all(c is not None for c in calls):
        out["inner_loss_calls"] = calls
        out["inner_loss_calls_per_step"] = _slope(steps, calls)
    return out


def _slope(steps, values) -> float:
    """Least-squares slope of values against steps (calls per inner step)."""
    n = len(steps)
    mx, my = sum(steps) / n, sum(values) / n
    den = sum((s - mx) ** 2 for s in steps)
    return sum((s - mx) * (v - my) for s, v in zip(steps, values)) / den if den else math.nan

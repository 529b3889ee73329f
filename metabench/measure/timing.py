"""Wall-clock time of one zero-argument callable, with ``torch.utils.benchmark``.

What is measured: the median and inter-quartile range of the per-call time of ``fn()``.
How: one explicit warm-up call (synchronised on CUDA), then
``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time)``, which picks a number of
calls per block so one block is long enough to time reliably, then runs blocks until
``min_run_time`` has passed (at least one block, so a call slower than ``min_run_time`` is timed
once). Each block yields one per-call time (block time / calls in the block); the median and IQR
are over blocks. The Timer synchronises CUDA around every block. It runs single-threaded unless
told otherwise, so it is given ``num_threads=torch.get_num_threads()`` to time what a plain call
would do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import benchmark

__all__ = ["synchronize", "time_call"]


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` when it is a CUDA device (no-op otherwise)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device | str, min_run_time: float = 0.2, min_runs: int = 3, warmup: bool = True
) -> dict:
    """Time ``fn()``: ``{"time_median_s", "time_iqr_s", "time_runs"}``.

    ``time_runs`` is the number of timed blocks the median and IQR are taken over (each block is
    the mean of ``number_per_run`` back-to-back calls chosen by ``blocked_autorange``); when
    ``min_run_time`` gives fewer than ``min_runs`` blocks (a slow call), more blocks of the same
    size are timed, so there is always a spread.
    """
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be > 0, got {min_run_time!r}")
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs!r}")
    if warmup:  # lazy initialisation, caches, CUDA context; skip only if the caller just ran fn
        fn()
        synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    if len(measurement.times) < min_runs:
        extra = [timer.timeit(measurement.number_per_run) for _ in range(min_runs - len(measurement.times))]
        measurement = benchmark.Measurement.merge([measurement, *extra])[0]
    return {
        "time_median_s": float(measurement.median),
        "time_iqr_s": float(measurement.iqr),
        "time_runs": len(measurement.times),
    }

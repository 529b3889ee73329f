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


def time_call(fn: Callable[[], Any], device: torch.device | str, min_run_time: float = 0.2) -> dict:
    """Time ``fn()``: ``{"time_median_s", "time_iqr_s", "time_runs"}``.

    ``time_runs`` is the number of timed blocks the median and IQR are taken over (each block is
    the mean of ``number_per_run`` back-to-back calls chosen by ``blocked_autorange``).
    """
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be > 0, got {min_run_time!r}")
    fn()  # warm-up: lazy initialisation, caches, CUDA context
    synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        "time_median_s": float(measurement.median),
        "time_iqr_s": float(measurement.iqr),
        "time_runs": len(measurement.times),
    }

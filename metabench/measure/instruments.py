"""Measure one zero-argument callable with every instrument, one instrument family per pass.

Instruments perturb what they measure (a dispatch mode adds Python work to every op), so, as
TorchBench does, each family runs in its own pass over fresh instruments:

(a) time: ``time_call`` on the bare callable (no tracking, no counting);
(b) memory: one call under ``LiveTensorTracker`` + ``saved_tensor_bytes`` inside
    ``RSSSampler``, ``cuda_memory`` and ``NVMLSampler`` (when saved-tensor hooks are refused, as
    by ``torch.func.grad``, the whole pass is run again without them and ``saved_status`` says so);
(c) flops: one call under ``FlopCounterMode``.

Peaks are therefore per measured call. ``measure_call`` returns ``(measures, result)``:
``measures`` is a flat dict of plain numbers/strings/None for records, ``result`` is the value
returned by the last call ``fn`` made during measurement (the caller needs e.g. the
hypergradient itself to compute its error). The callable should be deterministic and have no
side effects that change later calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from metabench.measure.flops import count_flops
from metabench.measure.memory import (
    SAVED_HOOKS_UNAVAILABLE,
    LiveTensorTracker,
    NVMLSampler,
    RSSSampler,
    cuda_memory,
    saved_tensor_bytes,
)
from metabench.measure.timing import time_call

__all__ = ["INSTRUMENTS", "MEASURE_KEYS", "instrument_overhead", "measure_call"]

INSTRUMENTS = ("time", "memory", "flops")

#: The keys ``measure_call`` returns for each instrument family.
MEASURE_KEYS: dict[str, tuple[str, ...]] = {
    "time": ("time_median_s", "time_iqr_s", "time_runs"),
    "memory": (
        "live_peak_bytes",
        "live_allocated_bytes",
        "saved_bytes",
        "saved_status",
        "rss_peak_bytes",
        "rss_peak_delta_bytes",
        "cuda_max_allocated_bytes",
        "cuda_status",
        "nvml_peak_bytes",
        "nvml_status",
    ),
    "flops": ("matmul_flops",),
}


class _LastResult:
    """Wraps ``fn`` and keeps the value of its latest call (dropped before each new call)."""

    _unset = object()

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.value = fn, self._unset

    def __call__(self) -> None:
        self.value = self._unset  # do not keep the previous result alive during the call
        self.value = self.fn()

    @property
    def has_value(self) -> bool:
        return self.value is not self._unset


def _memory_pass(call: Callable[[], None], device: torch.device, with_saved_hooks: bool) -> dict:
    tracker = LiveTensorTracker()
    saved: tuple[int | None, str] = (None, SAVED_HOOKS_UNAVAILABLE)

    def tracked() -> None:
        with tracker:
            call()

    def run() -> None:
        nonlocal saved
        if with_saved_hooks:
            saved = saved_tensor_bytes(tracked)
        else:
            tracked()

    with RSSSampler() as rss, NVMLSampler(device) as nvml:
        cuda = cuda_memory(run, device)
    return {
        "live_peak_bytes": int(tracker.peak_bytes),
        "live_allocated_bytes": int(tracker.allocated_bytes),
        "saved_bytes": saved[0],
        "saved_status": saved[1],
        "rss_peak_bytes": int(rss.peak_bytes),
        "rss_peak_delta_bytes": int(rss.peak_delta_bytes),
        **cuda,
        "nvml_peak_bytes": nvml.peak_bytes,
        "nvml_status": nvml.status,
    }


def measure_call(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    min_run_time: float = 0.2,
    warmup: bool = True,
    instruments: Iterable[str] = INSTRUMENTS,
) -> tuple[dict, Any]:
    """Measure ``fn()`` on ``device``: ``(measures, result)``.

    ``measures`` holds the keys of ``MEASURE_KEYS`` for each requested instrument family
    (``"time"``, ``"memory"``, ``"flops"``), in separate passes; keys of families not requested
    are absent. ``result`` is ``fn``'s return value from its last call (``fn`` is called once
    more, bare, when only ``"time"`` is requested). ``warmup=False`` skips the timing pass's
    warm-up call, for a caller that has just called ``fn``. Exceptions from ``fn`` propagate.
    """
    requested = tuple(instruments)
    unknown = sorted(set(requested) - set(INSTRUMENTS))
    if unknown:
        raise ValueError(f"unknown instrument(s) {unknown}; choose from {list(INSTRUMENTS)}")
    device = torch.device(device)
    call = _LastResult(fn)
    measures: dict[str, Any] = {}
    if "time" in requested:
        measures.update(time_call(fn, device, min_run_time=min_run_time, warmup=warmup))
    if "memory" in requested:
        memory = _memory_pass(call, device, with_saved_hooks=True)
        if memory["saved_status"] == SAVED_HOOKS_UNAVAILABLE:
            memory = _memory_pass(call, device, with_saved_hooks=False)
        measures.update(memory)
    if "flops" in requested:
        measures.update(count_flops(call))
    if not call.has_value:
        call()
    return measures, call.value


def instrument_overhead(fn: Callable[[], Any], device: torch.device | str, min_run_time: float = 0.2) -> dict:
    """How much the dispatch-mode instruments slow ``fn()`` down, timed with ``time_call``.

    Returns ``{"bare_time_s", "live_tracker_ratio", "flop_counter_ratio"}``: the bare median
    time and, for each instrument, median(time of ``fn`` run inside it) / median(bare time).
    A fresh instrument is entered per call, as in a memory/FLOP pass.
    """
    device = torch.device(device)

    def with_tracker() -> None:
        with LiveTensorTracker():
            fn()

    def with_flop_counter() -> None:
        with FlopCounterMode(display=False):
            fn()

    bare = time_call(fn, device, min_run_time=min_run_time)["time_median_s"]
    tracked = time_call(with_tracker, device, min_run_time=min_run_time)["time_median_s"]
    counted = time_call(with_flop_counter, device, min_run_time=min_run_time)["time_median_s"]
    return {
        "bare_time_s": bare,
        "live_tracker_ratio": tracked / bare,
        "flop_counter_ratio": counted / bare,
    }

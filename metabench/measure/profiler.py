"""Profile one call of a zero-argument callable with ``torch.profiler``, for TensorBoard and Perfetto.

What is recorded: one warm-up call (not recorded), then one call under ``torch.profiler.profile``
with CPU activity (plus CUDA kernels when the device is CUDA and CUDA is available), input shapes
(``record_shapes``), tensor allocations and frees (``profile_memory``: ``[memory]`` instant events
whose ``args`` carry ``Bytes`` and ``Total Allocated``) and Python call stacks (``with_stack``).

What is written, for ``profile_call(fn, out_dir, name)``:

- ``out_dir/name/<host>_<pid>.<ns>.pt.trace.json``: the trace, written by
  ``torch.profiler.tensorboard_trace_handler``. ``out_dir/name`` is a TensorBoard run folder:
  ``pip install torch-tb-profiler`` then ``tensorboard --logdir out_dir`` and open the
  ``PYTORCH_PROFILER`` tab (overview, operator view, trace view, memory view). Each profile of the
  same name adds one more trace file to the run folder.
- ``out_dir/name.chrome_trace.json``: the same Chrome-trace JSON as a plain file; open it at
  https://ui.perfetto.dev ("Open trace file") or in chrome://tracing ("Load").
- ``out_dir/name.txt``: ``key_averages().table(sort_by="self_cpu_time_total", row_limit=25)``.
- ``out_dir/name.memory_timeline.json``, only with ``memory_timeline=True`` and best effort (absent
  when it fails): memory by category over time, ``[times, [bytes per category]]``, from torch's
  deprecated ``export_memory_timeline`` (slow on long traces); the memory view of the TensorBoard
  plugin does not need it.

Lower layer: imports torch only (and ``metabench.measure.timing``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

from metabench.measure.timing import synchronize

__all__ = ["TRACE_SUFFIX", "profile_activities", "profile_call"]

TRACE_SUFFIX = ".pt.trace.json"


def profile_activities(device: torch.device | str) -> list[ProfilerActivity]:
    """CPU, plus CUDA when ``device`` is a CUDA device and CUDA is available (CPU only otherwise)."""
    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    return activities


def _memory_device(device: torch.device | str) -> str:
    device = torch.device(device)
    return f"cuda:{device.index or 0}" if device.type == "cuda" else device.type


def _traces(run_dir: Path) -> set[Path]:
    return set(run_dir.glob(f"*{TRACE_SUFFIX}")) if run_dir.is_dir() else set()


def profile_call(
    fn: Callable[[], Any],
    out_dir: str | os.PathLike,
    name: str,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    memory_timeline: bool = False,
) -> dict[str, Path]:
    """Profile one call of ``fn()`` after ``warmup`` unrecorded calls; the paths written, by kind.

    Keys: ``"tensorboard_dir"`` (the run folder ``out_dir/name``), ``"tensorboard_trace"`` (the
    ``*.pt.trace.json`` this call added to it), ``"chrome_trace"``, ``"table"`` and, when
    ``memory_timeline`` is true and torch could write it, ``"memory_timeline"``. See the module
    docstring for what each file holds and how to open it. On CUDA, the device is synchronised
    after each call so the recorded call's kernels fall inside the profile.
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"profile name must be a plain file name, got {name!r}")
    out = Path(out_dir)
    run_dir = out / name
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(int(warmup)):
        fn()
        synchronize(device)
    before = _traces(run_dir)
    with profile(
        activities=profile_activities(device),
        record_shapes=True,
        profile_memory=True,
        with_stack=True,
        on_trace_ready=tensorboard_trace_handler(str(run_dir)),
    ) as prof:
        fn()
        synchronize(device)
    new = _traces(run_dir) - before
    if not new:
        raise RuntimeError(f"torch.profiler wrote no {TRACE_SUFFIX} file under {run_dir}")
    tb_trace = max(new, key=lambda p: p.stat().st_mtime_ns)
    paths: dict[str, Path] = {"tensorboard_dir": run_dir, "tensorboard_trace": tb_trace}

    chrome = out / f"{name}.chrome_trace.json"
    try:
        prof.export_chrome_trace(str(chrome))
    except RuntimeError:
        # torch's Kineto results can be saved once ("Trace is already saved"): the handler above
        # already saved them as Chrome-trace JSON, so the plain file is a copy of that one.
        shutil.copyfile(tb_trace, chrome)
    paths["chrome_trace"] = chrome

    table = out / f"{name}.txt"
    table.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n")
    paths["table"] = table

    if memory_timeline:
        timeline = out / f"{name}.memory_timeline.json"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated in torch; optional here
                prof.export_memory_timeline(str(timeline), device=_memory_device(device))
            if timeline.is_file():
                paths["memory_timeline"] = timeline
        except Exception:  # best effort: the trace's [memory] events are the record of memory
            timeline.unlink(missing_ok=True)
    return paths

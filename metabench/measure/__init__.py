"""Measurement instruments: time, memory and FLOPs of one call, and the machine it ran on.

Lower layer: imports torch, psutil, pynvml and ``metabench.algorithms``/``problems``/``errors``
at most, never the sweep/results/CLI layers. Each module has one job:

- ``timing``: ``time_call`` (``torch.utils.benchmark`` median/IQR);
- ``memory``: ``LiveTensorTracker`` (exact live tensor bytes via a dispatch mode),
  ``saved_tensor_bytes`` (autograd saved tensors), ``RSSSampler``, ``cuda_memory``, ``NVMLSampler``;
- ``flops``: ``count_flops`` (matmul-class FLOPs via ``FlopCounterMode``);
- ``instruments``: ``measure_call`` (all of the above in separate passes) and ``instrument_overhead``;
- ``machine``: ``machine_info`` and ``git_commit``.

GPU instruments degrade to ``None`` values with an ``"unavailable: <reason>"`` status.
"""

from metabench.measure.flops import count_flops
from metabench.measure.instruments import INSTRUMENTS, MEASURE_KEYS, instrument_overhead, measure_call
from metabench.measure.machine import cpu_model, git_commit, machine_info
from metabench.measure.memory import (
    SAVED_HOOKS_UNAVAILABLE,
    LiveTensorTracker,
    NVMLSampler,
    RSSSampler,
    cuda_memory,
    saved_tensor_bytes,
)
from metabench.measure.timing import synchronize, time_call

__all__ = [
    "INSTRUMENTS",
    "MEASURE_KEYS",
    "SAVED_HOOKS_UNAVAILABLE",
    "LiveTensorTracker",
    "NVMLSampler",
    "RSSSampler",
    "count_flops",
    "cpu_model",
    "cuda_memory",
    "git_commit",
    "instrument_overhead",
    "machine_info",
    "measure_call",
    "saved_tensor_bytes",
    "synchronize",
    "time_call",
]

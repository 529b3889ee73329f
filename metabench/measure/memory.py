"""Memory instruments: live tensor bytes, bytes saved for backward, process RSS, CUDA and NVML.

Five views of memory, each with its own meaning:

- ``LiveTensorTracker`` (exact, any device): the peak over the block of the bytes held by tensor
  storages *allocated inside the block* and still alive, and the total ever allocated. It is a
  ``TorchDispatchMode``, so it sees the outputs of every ATen op, including ops run by autograd's
  backward pass and under ``torch.func`` transforms (which refuse saved-tensor hooks).
- ``saved_tensor_bytes`` (exact): bytes of the distinct storages autograd saved for backward.
- ``RSSSampler`` (sampled, CPU process): the process resident set size, polled by a thread.
- ``cuda_memory`` (exact, CUDA only): the caching allocator's ``max_memory_allocated``.
- ``NVMLSampler`` (sampled, CUDA only): device-wide used memory from NVML, polled by a thread.

GPU instruments never raise for a missing GPU/driver: they report ``None`` and a status string
``"unavailable: <reason>"`` instead of ``"ok"``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from metabench.measure.timing import synchronize

__all__ = [
    "SAVED_HOOKS_UNAVAILABLE",
    "LiveTensorTracker",
    "NVMLSampler",
    "RSSSampler",
    "cuda_memory",
    "saved_tensor_bytes",
]

SAVED_HOOKS_UNAVAILABLE = "unavailable: torch.func does not support saved tensor hooks"

# Ops whose output aliases an input by schema but is, for the user, a freshly created tensor:
# ``torch.tensor(...)`` builds its data outside the dispatcher and then calls ``lift_fresh``.
_FRESH_OPS = frozenset({torch.ops.aten.lift_fresh.default})


def _storage(t: Any) -> torch.UntypedStorage | None:
    """The tensor's storage, or None for non-tensors, meta tensors and storage-less subclasses."""
    if not isinstance(t, torch.Tensor):
        return None
    try:
        if t.device.type == "meta":
            return None
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # sparse, wrapper subclasses, ...
        return None


class LiveTensorTracker(TorchDispatchMode):
    """Peak and total bytes of tensor storages allocated inside a ``with`` block.

    How: after each ATen op, every output tensor's storage (``t.untyped_storage()``) that was not
    among the op's inputs and has not been seen before is a new allocation: its ``nbytes()`` is
    added to the live total and to ``allocated_bytes``, and ``weakref.finalize`` on the storage
    object subtracts it when the storage is freed. Since torch 2.1 the Python storage object is
    kept alive exactly as long as the C++ storage, so the finalizer fires when the memory is
    released (by Python code, the autograd engine or a ``torch.func`` transform alike). Storages
    are keyed by the identity of that Python object (stable for the storage's lifetime).

    Results (bytes): ``peak_bytes`` (max live total, relative to entry: tensors alive before the
    block, and views or in-place results of them, count zero), ``allocated_bytes`` (sum of all
    allocations), ``current_bytes`` (still live at exit), ``n_allocations``.

    Limits: logical storage bytes, not allocator blocks (no CUDA caching/rounding, no CPU malloc
    overhead); memory allocated outside the dispatcher (workspaces inside a kernel, numpy arrays
    wrapped by ``from_numpy``) is invisible; a storage *resized* in place counts its growth only if
    it was allocated inside the block; meta tensors and storage-less subclasses (sparse, wrapper
    subclasses) are skipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._live: dict[int, list] = {}  # id(storage) -> [counted nbytes, finalizer]
        self.current_bytes = 0
        self.peak_bytes = 0
        self.allocated_bytes = 0
        self.n_allocations = 0

    def __enter__(self) -> LiveTensorTracker:
        with self._lock:
            self._reset()
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        with self._lock:  # stop listening: later frees are outside the block
            for entry in self._live.values():
                entry[1].detach()
            self._live = {}

    # ------------------------------------------------------------------ bookkeeping
    def _on_free(self, key: int) -> None:
        with self._lock:
            entry = self._live.pop(key, None)
            if entry is not None:
                self.current_bytes -= entry[0]

    def _record(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        nbytes = storage.nbytes()
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                finalizer = weakref.finalize(storage, self._on_free, key)
                finalizer.atexit = False
                self._live[key] = [nbytes, finalizer]
                self.n_allocations += 1
                growth = nbytes
            else:  # seen before: only a resize changes anything
                growth = nbytes - entry[0]
                entry[0] = nbytes
            if growth > 0:
                self.allocated_bytes += growth
            self.current_bytes += growth
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        input_ids = None
        for t in tree_leaves(out):
            storage = _storage(t)
            if storage is None:
                continue
            if id(storage) not in self._live and func not in _FRESH_OPS:
                if input_ids is None:
                    input_ids = {id(s) for s in map(_storage, tree_leaves((args, kwargs))) if s is not None}
                if id(storage) in input_ids:  # a view / in-place / out= result of an older tensor
                    continue
            self._record(storage)
        return out


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[int | None, str]:
    """Bytes autograd saves for backward while ``fn()`` runs: ``(bytes, "ok")``.

    How: a ``torch.autograd.graph.saved_tensors_hooks`` pack hook sees every tensor saved into a
    graph and adds its storage's ``nbytes()`` once per distinct storage (held weakly, so the
    measurement does not keep anything alive), returning the tensor unchanged. The figure is the
    total over every graph built during the call, including graphs freed before it ends (not a
    peak); inputs saved by an op (e.g. data matrices) count once.

    ``torch.func.grad``/``vjp``/``jacrev``/``hessian`` refuse saved-tensor hooks: then ``fn``'s
    partial run is abandoned and ``(None, SAVED_HOOKS_UNAVAILABLE)`` is returned (re-running ``fn``
    without hooks is the caller's business). Any other exception propagates.
    """
    seen: dict[int, weakref.ref] = {}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = _storage(t)
        if storage is not None:
            ref = seen.get(id(storage))
            if ref is None or ref() is not storage:
                seen[id(storage)] = weakref.ref(storage)
                total += storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    except RuntimeError as error:
        if "saved tensor hooks" in str(error):
            return None, SAVED_HOOKS_UNAVAILABLE
        raise
    return total, "ok"


class _Poller:
    """A daemon thread calling ``sample()`` every ``interval_s`` until stopped; keeps the max."""

    def __init__(self, sample: Callable[[], int], interval_s: float) -> None:
        self._sample, self._interval = sample, interval_s
        self._stop = threading.Event()
        self.peak = self._sample()
        self.first = self.peak
        self.n_samples = 1
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="metabench-memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval) and self.error is None:
            self._take()

    def _take(self) -> None:
        try:
            value = self._sample()
        except Exception as error:  # a sampler thread must not die noisily; reported via .error
            self.error = error
            return
        self.n_samples += 1
        if value > self.peak:
            self.peak = value

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is None:
            self._take()  # a last sample at the end of the block


class RSSSampler:
    """Peak resident set size of this process over a ``with`` block, *sampled*.

    How: ``psutil.Process().memory_info().rss`` at entry (``baseline_bytes``), then every
    ``interval_s`` (default ~1 ms) from a daemon thread, and once at exit; ``peak_bytes`` is the
    largest sample and ``peak_delta_bytes = peak_bytes - baseline_bytes``. Being sampled, it can
    miss spikes shorter than the interval (or than a GIL hand-off, when the measured code holds
    the GIL). RSS is process-wide (other threads count) and the allocator may keep freed memory
    mapped, so reused memory shows as no growth: use it as a coarse, allocator-level cross-check.
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.peak_delta_bytes: int | None = None
        self.n_samples = 0

    def __enter__(self) -> RSSSampler:
        process = psutil.Process()
        self._poller = _Poller(lambda: process.memory_info().rss, self.interval_s)
        self.baseline_bytes = self._poller.first
        return self

    def __exit__(self, *exc: Any) -> None:
        self._poller.stop()
        self.peak_bytes = self._poller.peak
        self.peak_delta_bytes = self.peak_bytes - self.baseline_bytes
        self.n_samples = self._poller.n_samples


def _cuda_unavailable_reason(device: torch.device) -> str | None:
    """Why CUDA memory cannot be measured on ``device`` (None when it can)."""
    if device.type != "cuda":
        return f"device is {device.type}"
    if not torch.cuda.is_available():
        return "CUDA not available on this machine"
    return None


def cuda_memory(fn: Callable[[], Any], device: torch.device | str) -> dict:
    """Run ``fn()`` once and report the CUDA caching allocator's peak.

    How: synchronise, ``torch.cuda.reset_peak_memory_stats(device)``, run, synchronise, read
    ``torch.cuda.max_memory_allocated(device)``: the peak bytes held by tensors on the device
    during the call, *including* what was allocated before it (the peak is reset to the current
    allocation, not to zero). Returns ``{"cuda_max_allocated_bytes", "cuda_status"}``; when the
    device is not CUDA or CUDA is unavailable, ``fn`` still runs and the result is
    ``{"cuda_max_allocated_bytes": None, "cuda_status": "unavailable: <reason>"}``.
    """
    device = torch.device(device)
    reason = _cuda_unavailable_reason(device)
    if reason is not None:
        fn()
        return {"cuda_max_allocated_bytes": None, "cuda_status": f"unavailable: {reason}"}
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return {"cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated(device)), "cuda_status": "ok"}


def _nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """The NVML handle of torch's ``device``.

    NVML numbers GPUs in PCI order and ignores ``CUDA_VISIBLE_DEVICES``. When torch can see the
    device its UUID identifies it exactly; otherwise the index is mapped through
    ``CUDA_VISIBLE_DEVICES`` when that lists indices or UUIDs (assuming ``CUDA_DEVICE_ORDER`` is
    ``PCI_BUS_ID``; MIG instances are not resolved).
    """
    index = device.index if device.index is not None else 0
    if torch.cuda.is_available():
        if device.index is None:
            index = torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}")
            except pynvml.NVMLError:
                pass  # fall back to the index mapping
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        entry = visible[index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        return pynvml.nvmlDeviceGetHandleByUUID(entry)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class NVMLSampler:
    """Peak device-wide GPU memory in use over a ``with`` block, from NVML, *sampled*.

    How: ``pynvml.nvmlInit()`` at entry, then ``nvmlDeviceGetMemoryInfo(handle).used`` for the
    device at entry (``baseline_bytes``), every ``interval_s`` (~1 ms) from a daemon thread and
    at exit; ``peak_bytes`` is the largest sample; ``nvmlShutdown()`` at exit. This is what
    ``nvidia-smi`` shows: all processes on the GPU, the CUDA context and the caching allocator's
    reserved (not just allocated) memory. ``status`` is ``"ok"``, or ``"unavailable: <reason>"``
    (CPU device, no NVML library/driver, unknown device) with ``peak_bytes = None``; it never
    raises for a missing GPU.
    """

    def __init__(self, device: torch.device | str, interval_s: float = 0.001) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.status = "unavailable: not run"
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.n_samples = 0
        self._pynvml: Any = None
        self._poller: _Poller | None = None

    def __enter__(self) -> NVMLSampler:
        self.baseline_bytes = self.peak_bytes = None
        if self.device.type != "cuda":
            self.status = f"unavailable: device is {self.device.type}"
            return self
        try:
            import pynvml
        except ImportError:
            self.status = "unavailable: pynvml (nvidia-ml-py) is not installed"
            return self
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            self.status = f"unavailable: NVML init failed ({error})"
            return self
        self._pynvml = pynvml
        try:
            handle = _nvml_handle(pynvml, self.device)
            self._poller = _Poller(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used), self.interval_s)
        except (pynvml.NVMLError, RuntimeError, ValueError, AssertionError) as error:
            self.status = f"unavailable: no NVML handle for {self.device} ({error})"
            self._shutdown()
            return self
        self.baseline_bytes = self._poller.first
        self.status = "ok"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._poller is not None:
            self._poller.stop()
            self.n_samples = self._poller.n_samples
            if self._poller.error is None:
                self.peak_bytes = self._poller.peak
            else:
                self.status = f"unavailable: NVML sampling failed ({self._poller.error})"
            self._poller = None
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pynvml is not None:
            try:
                self._pynvml.nvmlShutdown()
            except self._pynvml.NVMLError:
                pass
            self._pynvml = None

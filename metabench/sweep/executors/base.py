"""What every executor shares: the interface the runner drives, and the function a worker runs.

An :class:`Executor` runs *jobs* (one case, or a chunk of cases for ``submitit``) somewhere and hands their
records back to the driver, which alone writes the store (``sweep.runner``): workers never touch it, so the
store keeps its guarantees (each case once, resumable, nothing lost) whatever the executor. At most
``slots`` jobs are in flight at a time (a parallel executor keeps one queued beyond its workers, so no worker
waits for the driver to write a record), so the runner's in-flight markers name only cases that are running
or next.

A job whose worker died (a segmentation fault, the OOM killer, ``kill -9``, a SLURM job killed at its time
limit) comes back as a :class:`WorkerLost` with the reason; ``definitive`` says whether the executor knows
that this job killed it (dask after its retries, a job of one case) or only that it was running when the
worker died next to others (a broken process pool), in which case the runner runs it again alone.

**The worker** (:func:`run_jobs_on_worker`) pins torch's intra-op threads to the executor's ``threads``
before each job (a case's own ``threads`` still wins: it is a case parameter) and stamps each record with
``executor``, ``worker`` (host:pid, and the dask worker's name) and ``gpu`` (CUDA_VISIBLE_DEVICES, or null).
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Executor", "WorkerLost", "pin_threads", "run_jobs_on_worker", "worker_fields"]


@dataclass
class WorkerLost:
    """A job that did not come back: its worker died (``reason`` says how)."""

    reason: str
    definitive: bool = False


def pin_threads(threads: int | None) -> None:
    """torch's intra-op threads (and the BLAS libraries' through the environment, for processes not yet
    started) at ``threads``; None leaves them alone."""
    if threads is None:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def worker_fields(executor: str) -> dict[str, Any]:
    """``executor``, ``worker`` and ``gpu`` of the records this process writes."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:  # inside a dask worker: its name too
        from distributed import get_worker

        worker += f" ({get_worker().name})"
    except (ImportError, ValueError):
        pass
    return {"executor": executor, "worker": worker, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}


def run_jobs_on_worker(cases: list[dict], executor: str, threads: int | None, imports: tuple[str, ...] = ()):
    """The records of ``cases``, run one after another in this (worker) process (module docstring)."""
    import importlib

    for module in imports:  # the user's --import modules: their registrations exist here too
        importlib.import_module(module)
    from metabench.sweep.case import run_case  # after the imports: they may wrap it

    pin_threads(threads)
    stamp = worker_fields(executor)
    return [run_case(case) | stamp for case in cases]


class Executor(ABC):
    """Runs jobs (lists of cases) and returns their records; see the module docstring."""

    name: ClassVar[str]
    #: cases per job (``submitit`` may take more than one)
    chunk: int = 1

    def __init__(self, workers: int = 1, threads: int | None = 1, imports: tuple[str, ...] = ()):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads (per worker) must be None or an integer >= 1, got {threads!r}")
        self.workers, self.threads, self.imports = workers, threads, tuple(imports)

    @property
    def slots(self) -> int:
        """Jobs that may be in flight at once."""
        return self.workers

    def describe(self) -> str:
        return f"{self.name} executor, {self.workers} worker(s) x {self.threads or 'default'} thread(s)"

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.close(cancel=kind is not None)

    def start(self) -> None:  # noqa: B027 - an optional hook
        """Start workers or connect to a cluster."""

    def close(self, cancel: bool = False) -> None:  # noqa: B027 - an optional hook
        """Stop what ``start`` started; ``cancel`` drops jobs still queued or running (Ctrl-C)."""

    @abstractmethod
    def submit(self, cases: list[dict]) -> Any:
        """Start a job on ``cases``; returns a handle for :meth:`wait`."""

    @abstractmethod
    def wait(self, handles: list) -> list[tuple[Any, list[dict] | WorkerLost]]:
        """Block until at least one of ``handles`` is done; return each done handle with its records (one per
        case, in order) or a :class:`WorkerLost`."""

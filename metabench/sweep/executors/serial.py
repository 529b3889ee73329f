"""``serial``: every case in this process, one after another (the default).

A case that kills this process kills the run; the runner's in-flight markers turn a case that did so twice
into a ``failed`` record on the next run (``sweep.runner``). Threads: None by default (a case's ``threads``, or
torch's default), as metabench has always run.
"""

from __future__ import annotations

from metabench.sweep.executors.base import Executor, run_jobs_on_worker

__all__ = ["SerialExecutor"]


class SerialExecutor(Executor):
    name = "serial"

    def __init__(self, workers: int = 1, threads: int | None = None, imports: tuple[str, ...] = ()):
        if workers != 1:
            raise ValueError(f"the serial executor runs one case at a time: workers must be 1, got {workers!r}")
        super().__init__(1, threads, imports)

    def submit(self, cases):
        import torch

        before = torch.get_num_threads()
        try:
            return run_jobs_on_worker(cases, self.name, self.threads, self.imports)
        finally:
            torch.set_num_threads(before)  # the driver's own threads are not the worker's business

    def wait(self, handles):
        return [(handle, handle) for handle in handles]

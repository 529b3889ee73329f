"""``submitit``: cases (or chunks of ``chunk`` cases) as SLURM jobs through submitit, or as local subprocess
jobs (submitit's local executor) where there is no SLURM, or ``cluster="local"`` is asked for.

Needs the ``distributed`` extra. Job files (logs, pickled results) go to ``folder`` (default
``<out>/submitit``). SLURM parameters: ``partition``, ``time_min`` (the job's limit), ``gpus`` (per job; each
job is one task, so it sees its GPUs only), ``mem_gb``, ``cpus`` (per job; default ``threads``), and any
other ``slurm_*`` parameter of submitit's ``AutoExecutor.update_parameters`` through ``extra``.

**A job that dies** (killed at its time limit, the OOM killer, a segfault) raises in ``job.result()``; a job
of one case becomes that case's ``failed`` record, a chunk's cases are run again one job each, so the case
that kills its job is found and the others are measured.
"""

from __future__ import annotations

import time
from pathlib import Path

from metabench.sweep.executors.base import Executor, WorkerLost, run_jobs_on_worker

__all__ = ["SubmititExecutor"]


def _submitit():
    try:
        import submitit
    except ModuleNotFoundError:
        raise ValueError("--executor submitit needs submitit: pip install 'metabench[distributed]'") from None
    return submitit


class SubmititExecutor(Executor):
    name = "submitit"

    def __init__(
        self,
        workers: int = 2,
        threads: int | None = 1,
        imports: tuple[str, ...] = (),
        folder: str | Path = "submitit",
        cluster: str | None = None,
        partition: str | None = None,
        time_min: int = 60,
        gpus: int = 0,
        mem_gb: float | None = None,
        cpus: int | None = None,
        chunk: int = 1,
        poll_s: float = 0.2,
        extra: dict | None = None,
    ):
        super().__init__(workers, threads, imports)
        for key, value, low in (("time_min", time_min, 1), ("gpus", gpus, 0), ("chunk", chunk, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if cluster not in (None, "slurm", "local", "debug"):
            raise ValueError(f"cluster must be one of slurm, local, debug (or None: auto), got {cluster!r}")
        self.folder, self.cluster, self.chunk, self.poll_s = Path(folder), cluster, chunk, poll_s
        self.parameters = {"timeout_min": time_min, "tasks_per_node": 1, "nodes": 1, "name": "metabench"}
        self.parameters["cpus_per_task"] = cpus or threads or 1
        if gpus:
            self.parameters["gpus_per_node"] = gpus
        if mem_gb is not None:
            self.parameters["mem_gb"] = mem_gb
        if partition:
            self.parameters["slurm_partition"] = partition
        self.parameters.update(extra or {})
        self._executor = None
        _submitit()

    def describe(self) -> str:
        kind = self._executor.cluster if self._executor is not None else (self.cluster or "auto")
        return f"submitit executor ({kind}), {self.workers} job(s) at a time, {self.chunk} case(s) per job"

    def start(self) -> None:
        submitit = _submitit()
        self._executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        self._executor.update_parameters(**self.parameters)
        self._jobs = []

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for job in getattr(self, "_jobs", []):
                if not job.done():
                    job.cancel(check=False)
        self._executor = None

    def submit(self, cases):
        job = self._executor.submit(run_jobs_on_worker, cases, self.name, self.threads, self.imports)
        self._jobs = [j for j in self._jobs if not j.done()] + [job]
        return job

    def wait(self, handles):
        while True:
            done = [job for job in handles if job.done()]
            if done:
                break
            time.sleep(self.poll_s)
        out = []
        for job in done:
            try:
                out.append((job, job.result()))
            except Exception as error:  # noqa: BLE001 - a job that died or was killed
                text = " ".join(str(error).split())[:300]
                reason = f"its submitit job {job.job_id} ended without results ({type(error).__name__}: {text})"
                out.append((job, WorkerLost(reason, definitive=False)))
        return out

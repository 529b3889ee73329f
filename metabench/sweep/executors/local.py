"""``local``: N worker processes on this machine (``concurrent.futures.ProcessPoolExecutor``, spawned).

Each worker is a fresh interpreter (the ``spawn`` start method: no forked torch state, no inherited thread
pools) whose BLAS and torch intra-op threads are pinned to ``threads`` (1 by default) before torch loads.
Where this machine has GPUs, worker i sees only GPU i mod n (``CUDA_VISIBLE_DEVICES``, set before CUDA starts).

**A worker that dies** breaks the whole pool (that is how ``ProcessPoolExecutor`` reports it: every job in
flight fails with ``BrokenProcessPool``). The pool is rebuilt, and the jobs that were in flight come back as
:class:`WorkerLost`; the runner runs each again alone, so a case that kills its worker is found (it kills its
worker a second time, alone, and is recorded failed) and the others are measured.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

from metabench.sweep.executors.base import Executor, WorkerLost, pin_threads, run_jobs_on_worker

__all__ = ["LocalExecutor", "visible_gpus"]


def visible_gpus() -> list[str]:
    """The GPUs this machine shows (ids as CUDA_VISIBLE_DEVICES takes them); [] without CUDA."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPUs
        return []


def _init_worker(threads, gpus, counter) -> None:
    """Runs first in every worker: its GPU (the next of ``gpus``, round robin) and its threads."""
    if gpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    pin_threads(threads)


def _ping() -> bool:
    return True


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int = 2, threads: int | None = 1, imports: tuple[str, ...] = ()):
        super().__init__(workers, threads, imports)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._context = multiprocessing.get_context("spawn")
        self._gpus = visible_gpus()

    @property
    def slots(self) -> int:
        return self.workers + 1  # one queued: a worker that finishes starts the next case at once

    def describe(self) -> str:
        gpus = f", GPUs {','.join(self._gpus)} round robin" if self._gpus else ""
        return super().describe() + gpus

    def start(self) -> None:
        self._known = {}  # pid -> Process of this pool's workers, so a dead one's exit status can be read
        counter = self._context.Value("i", 0)
        self._pool = cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self.threads, self._gpus, counter),
        )
        try:  # workers that cannot start must not be taken for cases that kill them
            self._pool.submit(_ping).result()
        except cf.process.BrokenProcessPool:
            codes = self._exit_codes()
            self.close(cancel=True)
            raise RuntimeError(
                f"the local executor's worker processes could not start ({codes}; their error is printed above). "
                "A script that runs a sweep on worker processes must start it under "
                '`if __name__ == "__main__":` (workers are spawned: they import the main module)'
            ) from None

    def close(self, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:  # Ctrl-C: do not wait for the cases in flight (their workers got the signal too)
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
        else:
            pool.shutdown(wait=True)

    def submit(self, cases):
        future = self._pool.submit(run_jobs_on_worker, cases, self.name, self.threads, self.imports)
        self._known.update(getattr(self._pool, "_processes", None) or {})  # spawned lazily: kept for _exit_codes
        return future

    def wait(self, handles):
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out, broken = [], False
        for future in done:
            try:
                out.append((future, future.result()))
            except cf.process.BrokenProcessPool:
                broken = True
                out.append((future, None))
        if broken:
            codes = self._exit_codes()
            self.close(cancel=True)
            self.start()
            # every job in flight failed with the pool: the others in ``handles`` are gone too
            lost = [f for f in handles if f not in done]
            for future in lost:
                future.cancel()
            out += [(f, None) for f in lost]
            reason = f"its worker process died ({codes}) while it ran" + (
                "" if len(handles) == 1 else f", with {len(handles)} jobs in flight"
            )
            out = [(f, r if r is not None else WorkerLost(reason)) for f, r in out]
        return out

    def _exit_codes(self) -> str:
        """How the pool's dead workers ended: 'exit code 139', 'signal SIGKILL', ..."""
        import signal

        ends = []
        known = {**self._known, **(getattr(self._pool, "_processes", None) or {})}
        for process in known.values():
            process.join(timeout=5.0)  # a dead worker's status is set once it is reaped (slow on a loaded machine)
            code = process.exitcode
            if code is None or code == 0:
                continue
            ends.append(f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
        return ", ".join(sorted(set(ends))) or "exit status unknown"

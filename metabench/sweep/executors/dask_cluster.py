"""``dask``: cases as tasks on a dask.distributed cluster (``--scheduler ADDRESS``), or on a ``LocalCluster``
of ``workers`` processes with one thread each when no address is given.

Needs the ``distributed`` extra (``pip install metabench[distributed]``). Each case is one task
(``pure=False``: a rerun is a new measurement, never a cached result). Workers pin torch's threads per task
(``threads``); on a cluster of your own, start workers with ``--nthreads 1`` so that two cases do not share
a worker's cores, and give each its GPU the dask way (dask-cuda's ``LocalCUDACluster``, or one worker per
GPU with CUDA_VISIBLE_DEVICES set): the records name the worker and its CUDA_VISIBLE_DEVICES.

**A worker that dies** with a task on it is dask's to handle first: the scheduler runs the task again
elsewhere and gives up after ``retries`` + 1 deaths (dask's ``distributed.scheduler.allowed-failures``,
1 here), raising ``KilledWorker``. dask blames every task that was on the dead worker, queued ones too, so
``KilledWorker`` is not taken as proof: the runner runs that case again alone, and only a case that kills
its workers then as well becomes a ``failed`` record (an innocent neighbour is measured).

**dask's sampling profiler is switched off** (``distributed.worker.profile.enabled``): every 10 ms it takes
``sys._current_frames()`` of the worker threads and holds those frames, and with them the running case's
local tensors, a little past their end. The live-tensor peak then depends on when the sampler fired
(measured: imaml's peak on a 4-dimensional problem moved by 16 to 256 bytes between runs). A LocalCluster
inherits the setting; a cluster of your own must start its workers with it
(``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``), and ``start`` warns when one does not.
"""

from __future__ import annotations

import warnings

from metabench.sweep.executors.base import Executor, WorkerLost, run_jobs_on_worker

__all__ = ["PROFILER_OFF", "DaskExecutor", "ProfilerWarning"]

# dask config for measuring workers: no retry storm, and no profiler holding the cases' frames
PROFILER_OFF = {"distributed.worker.profile.enabled": False}


class ProfilerWarning(UserWarning):
    """dask workers that sample their threads' stacks: live-tensor peaks may vary by a few tensors."""


def _profiling(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def _distributed():
    try:
        import distributed
    except ModuleNotFoundError:
        raise ValueError(
            "--executor dask needs dask.distributed: pip install 'metabench[distributed]' (or dask[distributed])"
        ) from None
    return distributed


class DaskExecutor(Executor):
    name = "dask"

    def __init__(
        self,
        workers: int = 2,
        threads: int | None = 1,
        imports: tuple[str, ...] = (),
        scheduler: str | None = None,
        retries: int = 1,
    ):
        super().__init__(workers, threads, imports)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        self.scheduler, self.retries = scheduler, retries
        self._client = self._cluster = self._config = None
        _distributed()

    def describe(self) -> str:
        where = f"scheduler {self.scheduler}" if self.scheduler else f"LocalCluster of {self.workers} process(es)"
        return f"dask executor on a {where}, {self.threads or 'default'} thread(s) per case"

    @property
    def slots(self) -> int:
        if self._client is not None and self.scheduler:
            return max(1, sum(self._client.nthreads().values())) + 1  # every worker thread, and one queued
        return self.workers + 1

    def start(self) -> None:
        import dask

        distributed = _distributed()
        self._config = dask.config.set({"distributed.scheduler.allowed-failures": self.retries, **PROFILER_OFF})
        self._config.__enter__()
        if self.scheduler:
            self._client = distributed.Client(self.scheduler)
            profiling = sorted(w for w, on in self._client.run(_profiling).items() if on)
            if profiling:
                warnings.warn(
                    f"{len(profiling)} dask worker(s) run dask's sampling profiler ({', '.join(profiling[:3])}), "
                    "which holds the running case's frames: live_peak_bytes may vary by a few tensors between runs. "
                    "Start the workers with DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False.",
                    ProfilerWarning,
                    stacklevel=3,
                )
        else:
            env = {var: str(self.threads or 1) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            self._cluster = distributed.LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=env,
            )
            self._client = distributed.Client(self._cluster)

    def close(self, cancel: bool = False) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._config is not None:
            self._config.__exit__(None, None, None)
        self._client = self._cluster = self._config = None

    def submit(self, cases):
        return self._client.submit(run_jobs_on_worker, cases, self.name, self.threads, self.imports, pure=False)

    def wait(self, handles):
        distributed = _distributed()
        done, _ = distributed.wait(handles, return_when="FIRST_COMPLETED")
        out = []
        for future in done:
            try:
                out.append((future, future.result()))
            except distributed.KilledWorker as error:
                deaths = self.retries + 1
                out.append((future, WorkerLost(f"{deaths} dask workers died while it was on them ({error})")))
            except Exception as error:  # noqa: BLE001 - e.g. the worker could not unpickle the job
                out.append((future, WorkerLost(f"dask raised {type(error).__name__}: {error}", definitive=True)))
        return out

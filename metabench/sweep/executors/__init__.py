"""Where a sweep's cases run: ``serial`` (this process, the default), ``local`` (worker processes on this
machine), ``dask`` (a dask.distributed cluster), ``submitit`` (SLURM jobs, or submitit's local executor).

Every executor returns records to the one writer, the runner (``sweep.runner``); adding one is a file with an
:class:`~metabench.sweep.executors.base.Executor` subclass and a line in ``EXECUTORS``. The ``dask`` and
``submitit`` modules import their libraries only when used (the ``distributed`` extra).
"""

from __future__ import annotations

import importlib

from metabench.sweep.executors.base import Executor, WorkerLost, run_jobs_on_worker

__all__ = ["EXECUTORS", "Executor", "WorkerLost", "make_executor", "run_jobs_on_worker"]

#: name -> "module:class", imported when asked for
EXECUTORS = {
    "serial": "metabench.sweep.executors.serial:SerialExecutor",
    "local": "metabench.sweep.executors.local:LocalExecutor",
    "dask": "metabench.sweep.executors.dask_cluster:DaskExecutor",
    "submitit": "metabench.sweep.executors.slurm:SubmititExecutor",
}


def executor_class(name: str) -> type[Executor]:
    if name not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_executor(name: str = "serial", **options) -> Executor:
    """An executor by name; options it does not take are a ValueError naming them and the ones it takes."""
    import inspect

    cls = executor_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"the {name} executor does not take {', '.join(unknown)} (it takes {', '.join(accepted)})")
    return cls(**options)

"""Run a sweep into a results store: resumable, one flushed record per case, with progress, on any executor.

The cases run where the executor puts them (``sweep.executors``: this process, worker processes, a dask
cluster, SLURM jobs); the records come back here and this module alone writes the store.

Several runs of one sweep may share an out folder at once: before each case the runner picks up what the
others wrote and skips a case already there, and the store writes each case once whoever finishes it first.
An interrupt (KeyboardInterrupt) goes on to the caller and leaves every record fully written or absent.

**A case that kills the process** (a segmentation fault inside a library, the kernel's OOM killer) cannot become
a record in that process. Before each case the runner leaves a marker, ``<store>.inflight/<case_id>``, holding how
many runs have started it, and removes it once the case has a record (or on Ctrl-C, which is no fault of the
case). A rerun finds the marker: one death may be a kill from outside (``kill -9``, a closed laptop), so the case
runs again; a case that was in flight when a run died ``CRASH_ATTEMPTS`` times gets a ``failed`` record saying so,
and the sweep goes on past it instead of dying on it at every rerun.
"""

from __future__ import annotations

import collections
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from metabench.options import label
from metabench.results import ResultsStore
from metabench.sweep.case import crashed_record, worker_lost_record
from metabench.sweep.executors import Executor, WorkerLost
from metabench.sweep.executors.serial import SerialExecutor
from metabench.sweep.spec import Sweep

__all__ = ["CRASH_ATTEMPTS", "ContentionWarning", "SweepSummary", "contention", "run_sweep"]

#: runs that may die with a case in flight before that case is recorded as failed
CRASH_ATTEMPTS = 2


class _InFlight:
    """``<store>.inflight/<case_id>``: how many runs started the case without writing its record."""

    def __init__(self, store_path: Path):
        self.folder = store_path.with_name(store_path.name + ".inflight")

    def _path(self, cid: str) -> Path:
        return self.folder / cid

    def deaths(self, cid: str) -> int:
        try:
            return int(self._path(cid).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def start(self, cid: str) -> int:
        """Mark the case as started once more; return how many earlier starts ended in a dead process."""
        before = self.deaths(cid)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(cid)
        with open(path, "w") as fh:
            fh.write(f"{before + 1}\n")
            fh.flush()
            os.fsync(fh.fileno())
        return before

    def done(self, cid: str) -> None:
        try:
            self._path(cid).unlink()
        except FileNotFoundError:
            pass
        try:
            self.folder.rmdir()  # only when empty (another run may have cases in flight)
        except OSError:
            pass


@dataclass
class SweepSummary:
    """What a run did: the store's path, cases run and written now, cases of the sweep already in the store
    (at the start, or written meanwhile by another run), cases run here but written first by another run
    (``duplicates_avoided``, not written again), and statuses of the records written now."""

    path: Path
    ran: int = 0
    already_done: int = 0
    duplicates_avoided: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


def _label(case: dict) -> str:
    kappa = case["problem_params"].get("kappa")
    text = label(case["algorithm"], case["options"])
    return text + (f" kappa={kappa:g}" if isinstance(kappa, (int, float)) else "")


class ContentionWarning(UserWarning):
    """More worker threads than cores: timings measure contention."""


def contention(cases: list[dict], executor: Executor) -> str | None:
    """A warning when the workers' threads exceed this machine's cores (timings would measure contention)."""
    if executor.name in ("dask", "submitit") or executor.workers == 1:
        return None  # cluster workers run elsewhere; one worker at a time cannot contend with itself
    per_case = max((c.get("threads") or executor.threads or os.cpu_count() or 1) for c in cases) if cases else 1
    cores = os.cpu_count() or 1
    if executor.workers * per_case <= cores:
        return None
    return (
        f"{executor.workers} workers x {per_case} thread(s) = {executor.workers * per_case} threads on {cores} cores: "
        "the timings then measure contention (use fewer workers or threads)"
    )


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    progress: bool = True,
    limit: int | None = None,
    executor: Executor | None = None,
) -> SweepSummary:
    """Run every case of ``sweep`` not yet in ``out_dir/<sweep.name>.jsonl``; return a summary.

    ``executor`` (default: serial, in this process) runs the cases; whatever it is, this function alone
    writes the store, one flushed record per case as each comes back, so an interrupted run loses at most
    the cases in flight, and running again resumes where it stopped. A job whose worker died is run again
    alone; if it kills its worker again it becomes a ``failed`` record and the sweep goes on. ``limit`` caps
    the cases taken up now (the first ``limit`` cases not in the store when the run starts).
    """
    executor = executor if executor is not None else SerialExecutor()
    store = ResultsStore(Path(out_dir) / f"{sweep.name}.jsonl")
    cases = sweep.cases()
    todo = [c for c in cases if c["case_id"] not in store]
    summary = SweepSummary(path=store.path, already_done=len(cases) - len(todo))
    if limit is not None:
        todo = todo[:limit]
    warning = contention(todo, executor)
    if warning:
        warnings.warn(warning, ContentionWarning, stacklevel=2)
    counts: collections.Counter = collections.Counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=sweep.name, unit="case", dynamic_ncols=True)
    inflight = _InFlight(store.path)
    queue, alone = collections.deque(todo), collections.deque()  # alone: cases whose worker died next to others
    running: list[tuple] = []  # (handle, cases, ran alone)
    started: set[str] = set()

    def finish(case: dict, record: dict) -> None:
        if store.append(record):
            counts[record["status"]] += 1
            summary.ran += 1
        else:
            summary.duplicates_avoided += 1
        inflight.done(case["case_id"])
        if bar is not None:
            bar.update(1)

    def next_batch() -> list[dict]:
        """Up to ``executor.chunk`` cases of the queue still to run (another run may have written some)."""
        batch = []
        while queue and len(batch) < executor.chunk:
            case = queue.popleft()
            store.refresh()
            cid = case["case_id"]
            if cid in store:
                summary.already_done += 1
                if bar is not None:
                    bar.update(1)
                continue
            deaths = inflight.deaths(cid)
            if deaths >= CRASH_ATTEMPTS:
                finish(case, crashed_record(case, deaths))
                continue
            batch.append(case)
        return batch

    def submit(batch: list[dict], solo: bool) -> None:
        for case in batch:
            if case["case_id"] not in started:  # a run again of a case is not another start of this run
                inflight.start(case["case_id"])
                started.add(case["case_id"])
        if bar is not None:
            busy = f" ({len(running) + 1} running)" if executor.slots > 1 else ""
            bar.set_postfix_str(_label(batch[0]) + busy, refresh=False)
        try:
            handle = executor.submit(batch)
        except KeyboardInterrupt:  # the serial executor runs the case inside submit
            for case in batch:
                inflight.done(case["case_id"])
            raise
        running.append((handle, batch, solo))

    try:
        with executor:
            while queue or alone or running:
                while True:  # fill the slots
                    if alone:
                        if running:
                            break  # a case whose worker died runs by itself
                        submit([alone.popleft()], solo=True)
                        break
                    if not queue or len(running) >= executor.slots:
                        break
                    batch = next_batch()
                    if batch:
                        submit(batch, solo=False)
                if not running:
                    continue
                for handle, outcome in executor.wait([entry[0] for entry in running]):
                    entry = next(e for e in running if e[0] is handle)
                    running.remove(entry)
                    _, batch, solo = entry
                    if not isinstance(outcome, WorkerLost):
                        for case, record in zip(batch, outcome):
                            finish(case, record)
                    elif solo or outcome.definitive:
                        for case in batch:
                            finish(case, worker_lost_record(case, outcome.reason, executor.name))
                    else:
                        alone.extend(batch)
    except KeyboardInterrupt:  # the user stopped it: no fault of the cases in flight
        for _, batch, _ in running:
            for case in batch:
                inflight.done(case["case_id"])
        raise
    finally:
        if bar is not None:
            bar.close()
        summary.statuses = dict(counts)
    return summary

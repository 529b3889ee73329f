"""Run a sweep into a results store: resumable, one flushed record per case, with progress.

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
from dataclasses import dataclass, field
from pathlib import Path

from metabench.options import label
from metabench.results import ResultsStore
from metabench.sweep.case import crashed_record, run_case
from metabench.sweep.spec import Sweep

__all__ = ["CRASH_ATTEMPTS", "SweepSummary", "run_sweep"]

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


def run_sweep(sweep: Sweep, out_dir: str | Path, *, progress: bool = True, limit: int | None = None) -> SweepSummary:
    """Run every case of ``sweep`` not yet in ``out_dir/<sweep.name>.jsonl``; return a summary.

    Each record is flushed as soon as its case ends, so an interrupted run loses at most the case
    in flight, and running again resumes where it stopped. ``limit`` caps the cases taken up now
    (the first ``limit`` cases not in the store when the run starts).
    """
    store = ResultsStore(Path(out_dir) / f"{sweep.name}.jsonl")
    cases = sweep.cases()
    todo = [c for c in cases if c["case_id"] not in store]
    summary = SweepSummary(path=store.path, already_done=len(cases) - len(todo))
    if limit is not None:
        todo = todo[:limit]
    counts: collections.Counter = collections.Counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=sweep.name, unit="case", dynamic_ncols=True)
    inflight = _InFlight(store.path)
    try:
        for case in todo:
            store.refresh()  # another run on this store may have finished the case meanwhile
            cid = case["case_id"]
            if cid in store:
                summary.already_done += 1
            else:
                if bar is not None:
                    bar.set_postfix_str(_label(case), refresh=False)
                deaths = inflight.deaths(cid)
                if deaths >= CRASH_ATTEMPTS:
                    record = crashed_record(case, deaths)
                else:
                    inflight.start(cid)
                    try:
                        record = run_case(case)
                    except KeyboardInterrupt:  # the user stopped it: not a death of the case
                        inflight.done(cid)
                        raise
                if store.append(record):
                    counts[record["status"]] += 1
                    summary.ran += 1
                else:
                    summary.duplicates_avoided += 1
                inflight.done(cid)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        summary.statuses = dict(counts)
    return summary

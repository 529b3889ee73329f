"""Run a sweep into a results store: resumable, one flushed record per case, with progress.

Several runs of one sweep may share an out folder at once: before each case the runner picks up what the
others wrote and skips a case already there, and the store writes each case once whoever finishes it first.
An interrupt (KeyboardInterrupt) goes on to the caller and leaves every record fully written or absent.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from metabench.options import label
from metabench.results import ResultsStore
from metabench.sweep.case import run_case
from metabench.sweep.spec import Sweep

__all__ = ["SweepSummary", "run_sweep"]


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
    try:
        for case in todo:
            store.refresh()  # another run on this store may have finished the case meanwhile
            if case["case_id"] in store:
                summary.already_done += 1
            else:
                if bar is not None:
                    bar.set_postfix_str(_label(case), refresh=False)
                record = run_case(case)
                if store.append(record):
                    counts[record["status"]] += 1
                    summary.ran += 1
                else:
                    summary.duplicates_avoided += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        summary.statuses = dict(counts)
    return summary

"""Run a sweep into a results store: resumable, one flushed record per case, with progress."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from metabench.results import ResultsStore
from metabench.sweep.case import run_case
from metabench.sweep.spec import Sweep

__all__ = ["SweepSummary", "run_sweep"]


@dataclass
class SweepSummary:
    """What a run did: the store's path, cases run now, cases already there, and statuses of the new ones."""

    path: Path
    ran: int = 0
    already_done: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


def _label(case: dict) -> str:
    opts = case["options"]
    keys = ("inner_solver", "inner_steps", "truncate", "cg_iters", "neumann_iters")
    parts = [case["algorithm"]] + [f"{k}={opts[k]}" for k in keys if k in opts]
    kappa = case["problem_params"].get("kappa")
    return " ".join(parts + ([f"kappa={kappa:g}"] if kappa is not None else []))


def run_sweep(sweep: Sweep, out_dir: str | Path, *, progress: bool = True, limit: int | None = None) -> SweepSummary:
    """Run every case of ``sweep`` not yet in ``out_dir/<sweep.name>.jsonl``; return a summary.

    Each record is flushed as soon as its case ends, so an interrupted run loses at most the case
    in flight, and running again resumes where it stopped. ``limit`` caps the cases run now.
    """
    store = ResultsStore(Path(out_dir) / f"{sweep.name}.jsonl")
    cases = sweep.cases()
    todo = [c for c in cases if c["case_id"] not in store]
    if limit is not None:
        todo = todo[:limit]
    summary = SweepSummary(path=store.path, already_done=len(cases) - len(todo) if limit is None else len(store))
    counts: collections.Counter = collections.Counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=sweep.name, unit="case", dynamic_ncols=True)
    try:
        for case in todo:
            if bar is not None:
                bar.set_postfix_str(_label(case), refresh=False)
            record = run_case(case)
            store.append(record)
            counts[record["status"]] += 1
            summary.ran += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        summary.statuses = dict(counts)
    return summary

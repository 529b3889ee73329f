"""``metabench run --dry-run``: the cases a run would take up, and how long they should take.

The estimate comes from records already measured (``case_wall_s``) in the results folder, any sweep: for each
case to run, the median wall time of the records with the same problem and algorithm, scaled by the ratio of
inner steps (time grows about linearly in K), or of the same problem alone; a case with neither is counted
as unknown and said so. The total is divided by the workers that run at once: a lower bound where the cases
are few or uneven.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

__all__ = ["estimate_seconds"]


def _key(record: dict) -> tuple:
    return (record.get("problem"), record.get("algorithm"))


def _steps(case_or_record: dict) -> float:
    options = case_or_record.get("options") or {}
    steps = options.get("inner_steps", case_or_record.get("inner_steps"))
    return float(steps) if isinstance(steps, (int, float)) and steps > 0 else 1.0


def estimate_seconds(cases: list[dict], out_dir: str | Path) -> tuple[float, int, int]:
    """(estimated seconds of one worker for ``cases``, cases estimated, cases with no basis) from the records
    in ``out_dir`` (module docstring)."""
    from metabench.results import read_records

    per_step = defaultdict(list)  # (problem, algorithm) -> seconds per inner step
    per_problem = defaultdict(list)
    for path in sorted(Path(out_dir).glob("*.jsonl")):
        for record in read_records(path):
            seconds = record.get("case_wall_s")
            if record.get("status") != "ok" or not isinstance(seconds, (int, float)):
                continue
            per_step[_key(record)].append(seconds / _steps(record))
            per_problem[record.get("problem")].append(seconds)
    total, known, unknown = 0.0, 0, 0
    for case in cases:
        key = (case.get("problem"), case.get("algorithm"))
        if per_step.get(key):
            total += statistics.median(per_step[key]) * _steps(case)
        elif per_problem.get(case.get("problem")):
            total += statistics.median(per_problem[case.get("problem")])
        else:
            unknown += 1
            continue
        known += 1
    return total, known, unknown

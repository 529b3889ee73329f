"""Wall time of one sweep on each executor, and whether their records agree (a benchmark, not a test).

Runs the preset (default ``table1``) into a fresh folder per executor: serial, ``local`` with N workers and a
dask ``LocalCluster`` of N processes (one thread each), and compares every record's non-run-dependent fields
(``metabench.results.comparable``) with the serial run's, case by case. Writes ``executors.md`` and
``executors.json`` to ``--out``. Run with nothing else on the machine:

    python benchmarks/executor_scaling.py --preset table1 --workers 2 --out reports/executors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run(preset: str, executor_name: str, workers: int, out: Path) -> tuple[float, dict]:
    from metabench.results import read_records
    from metabench.sweep import get_preset, run_sweep
    from metabench.sweep.executors import make_executor

    sweep = get_preset(preset)
    options = {} if executor_name == "serial" else {"workers": workers}
    executor = make_executor(executor_name, **options)
    start = time.perf_counter()
    summary = run_sweep(sweep, out, progress=False, executor=executor)
    seconds = time.perf_counter() - start
    records = {r["case_id"]: r for r in read_records(summary.path)}
    print(f"{executor_name}: {seconds:.1f} s, {len(records)} records {summary.statuses}", file=sys.stderr, flush=True)
    return seconds, records


def main(argv=None) -> int:
    from metabench.measure.machine import machine_info
    from metabench.results import comparable

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="table1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executors", default="serial,local,dask")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = args.executors.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = run(args.preset, name, args.workers, Path(tmp) / name)
    serial_seconds, serial = results[names[0]]
    rows = []
    for name in names:
        seconds, records = results[name]
        same, differing = 0, set()
        for cid, record in records.items():
            a, b = comparable(record), comparable(serial.get(cid, {}))
            if a == b:
                same += 1
            else:
                differing |= {
                    k for k in set(a) | set(b) if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str)
                }
        rows.append(
            {
                "executor": name,
                "workers": 1 if name == "serial" else args.workers,
                "seconds": seconds,
                "ratio_to_serial": seconds / serial_seconds,
                "records": len(records),
                "identical_to_serial": same,
                "differing_fields": sorted(differing),
                "statuses": sorted({r["status"] for r in records.values()}),
            }
        )
    machine = machine_info()
    lines = [
        f"# `{args.preset}` on each executor",
        "",
        f"Machine: {machine.get('cpu_model')}, {os.cpu_count()} cores, torch {machine.get('torch_version')}; "
        "cases pin 1 intra-op thread (the preset's `threads = 1`). Identical: every field but the run-dependent ones "
        "(`metabench.results.RUN_DEPENDENT_FIELDS`: timings, RSS, where and when) equal to the serial record of the "
        "case. `python benchmarks/executor_scaling.py --preset "
        f"{args.preset} --workers {args.workers} --out reports/executors`.",
        "",
        "| executor | workers | wall time (s) | / serial | records | identical to serial | fields that differ "
        "| statuses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['executor']} | {r['workers']} | {r['seconds']:.1f} | {r['ratio_to_serial']:.2f}x | {r['records']} | "
            f"{r['identical_to_serial']} of {r['records']} | {', '.join(r['differing_fields']) or '-'} | "
            f"{', '.join(r['statuses'])} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "executors.md").write_text(text)
        (out / "executors.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

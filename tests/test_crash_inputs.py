"""examples/sweeps/crash_inputs.toml: every input that once killed a sweep or was stored as "ok" garbage.

One sweep file; every valid case is recorded ok, every bad one is a record with the status it deserves,
``metabench run`` exits 1 as documented (some cases invalid), and two runs started at once on the same
folder write each case exactly once.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metabench.cli import EXIT_FAILED, main
from metabench.results import read_records
from metabench.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]
CRASH = ROOT / "examples" / "sweeps" / "crash_inputs.toml"


def _key(record: dict) -> tuple:
    options, params = record["options"], record["problem_params"]
    extra = {k: options[k] for k in ("inner_lr", "cg_tol", "neumann_lr") if k in options}
    return record["algorithm"], record["device"], record["seed"], params.get("kappa"), params.get("dim"), str(extra)


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("crash")
    code = main(["run", "--config", str(CRASH), "--out", str(out), "--no-progress"])
    return code, read_records(out / "crash_inputs.jsonl")


def test_every_case_of_the_sweep_has_one_record(crash_run):
    code, records = crash_run
    cases = Sweep.from_file(CRASH).cases()
    assert code == EXIT_FAILED  # some cases are invalid: the sweep ran to the end and says so
    assert sorted(r["case_id"] for r in records) == sorted(c["case_id"] for c in cases)


def test_each_bad_input_gets_the_status_it_deserves(crash_run):
    _, records = crash_run
    by_status = collections.defaultdict(list)
    for record in records:
        by_status[record["status"]].append(record)
        assert record["status"] == "ok" or record["error"], record
    assert {r["algorithm"] for r in by_status["ok"]} == {"maml", "imaml", "fomaml", "neumann"}
    memory_only = [r for r in by_status["ok"] if r["seed"] == 1]
    assert len(memory_only) == 1 and "time_median_s" not in memory_only[0] and memory_only[0]["live_peak_bytes"] > 0
    assert [r["device"] for r in by_status["skipped"]] == ["cuda"]
    assert "not available" in by_status["skipped"][0]["error"]
    invalid = " | ".join(r["error"] for r in by_status["invalid"])
    for text in ("threads must be", "seed must be an integer >= 0, got 1.5", "got True", "kappa must be", "lam = "):
        assert text in invalid, text
    assert "cg_tol must be a finite number in [0, 1]" in invalid
    diverged = {(r["algorithm"], r["problem"]): r["error"] for r in by_status["diverged"]}
    assert "inner objective" in diverged["maml", "linear_meta_regression"]
    assert "inner objective" in diverged["imaml", "linear_meta_regression"]
    assert "Neumann series diverges" in diverged["neumann", "linear_meta_regression"]
    assert "Neumann series diverges" in diverged["neumann", "few_shot_classification"]  # BatchNorm: indefinite
    assert "'auto' needs the inner Hessian's spectrum" in invalid  # a network has no known spectrum
    assert len(by_status["oom"]) == 1 and "can't allocate memory" in by_status["oom"][0]["error"]
    assert not by_status["failed"], by_status["failed"]


def test_ok_records_carry_exact_errors_and_nothing_stored_ok_is_garbage(crash_run):
    _, records = crash_run
    for record in records:
        if record["status"] != "ok":  # no timing invented for a case that did not run to the end
            assert record.get("time_median_s") is None
            continue
        assert record["truth"] == "exact" and record["grad_norm"] < 1e3
        if record["rel_error_algorithm"] is not None:
            assert record["rel_error_algorithm"] < 1e-10


def test_two_runs_at_once_write_each_case_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "metabench",
        "run",
        "--config",
        str(CRASH),
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    stderr = [p.stderr.read().decode() for p in procs]
    assert set(codes) <= {0, EXIT_FAILED}, stderr  # 0 for a run whose every new case another run had taken
    ids = [r["case_id"] for r in read_records(tmp_path / "crash_inputs.jsonl")]
    assert len(ids) == len(set(ids)) == len(Sweep.from_file(CRASH).cases())

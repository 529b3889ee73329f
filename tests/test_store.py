"""The results store: one record per case across processes, nothing lost to a kill, a bad line or an old file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import pytest

import metabench.sweep.case as case_module
import metabench.sweep.runner as runner
from metabench.results import (
    SCHEMA_VERSION,
    STATUSES,
    ResultsStore,
    StoreWarning,
    load_records,
    read_records,
)
from metabench.sweep import Sweep, run_sweep

from .test_sweep import TINY, tiny_sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PY = ROOT / "metabench" / "results.py"

# Children that only write records load results.py by path: no torch import, so they start in a blink.
CHILD_PRELUDE = f"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("results", {str(RESULTS_PY)!r})
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)
def rec(cid, **kw):
    return {{"schema_version": results.SCHEMA_VERSION, "case_id": cid, "status": "ok", **kw}}
"""


def rec(cid, **kw):
    return {"schema_version": SCHEMA_VERSION, "case_id": cid, "status": "ok", **kw}


def line(record) -> bytes:
    return (json.dumps(record) + "\n").encode()


def ids_in_file(path) -> list[str]:
    return [json.loads(raw)["case_id"] for raw in Path(path).read_bytes().splitlines()]


@contextlib.contextmanager
def no_store_warnings():
    """Any StoreWarning inside is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        yield


class TestAppend:
    def test_a_case_is_written_once_and_a_bad_record_refused(self, tmp_path):
        store = ResultsStore(tmp_path / "s.jsonl")
        assert store.append(rec("a", x=float("nan"), t=(1.0, float("inf")))) is True
        assert store.append(rec("a", x=2.0)) is False  # no error: the case is simply there already
        assert "a" in store and len(store) == 1
        with pytest.raises(ValueError, match="lacks case_id"):
            store.append({"schema_version": SCHEMA_VERSION, "status": "ok"})
        with pytest.raises(ValueError, match="schema_version 2"):
            store.append({**rec("b"), "schema_version": 2})
        [written] = [json.loads(raw) for raw in (tmp_path / "s.jsonl").read_bytes().splitlines()]
        assert written["case_id"] == "a" and written["x"] is None and written["t"] == [1.0, None]
        assert ResultsStore(tmp_path / "s.jsonl").append(rec("a")) is False  # a reopened store knows it too

    def test_invalid_is_a_status(self):
        assert "invalid" in STATUSES and SCHEMA_VERSION == 3

    def test_refresh_picks_up_other_writers_reading_only_new_bytes(self, tmp_path):
        path = tmp_path / "s.jsonl"
        mine, other = ResultsStore(path), ResultsStore(path)
        mine.append(rec("a"))
        other.append(rec("b"))
        assert "b" not in mine and mine.refresh() == 1 and "b" in mine and len(mine) == 2
        assert mine.refresh() == 0
        # garble the first line in place: a refresh that re-parsed the whole file would now complain of line 1
        data = path.read_bytes()
        path.write_bytes(b"#" * data.index(b"\n") + data[data.index(b"\n") :])
        other.append(rec("c"))
        with no_store_warnings():
            assert mine.refresh() == 1 and "c" in mine
        # an append under the lock sees another writer's case even without a refresh first
        other.append(rec("d"))
        assert mine.append(rec("d")) is False

    def test_keyboard_interrupt_mid_write_leaves_no_partial_record(self, tmp_path, monkeypatch):
        path = tmp_path / "s.jsonl"
        store = ResultsStore(path)
        store.append(rec("a"))
        before = path.read_bytes()
        real_write = os.write

        def half_then_interrupt(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "write", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            store.append(rec("b", payload="x" * 1000))
        monkeypatch.undo()
        assert path.read_bytes() == before and "b" not in store
        assert store.append(rec("b")) is True and ids_in_file(path) == ["a", "b"]


class TestConcurrentWriters:
    def test_three_processes_appending_the_same_ids_write_each_once(self, tmp_path):
        path, go = tmp_path / "s.jsonl", tmp_path / "go"
        n = 120
        child = CHILD_PRELUDE + textwrap.dedent(
            f"""
            import random
            store = results.ResultsStore(sys.argv[1])
            print("ready", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.002)
            ids = [f"c{{i:03d}}" for i in range({n})]
            random.Random(int(sys.argv[2])).shuffle(ids)
            print(sum(store.append(rec(cid, writer=int(sys.argv[2]))) for cid in ids), flush=True)
            """
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", child, str(path), str(seed)], stdout=subprocess.PIPE, text=True)
            for seed in range(3)
        ]
        try:
            assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
            go.touch()  # all three hold an open store before any appends
            written = [int(p.communicate(timeout=60)[0]) for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert all(p.returncode == 0 for p in procs)
        ids = ids_in_file(path)
        assert sorted(ids) == sorted(f"c{i:03d}" for i in range(n))  # each exactly once
        assert sum(written) == n

    def test_two_cli_runs_on_one_out_folder_run_every_case_once(self, tmp_path):
        config = tmp_path / "both.toml"
        config.write_text(
            'name = "both"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 4\nn_train = 8\n'
            'n_val = 4\nkappa = 10.0\nlam = 1.0\ninner_lr = "auto"\nmin_run_time = 0.001\n'
            '[[grid]]\nalgorithm = ["maml", "fomaml"]\ninner_steps = [1, 2, 3, 4]\n'
        )
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "metabench", "run", "--config", str(config), "--out", str(out), "--no-progress"]
        procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            errs = [p.communicate(timeout=150)[1] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert all(p.returncode == 0 for p in procs), errs
        ran = [int(re.search(r"ran (\d+) case", err).group(1)) for err in errs]
        ids = ids_in_file(out / "both.jsonl")
        cases = Sweep.from_file(config).cases()
        assert sorted(ids) == sorted(c["case_id"] for c in cases) and len(cases) == 8
        assert sum(ran) == 8, errs

    def test_a_writer_killed_mid_append_leaves_its_fragment_to_rejected(self, tmp_path):
        path = tmp_path / "s.jsonl"
        child = CHILD_PRELUDE + textwrap.dedent(
            """
            store = results.ResultsStore(sys.argv[1])
            for cid in ("a", "b", "c"):
                store.append(rec(cid))
            real_write = os.write
            def half_then_hang(fd, data):
                n = real_write(fd, bytes(data[: len(data) // 2]))
                print("half", flush=True)
                time.sleep(60)
                return n
            os.write = half_then_hang
            store.append(rec("d", payload="x" * 200))  # killed in here, holding the lock
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "half"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        torn = path.read_bytes()
        assert not torn.endswith(b"\n") and torn.count(b"\n") == 3
        fragment = torn[torn.rindex(b"\n") + 1 :]
        with no_store_warnings():  # a reader says nothing of a torn last line: a writer may be mid-append
            assert [r["case_id"] for r in read_records(path)] == ["a", "b", "c"]
        with pytest.warns(StoreWarning, match=r"s\.jsonl:4: an unfinished last line .* moved to .*s\.jsonl\.rejected"):
            store = ResultsStore(path, lock_timeout=10)  # the dead writer's lock is free
        assert ids_in_file(path) == ["a", "b", "c"] and len(store) == 3
        rejected = (tmp_path / "s.jsonl.rejected").read_bytes()
        header, rest = rejected.split(b"\n", 1)
        assert b"s.jsonl:4" in header and b"not JSON" in header and rest == fragment + b"\n"
        assert store.append(rec("d")) is True and ids_in_file(path) == ["a", "b", "c", "d"]


class TestReading:
    def test_bad_lines_are_set_aside_with_file_and_line_and_the_rest_read(self, tmp_path):
        path = tmp_path / "s.jsonl"
        path.write_bytes(
            b"\xef\xbb\xbf"
            + line(rec("a"))  # 1: a BOM at the start of the file
            + b"this is not json\n"  # 2
            + b'{"case_id": "x", "note": "caf\xe9"}\n'  # 3: latin-1, not UTF-8
            + b"[1, 2, 3]\n"  # 4
            + line({"schema_version": SCHEMA_VERSION, "status": "ok"})  # 5
            + b"\n"  # 6: blank, ignored
            + b"\xef\xbb\xbf"
            + line(rec("b"))  # 7: a BOM at the start of a line (files concatenated)
            + line(rec("c"))  # 8
        )
        problems: list = []
        with pytest.warns(StoreWarning) as caught:
            records = read_records(path, problems=problems)
        assert [r["case_id"] for r in records] == ["a", "b", "c"]
        assert [(p.lineno, p.reason.split(" (")[0].split(":")[0]) for p in problems] == [
            (2, "not JSON"),
            (3, "not valid UTF-8"),
            (4, "JSON but not a record"),
            (5, "a record without case_id"),
        ]
        assert "(a list)" in problems[2].reason and "byte 0xe9" in problems[1].reason
        assert [str(w.message) for w in caught] == [str(p) for p in problems]
        assert all(str(p).startswith(f"{path}:{p.lineno}: ") for p in problems)
        frame_problems: list = []
        with pytest.warns(StoreWarning):
            frame = load_records(tmp_path, problems=frame_problems)
        assert list(frame["case_id"]) == ["a", "b", "c"] and frame_problems == problems
        with pytest.warns(StoreWarning):
            store = ResultsStore(path)  # a writer reads past them too, and appends after them
        assert len(store) == 3 and [p.lineno for p in store.problems] == [2, 3, 4, 5]
        assert store.append(rec("d")) is True and store.append(rec("a")) is False

    def test_duplicate_case_ids_in_an_old_file_are_read_once(self, tmp_path):
        path = tmp_path / "s.jsonl"
        path.write_bytes(line(rec("a", x=1)) + line(rec("b")) + line(rec("a", x=2)))
        with pytest.warns(StoreWarning, match=r"s\.jsonl:3: case_id a again \(first at line 1\)"):
            records = read_records(path)
        assert [(r["case_id"], r.get("x")) for r in records] == [("a", 1), ("b", None)]
        with pytest.warns(StoreWarning, match="case_id a again"):
            assert len(load_records(path)) == 2
        with pytest.warns(StoreWarning, match="case_id a again"):
            store = ResultsStore(path)
        assert len(store) == 2 and store.append(rec("a")) is False

    def test_records_of_another_schema_version_are_refused(self, tmp_path):
        path = tmp_path / "x.jsonl"
        old = {"schema_version": 2, "status": "ok"}
        path.write_bytes(line({**old, "case_id": "o1"}) + line(rec("new")) + line({**old, "case_id": "o2"}))
        before = path.read_bytes()
        message = (
            f"{path}: 2 records of schema_version 2 skipped; this metabench reads version 3: "
            "re-run the sweep into a new --out"
        )
        problems: list = []
        with pytest.warns(StoreWarning) as caught:
            assert [r["case_id"] for r in read_records(path, problems=problems)] == ["new"]
        assert [str(w.message) for w in caught] == [message]  # once per file, not once per record
        assert [str(p) for p in problems] == [message]
        with pytest.raises(ValueError, match=re.escape(message)):
            ResultsStore(path)
        sweep = Sweep(name="x", defaults=dict(TINY), grid=[{"algorithm": ["maml"], "inner_steps": [1]}])
        with pytest.raises(ValueError, match="re-run the sweep into a new --out"):
            run_sweep(sweep, tmp_path, progress=False)  # a sweep never resumes into it
        assert path.read_bytes() == before

    def test_pandas_reads_a_store(self, tmp_path):
        store = ResultsStore(tmp_path / "s.jsonl")
        store.append(rec("a", options={"inner_steps": 3}, time_median_s=float("nan"), error=None))
        store.append(rec("b", options={"inner_steps": 5}, time_median_s=0.25, error="boom"))
        frame = pd.read_json(tmp_path / "s.jsonl", lines=True)
        assert list(frame["case_id"]) == ["a", "b"] and frame["options"][1] == {"inner_steps": 5}
        assert frame["time_median_s"].isna().tolist() == [True, False]


class TestSweepOnTheStore:
    def test_a_complete_last_record_without_newline_is_kept_not_rerun(self, tmp_path):
        sweep = tiny_sweep()
        assert run_sweep(sweep, tmp_path, progress=False).ran == 4
        path = tmp_path / "tiny.jsonl"
        path.write_bytes(path.read_bytes().rstrip(b"\n"))  # e.g. an editor that drops the final newline
        with no_store_warnings():
            assert len(read_records(path)) == 4
            again = run_sweep(sweep, tmp_path, progress=False)
        assert (again.ran, again.already_done) == (0, 4)
        assert path.read_bytes().endswith(b"\n") and len(ids_in_file(path)) == 4
        assert not (tmp_path / "tiny.jsonl.rejected").exists()

    def test_a_case_another_run_finished_meanwhile_is_skipped_or_not_written_twice(self, tmp_path, monkeypatch):
        sweep = tiny_sweep()
        cases = sweep.cases()
        other = ResultsStore(tmp_path / "tiny.jsonl")  # stands in for a second process on the same folder
        real_run_case = case_module.run_case
        calls = []

        def run_case(case):
            calls.append(case["case_id"])
            if len(calls) == 2:  # the other writer finishes the second case before this run can write it
                other.append(real_run_case(case))
            return real_run_case(case)

        class Store(ResultsStore):
            appends = 0

            def append(self, record):
                written = super().append(record)
                Store.appends += 1
                if Store.appends == 2:  # and the third between two cases of this run
                    other.append(real_run_case(cases[2]))
                return written

        monkeypatch.setattr(case_module, "run_case", run_case)
        monkeypatch.setattr(runner, "ResultsStore", Store)
        summary = run_sweep(sweep, tmp_path, progress=False)
        assert calls == [cases[0]["case_id"], cases[1]["case_id"], cases[3]["case_id"]]
        assert (summary.ran, summary.already_done, summary.duplicates_avoided) == (2, 1, 1)
        assert sum(summary.statuses.values()) == 2
        assert sorted(ids_in_file(summary.path)) == sorted(c["case_id"] for c in cases)

    def test_already_done_counts_this_sweeps_cases_with_a_limit(self, tmp_path):
        run_sweep(tiny_sweep(algorithm=["maml"], inner_steps=[1, 2, 5]), tmp_path, progress=False)
        summary = run_sweep(tiny_sweep(algorithm=["maml"], inner_steps=[1, 2, 3, 4]), tmp_path, progress=False, limit=1)
        assert (summary.ran, summary.already_done) == (1, 2)  # the store holds 3, but inner_steps=5 is not ours

    def test_keyboard_interrupt_propagates_and_leaves_the_store_whole(self, tmp_path, monkeypatch):
        real_run_case = case_module.run_case
        calls = []

        def run_case(case):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_run_case(case)

        monkeypatch.setattr(case_module, "run_case", run_case)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(tiny_sweep(), tmp_path, progress=False)
        assert len(ids_in_file(tmp_path / "tiny.jsonl")) == 1
        monkeypatch.undo()
        assert run_sweep(tiny_sweep(), tmp_path, progress=False).ran == 3

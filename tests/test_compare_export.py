"""`metabench compare` (planted regressions, counts, unmatched cases, round-off), `metabench export` (CSV and
Parquet round trips) and the fast, torch-free command line (`--version`, `--help`, the lazy package)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest

from metabench.cli import main
from metabench.report.compare import compare_records
from metabench.report.export import export_table
from metabench.results import RECORD_FIELDS, ResultsStore, load_records, read_records
from metabench.sweep import Sweep, run_sweep

#: A 2-task, 4-dimensional linear problem: the four cases run in about a second (as tests/test_sweep.py's TINY).
TINY = {
    "problem": "linear_meta_regression",
    "n_tasks": 2,
    "dim": 4,
    "n_train": 8,
    "n_val": 4,
    "kappa": 10.0,
    "lam": 1.0,
    "min_run_time": 0.001,
    "inner_lr": "auto",
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One tiny sweep (maml and imaml, K = 1 and 3) run once: its folder and its records, in write order."""
    out = tmp_path_factory.mktemp("a")
    sweep = Sweep(name="tiny", defaults=dict(TINY), grid=[{"algorithm": ["maml", "imaml"], "inner_steps": [1, 3]}])
    summary = run_sweep(sweep, out, progress=False)
    assert summary.statuses == {"ok": 4}
    return out, read_records(out / "tiny.jsonl")


def store(path: Path, records: list[dict]) -> Path:
    """A results folder holding ``records`` (written as a sweep writes them)."""
    results = ResultsStore(path / "tiny.jsonl")
    for record in records:
        assert results.append(record)
    return path


def edited(records: list[dict], edits: dict[int, dict]) -> list[dict]:
    """Deep copies of ``records`` with ``edits[i]`` merged into record i."""
    out = copy.deepcopy(records)
    for i, fields in edits.items():
        out[i].update(fields)
    return out


def compare(capsys, *args) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def marked_ids(markdown: str, mark: str) -> set[str]:
    """Case ids (the last cell) of the table rows whose first cell is ``mark``."""
    rows = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[-1].rstrip(" |") for cells in rows if cells[0] == f"| {mark}"}


@pytest.fixture(scope="module")
def planted(base, tmp_path_factory) -> tuple[Path, str, str]:
    """B = A with a 2x time regression in case 0 and a 1.5x live-peak regression in case 1."""
    _, records = base
    b = edited(
        records,
        {
            0: {"time_median_s": 2 * records[0]["time_median_s"]},
            1: {"live_peak_bytes": int(1.5 * records[1]["live_peak_bytes"])},
        },
    )
    return store(tmp_path_factory.mktemp("b"), b), records[0]["case_id"], records[1]["case_id"]


# --- compare -----------------------------------------------------------------------------------------------------


def test_planted_time_and_memory_regressions_are_flagged_and_exit_1(base, planted, capsys, tmp_path):
    a, _ = base
    b, slow, big = planted
    code, out, err = compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 1, err
    assert marked_ids(out, "+") == {slow, big} and marked_ids(out, "-") == marked_ids(out, "!") == set()
    assert "single median" in out or "one median per side" in out
    result = compare_records(load_records(a), load_records(b))
    reasons = {r.case.case_id: r.worse for r in result.regressions}
    assert set(reasons) == {slow, big} and not result.improvements
    assert [w.split()[0] for w in reasons[slow]] == ["time"] and reasons[slow][0].endswith("(2.00x)")
    assert [" ".join(w.split()[:2]) for w in reasons[big]] == ["live peak"]
    slow_row = next(r for r in result.rows if r.case.case_id == slow)
    assert slow_row.metrics["time_median_s"].ratio == pytest.approx(2.0) and slow_row.mark == "+"
    md, page = (tmp_path / "cmp" / "compare.md").read_text(), (tmp_path / "cmp" / "compare.html").read_text()
    assert marked_ids(md, "+") == {slow, big}
    assert page.startswith("<!DOCTYPE html>") and slow in page and big in page and "<script" not in page
    # a larger factor lets both through; --metric limits what is compared
    assert compare(capsys, a, b, "--factor", "2.5")[0] == 0
    code, out, _ = compare(capsys, a, b, "--metric", "memory")
    assert code == 1 and marked_ids(out, "+") == {big} and "| time |" not in out
    code, _, err = compare(capsys, a, b, "--metric", "speed")
    assert code == 2 and "unknown metric 'speed'" in err


def test_a_factor_below_one_is_a_usage_error(base, capsys):
    a, _ = base
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(a), str(a), "--factor", "0.5"])
    assert exit_info.value.code == 2 and "--factor: must be a finite number >= 1" in capsys.readouterr().err


def test_a_store_compared_with_itself_exits_0(base, capsys):
    a, records = base
    code, out, err = compare(capsys, a, a)
    assert code == 0, err
    assert marked_ids(out, "+") == marked_ids(out, "-") == marked_ids(out, "!") == set()
    assert all(r["case_id"] in out for r in records) and "0 regression(s), 0 improvement(s)" in out


def test_a_changed_hvp_count_is_flagged(base, capsys, tmp_path):
    a, records = base
    imaml = next(i for i, r in enumerate(records) if r["algorithm"] == "imaml")
    b = store(tmp_path, edited(records, {imaml: {"hvps": records[imaml]["hvps"] + 1}}))
    code, out, _ = compare(capsys, a, b)
    assert code == 1 and marked_ids(out, "+") == {records[imaml]["case_id"]}
    (row,) = compare_records(load_records(a), load_records(b)).regressions
    assert row.counts["hvps"] == (records[imaml]["hvps"], records[imaml]["hvps"] + 1)
    assert row.worse == [
        f"hvps {records[imaml]['hvps']} to {records[imaml]['hvps'] + 1} (+1; counts are deterministic)"
    ]


def test_unmatched_cases_and_status_changes_are_reported(base, capsys, tmp_path):
    a, records = base
    hostile = "<script>alert(1)</script> | `x` *y*"
    b_records = edited(records, {1: {"status": "failed", "error": hostile, "time_median_s": None}})
    new = dict(copy.deepcopy(records[2]), case_id="f" * 16)
    b = store(tmp_path / "b", [*b_records[1:], new])  # case 0 only in A, the new one only in B
    code, out, err = compare(capsys, a, b, "--out", tmp_path / "cmp")
    assert code == 1, err
    result = compare_records(load_records(a), load_records(b))
    assert [c.case_id for c in result.only_a] == [records[0]["case_id"]]
    assert [c.case_id for c in result.only_b] == ["f" * 16]
    (change,) = result.status_changes
    assert (change.case.case_id, change.status_a, change.status_b, change.mark) == (
        records[1]["case_id"],
        "ok",
        "failed",
        "!",
    )
    assert [r.case.case_id for r in result.regressions] == [records[1]["case_id"]]
    assert marked_ids(out, "!") == {records[1]["case_id"]}
    assert "## Only in A" in out and "## Only in B" in out and "## Status changes" in out
    assert "<script>" not in out and "&lt;script&gt;" in out and "\\`x\\`" in out
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the other way round the failed case became ok: an improvement, and nothing regressed
    code, out, err = compare(capsys, b, a)
    assert code == 0, out
    assert marked_ids(out, "-") == {records[1]["case_id"]} and marked_ids(out, "!") == set()


def test_errors_within_round_off_are_not_flagged_and_worse_errors_are(base, capsys, tmp_path):
    a, records = base
    maml = [i for i, r in enumerate(records) if r["algorithm"] == "maml"]
    assert all(records[i]["rel_error_algorithm"] < 1e-14 for i in maml)  # the exact derivative: round-off
    i, j = maml
    noise = {
        i: {"rel_error_algorithm": 90 * records[i]["rel_error_algorithm"] + 5e-13},  # 100x, still below 1e-12
        j: {"rel_error_exact": 1.2 * records[j]["rel_error_exact"]},  # within the factor
    }
    code, out, err = compare(capsys, a, store(tmp_path / "noise", edited(records, noise)))
    assert code == 0, out
    row = next(
        r
        for r in compare_records(load_records(a), load_records(tmp_path / "noise")).rows
        if r.case.case_id == records[i]["case_id"]
    )
    assert row.metrics["rel_error_algorithm"].ratio is None and row.metrics["rel_error_algorithm"].verdict == ""
    worse = {j: {"rel_error_exact": 1.3 * records[j]["rel_error_exact"]}}
    code, out, _ = compare(capsys, a, store(tmp_path / "worse", edited(records, worse)))
    assert code == 1 and marked_ids(out, "+") == {records[j]["case_id"]} and "err exact" in out
    better = {j: {"rel_error_exact": records[j]["rel_error_exact"] / 2}}
    code, out, _ = compare(capsys, a, store(tmp_path / "better", edited(records, better)))
    assert code == 0 and marked_ids(out, "-") == {records[j]["case_id"]}


def test_bad_input_exits_2_and_says_why(base, capsys, tmp_path):
    a, records = base
    code, _, err = compare(capsys, a, tmp_path / "missing")
    assert code == 2 and "missing" in err
    (tmp_path / "empty").mkdir()
    code, _, err = compare(capsys, tmp_path / "empty", a)
    assert code == 2 and "no records in" in err and "no *.jsonl files" in err
    other = store(tmp_path / "other", [dict(r, case_id=f"{n:016x}") for n, r in enumerate(copy.deepcopy(records))])
    code, out, err = compare(capsys, a, other)
    assert code == 2 and out == "" and "nothing to compare" in err and "case_id" in err


# --- export ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_store(base, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The tiny records plus what export has to get right: a training trajectory (lists, nulls), a field absent
    from every record, a text with quotes, commas and a line break, a mixed-type column, a non-ok record."""
    _, records = base
    records = copy.deepcopy(records)
    for record in records:
        record.pop("nvml_peak_bytes")  # absent everywhere: still a column, all null
    records[0]["trajectory"] = {"objective_gap": [1.5, 0.25, None], "wall_time_s": [0.0, 0.1, 0.2]}
    records[1].update(status="failed", error='bad "value", then\na second line', traceback="x, y\n  z")
    records[2]["seed"] = "abc"  # an invalid case keeps the seed it was given
    return store(tmp_path_factory.mktemp("export"), records), records


def assert_same(read: pd.DataFrame, table: pd.DataFrame) -> None:
    """Same columns and rows; equal numbers (exactly), equal strings, nulls null."""
    assert list(read.columns) == list(table.columns) and len(read) == len(table)
    for column in table.columns:
        for want, got in zip(table[column], read[column]):
            if pd.isna(want):
                assert pd.isna(got), (column, want, got)
            elif isinstance(want, str):
                assert isinstance(got, str) and got == want, (column, want, got)
            else:
                assert not isinstance(got, str) and float(got) == float(want), (column, want, got)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trips_through_pandas(export_store, fmt, capsys, tmp_path):
    path, records = export_store
    out = tmp_path / f"records.{fmt}"
    assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
    assert f"{len(records)} records" in capsys.readouterr().err
    table = export_table(records)
    read = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert_same(read, table)
    columns = list(read.columns)
    assert columns[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    flattened = columns[len(RECORD_FIELDS) :]
    assert {"options.inner_steps", "options.cg_iters", "problem_params.kappa", "machine.cpu_model"} <= set(flattened)
    assert all(c.split(".")[0] in ("options", "problem_params", "machine") for c in flattened)
    assert read["nvml_peak_bytes"].isna().all()
    by_id = read.set_index("case_id")
    for record in records:
        row = by_id.loc[record["case_id"]]
        assert row["options.inner_steps"] == record["options"]["inner_steps"] == row["inner_steps"]
        assert row["problem_params.kappa"] == record["problem_params"]["kappa"]
        assert row["machine.cpu_model"] == record["machine"]["cpu_model"]
        assert row["time_median_s"] == record["time_median_s"]
        assert json.loads(row["options"]) == record["options"]
        assert pd.isna(row["options.cg_iters"]) == (record["options"].get("cg_iters") is None)
    traj = json.loads(by_id.loc[records[0]["case_id"], "trajectory"])
    assert traj == records[0]["trajectory"] and pd.isna(by_id.loc[records[1]["case_id"], "final_objective_gap"])
    assert by_id.loc[records[1]["case_id"], "error"] == records[1]["error"]
    assert [json.loads(s) for s in read["seed"]] == [r["seed"] for r in records]  # mixed kinds: JSON text


def test_parquet_without_pyarrow_names_the_extra(base, monkeypatch, capsys, tmp_path):
    a, _ = base
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    assert main(["export", str(a), "--out", str(tmp_path / "r.parquet")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "metabench[export]"' in err and not (tmp_path / "r.parquet").exists()
    assert main(["export", str(a), "--out", str(tmp_path / "r.csv")]) == 0  # CSV needs nothing more


def test_export_bad_input_exits_2(base, capsys, tmp_path):
    a, _ = base
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no results at" in capsys.readouterr().err
    assert main(["export", str(a), "--out", str(tmp_path / "x.txt")]) == 2
    assert "give --format csv or --format parquet" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no records in" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


# --- a fast command line -----------------------------------------------------------------------------------------

_NO_TORCH = """
import sys
import metabench.cli
assert "torch" not in sys.modules, "import metabench.cli imported torch"
for argv in (["--help"], ["--version"], ["compare", "--help"], ["export", "--help"], ["run", "--help"]):
    try:
        metabench.cli.main(argv)
    except SystemExit as exit:
        assert exit.code == 0, (argv, exit.code)
heavy = sorted(m for m in ("torch", "pandas", "matplotlib") if m in sys.modules)
assert not heavy, heavy
print("ok")
"""


def test_the_command_line_imports_no_torch_for_help_and_version():
    out = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"metabench {version('metabench')}"
    out = subprocess.run([sys.executable, "-m", "metabench", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"metabench {version('metabench')}"


_LAZY_PACKAGE = """
import sys, types
import metabench
assert "torch" not in sys.modules
names = dir(metabench)
assert set(metabench.__all__) <= set(names) and {"results", "options", "sweep"} <= set(names), names
assert metabench.results.RECORD_FIELDS and "torch" not in sys.modules
import metabench.sweep.runner  # imports the submodule metabench.train: the package keeps the function
assert isinstance(metabench.train, types.FunctionType) and metabench.train.__module__ == "metabench.train"
from metabench import LinearMetaRegression, OracleCounts, TrainResult, get_algorithm, train
assert train is metabench.train and callable(get_algorithm) and metabench.get_algorithm is get_algorithm
assert metabench.options.label("maml", {"inner_steps": 2}) == "maml K=2"
for name in metabench.__all__:
    getattr(metabench, name)
try:
    metabench.no_such_name
except AttributeError as err:
    assert "no_such_name" in str(err)
else:
    raise AssertionError("metabench.no_such_name")
print("ok")
"""


def test_the_package_is_lazy_and_keeps_every_name():
    out = subprocess.run([sys.executable, "-c", _LAZY_PACKAGE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]

"""Sweeps: grid expansion, every outcome a record, resuming after a kill, the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metabench.cli import main
from metabench.errors import SolverBreakdown
from metabench.results import case_id, load_records, read_records
from metabench.solvers import ConjugateGradient
from metabench.sweep import Sweep, get_preset, run_case, run_sweep

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


def tiny_sweep(name="tiny", **grid):
    return Sweep(name=name, defaults=dict(TINY), grid=[grid or {"algorithm": ["maml", "imaml"], "inner_steps": [1, 3]}])


class TestSpec:
    def test_options_an_algorithm_does_not_take_are_dropped_not_multiplied(self):
        cases = tiny_sweep(algorithm=["maml", "imaml"], inner_steps=[2], cg_iters=[1, 2, 3]).cases()
        assert sorted(c["algorithm"] for c in cases) == ["imaml", "imaml", "imaml", "maml"]

    def test_impossible_truncation_is_dropped(self):
        cases = tiny_sweep(algorithm=["truncated"], inner_steps=[2, 5], truncate=[1, 3]).cases()
        assert sorted((c["options"]["inner_steps"], c["options"]["truncate"]) for c in cases) == [
            (2, 1),
            (5, 1),
            (5, 3),
        ]

    def test_case_ids_are_unique_and_stable(self):
        a, b = get_preset("table1").cases(), get_preset("table1").cases()
        assert [c["case_id"] for c in a] == [c["case_id"] for c in b]
        assert len({c["case_id"] for c in a}) == len(a)

    def test_table1_covers_the_required_grid(self):
        cases = get_preset("table1").cases()
        seen = {(c["algorithm"], c["options"].get("inner_solver", "gd")) for c in cases}
        assert {
            ("maml", "gd"),
            ("maml", "nesterov"),
            ("imaml", "gd"),
            ("imaml", "nesterov"),
            ("truncated", "gd"),
            ("fomaml", "gd"),
        } <= seen
        assert {c["problem_params"]["kappa"] for c in cases} >= {10.0, 10000.0}
        assert {c["problem_params"]["dim"] for c in cases} == {200}  # CG must not end by exhausting the dimension
        steps = [c["options"]["inner_steps"] for c in cases if c["algorithm"] == "maml"]
        assert min(steps) <= 10 and max(steps) > 10_000  # GD at kappa = 1e4 needs tens of thousands of steps

    def test_unknown_parameter_is_named(self):
        with pytest.raises(ValueError, match="unknown sweep parameter.*'inner_stpes'"):
            tiny_sweep(algorithm=["maml"], inner_stpes=[1]).cases()

    def test_unknown_algorithm_and_problem(self):
        with pytest.raises(ValueError, match="unknown algorithm 'mamll'"):
            tiny_sweep(algorithm=["mamll"]).cases()
        with pytest.raises(ValueError, match="unknown problem"):
            tiny_sweep(algorithm=["maml"], problem=["nope"]).cases()

    def test_bad_grid_shapes(self):
        with pytest.raises(ValueError, match=r"grid\[0\]\.inner_steps must be a non-empty list"):
            Sweep(name="x", grid=[{"inner_steps": 3}])
        with pytest.raises(ValueError, match="sweep name"):
            Sweep(name="a b", grid=[{"algorithm": ["maml"]}])
        with pytest.raises(ValueError, match="unknown preset"):
            get_preset("nope")

    def test_toml_file(self, tmp_path):
        path = tmp_path / "mine.toml"
        path.write_text(
            'name = "mine"\n[defaults]\nproblem = "quadratic_bilevel"\nn_tasks = 2\np = 3\nq = 4\nkappa = 5.0\n'
            'rho = 0.1\ninner_lr = "auto"\n[[grid]]\nalgorithm = ["itd_bio", "rm_metal"]\ninner_steps = [2, 4]\n'
        )
        sweep = Sweep.from_file(path)
        assert sweep.name == "mine" and len(sweep.cases()) == 4

    def test_file_suffix(self, tmp_path):
        path = tmp_path / "mine.json"
        path.write_text("{}")
        with pytest.raises(ValueError, match=r"\.toml, \.yaml or \.yml"):
            Sweep.from_file(path)


class TestOutcomes:
    def case(self, **flat):
        return tiny_sweep(**{k: [v] for k, v in flat.items()}).cases()[0]

    def test_ok_record_has_measures_and_exact_errors(self):
        record = run_case(self.case(algorithm="maml", inner_steps=3))
        assert record["status"] == "ok", record["error"]
        assert record["rel_error_algorithm"] < 1e-12 and record["rel_error_exact"] > 0
        assert record["inner_grads"] == 2 * 3 and record["live_peak_bytes"] > 0 and record["matmul_flops"] > 0
        assert record["time_median_s"] > 0 and record["git_commit"] != ""

    def test_cpu_records_say_cuda_and_nvml_are_unavailable(self):
        record = run_case(self.case(algorithm="imaml", inner_steps=3))
        assert record["cuda_max_allocated_bytes"] is None and record["cuda_status"].startswith("unavailable")
        assert record["nvml_peak_bytes"] is None and record["nvml_status"].startswith("unavailable")
        assert record["machine"]["cuda_available"] is False

    def test_diverging_inner_lr_is_a_diverged_record(self):
        record = run_case(self.case(algorithm="maml", inner_steps=400, inner_lr=50.0))
        assert record["status"] == "diverged" and "inner_lr" in record["error"]

    def test_inapplicable_algorithm_is_skipped_with_reason(self):
        case = self.case(algorithm="imaml", inner_steps=3, lam=0.0, n_train=8)
        record = run_case(case)
        assert record["status"] == "skipped"  # lam = 0 with n_train >= dim: imaml refuses
        assert "lam" in record["error"]

    def test_bad_option_value_is_an_invalid_record(self):
        record = run_case(self.case(algorithm="imaml", inner_steps=3, cg_iters=-1))
        assert record["status"] == "invalid" and "cg_iters" in record["error"]

    @pytest.mark.parametrize(
        "raised, status, text",
        [
            (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom", "out of memory"),
            (MemoryError("cannot allocate"), "oom", "cannot allocate"),
            (
                RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"),
                "oom",
                "can't allocate memory",
            ),
            (SolverBreakdown("p'Hp <= 0"), "failed", "solver breakdown"),
            (RuntimeError("something else"), "failed", "RuntimeError: something else"),
        ],
        ids=["cuda-oom", "host-oom", "cpu-allocator-oom", "cg-breakdown", "other"],
    )
    def test_out_of_memory_and_breakdown_are_records(self, monkeypatch, raised, status, text):
        def broken_solve(self, matvec, rhs, x0):
            raise raised

        monkeypatch.setattr(ConjugateGradient, "_solve", broken_solve)
        record = run_case(self.case(algorithm="imaml", inner_steps=3))
        assert record["status"] == status and text in record["error"]
        assert "time_median_s" not in record and record["rel_error_exact"] is None  # nothing invented

    def test_sweep_goes_on_after_failures(self, tmp_path):
        sweep = Sweep(
            name="mixed",
            defaults=dict(TINY),
            grid=[
                {"algorithm": ["maml"], "inner_steps": [400], "inner_lr": [50.0]},
                {"algorithm": ["fomaml"], "problem": ["quadratic_bilevel"], "p": [2], "q": [3], "rho": [0.1]},
                {"algorithm": ["maml"], "inner_steps": [2]},
            ],
        )
        summary = run_sweep(sweep, tmp_path, progress=False)
        assert summary.statuses == {"diverged": 1, "skipped": 1, "ok": 1}
        assert list(load_records(tmp_path)["status"]) == ["diverged", "skipped", "ok"]


class TestResume:
    def test_rerun_skips_finished_cases(self, tmp_path):
        sweep = tiny_sweep()
        first = run_sweep(sweep, tmp_path, progress=False, limit=2)
        second = run_sweep(sweep, tmp_path, progress=False)
        assert (first.ran, second.ran, second.already_done) == (2, 2, 2)
        ids = [r["case_id"] for r in read_records(tmp_path / "tiny.jsonl")]
        assert sorted(ids) == sorted(c["case_id"] for c in sweep.cases())

    def test_sigkill_mid_sweep_then_rerun_gives_every_case_once(self, tmp_path):
        config = tmp_path / "kill.toml"
        config.write_text(
            'name = "kill"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 6\nn_train = 12\n'
            'n_val = 6\nkappa = 10.0\nlam = 1.0\ninner_lr = "auto"\nmin_run_time = 0.05\n'
            '[[grid]]\nalgorithm = ["maml", "imaml", "fomaml"]\ninner_steps = [1, 2, 3, 4, 5, 6, 7, 8]\n'
        )
        out = tmp_path / "out"
        store = out / "kill.jsonl"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "metabench", "run", "--config", str(config), "--out", str(out), "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not store.exists() or len(read_records(store)) < 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(read_records(store))
        assert 3 <= done_before < 24, "the sweep should have been killed part-way"
        summary = run_sweep(Sweep.from_file(config), out, progress=False)
        ids = [r["case_id"] for r in read_records(store)]
        assert len(ids) == len(set(ids)) == 24
        assert summary.ran == 24 - done_before


def test_cli_run_list_report(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(
        'name = "c"\n[defaults]\nn_tasks = 2\ndim = 3\nn_train = 6\nn_val = 3\nkappa = 2.0\nlam = 1.0\n'
        'min_run_time = 0.001\n[[grid]]\nalgorithm = ["maml", "truncated"]\ninner_steps = [2]\n'
        "truncate = [1]\n"
    )
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert (tmp_path / "rep" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "Sweep `c`" in text and "| maml |" in text and "| truncated |" in text
    assert main(["list"]) == 0
    assert "table1" in capsys.readouterr().out
    assert main(["run", "--preset", "nope", "--out", str(tmp_path)]) == 2


def test_schema_documents_every_record_field_and_the_readme_lists_them():
    from metabench.results import RECORD_FIELDS

    case = tiny_sweep(algorithm=["imaml"], inner_steps=[2]).cases()[0]
    failed = tiny_sweep(algorithm=["imaml"], inner_steps=[2], cg_iters=[-1]).cases()[0]
    for record in (run_case(case), run_case(failed)):
        assert set(record) <= set(RECORD_FIELDS), set(record) - set(RECORD_FIELDS)
    assert set(run_case(case)) | {"traceback", "error"} >= set(RECORD_FIELDS) - {"traceback"}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in RECORD_FIELDS)


def test_instruments_run_parameter_limits_the_passes_and_keeps_old_case_ids():
    base = tiny_sweep(algorithm=["maml"], inner_steps=[2]).cases()[0]
    memory_only = tiny_sweep(algorithm=["maml"], inner_steps=[2], instruments=[["memory"]]).cases()[0]
    record = run_case(memory_only)
    assert record["status"] == "ok" and record["live_peak_bytes"] > 0
    assert "time_median_s" not in record and "matmul_flops" not in record
    assert memory_only["case_id"] != base["case_id"]
    # the default (None) is left out of the hash: ids written before the parameter existed still match
    assert base["case_id"] == case_id(
        {k: v for k, v in base.items() if k not in ("instruments", "mode", "truth", "sweep", "case_id")}
    )


def test_instruments_given_as_one_name_is_that_instrument_not_its_letters():
    one = tiny_sweep(algorithm=["maml"], inner_steps=[2], instruments=["memory"]).cases()[0]
    listed = tiny_sweep(algorithm=["maml"], inner_steps=[2], instruments=[["memory"]]).cases()[0]
    assert one["instruments"] == ["memory"] and one["case_id"] == listed["case_id"]
    record = run_case(one)
    assert record["status"] == "ok" and record["live_peak_bytes"] > 0 and "time_median_s" not in record
    bad = tiny_sweep(algorithm=["maml"], inner_steps=[2], instruments=[["memory", "speed"]]).cases()[0]
    assert run_case(bad)["status"] == "invalid" and "speed" in run_case(bad)["error"]


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "xpu"])
def test_a_device_this_machine_lacks_is_a_skipped_record(device):
    try:
        torch.empty(0, device=device)
        pytest.skip(f"this machine has {device}")
    except (RuntimeError, AssertionError):
        pass
    record = run_case(tiny_sweep(algorithm=["maml"], inner_steps=[1], device=[device]).cases()[0])
    assert record["status"] == "skipped" and "not available on this machine" in record["error"]
    assert len(record["error"]) < 400  # one readable line, not the backend's operator table


CRASHING_RUN = """
import os, sys
import metabench.sweep.case as case_module
from metabench.sweep import Sweep, run_sweep

sweep = Sweep.from_file(sys.argv[1])
victim = sweep.cases()[int(sys.argv[3])]["case_id"]
real = case_module.run_case


def run_case(case, *args, **kwargs):
    if case["case_id"] == victim:
        os._exit(139)  # what a segmentation fault does to the process: no exception, no cleanup
    return real(case, *args, **kwargs)


case_module.run_case = run_case
run_sweep(sweep, sys.argv[2], progress=False)
"""


def test_a_case_that_kills_the_process_twice_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    config = tmp_path / "crash.toml"
    config.write_text(
        'name = "crash"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 3\nn_train = 6\n'
        "n_val = 3\nkappa = 2.0\nlam = 1.0\nmin_run_time = 0.001\ninstruments = []\n"
        '[[grid]]\nalgorithm = ["maml"]\ninner_steps = [1, 2, 3, 4]\n'
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-c", CRASHING_RUN, str(config), str(out), "2"]  # case 2 "segfaults"
    for _ in range(2):
        assert subprocess.run(command, env=env, capture_output=True).returncode == 139
    ids_before = [r["case_id"] for r in read_records(out / "crash.jsonl")]
    assert len(ids_before) == 2  # cases 0 and 1; the run died at case 2 both times
    summary = run_sweep(Sweep.from_file(config), out, progress=False)  # a plain rerun, no crash hook
    records = {r["case_id"]: r for r in read_records(out / "crash.jsonl")}
    victim = Sweep.from_file(config).cases()[2]["case_id"]
    assert len(records) == 4 and summary.ran == 2
    assert records[victim]["status"] == "failed" and "died 2 times" in records[victim]["error"]
    assert all(r["status"] == "ok" for cid, r in records.items() if cid != victim)
    assert not (out / "crash.jsonl.inflight").exists()  # nothing left in flight


def test_one_death_is_retried(tmp_path):
    """A single death may be a kill from outside: the rerun measures the case."""
    config = tmp_path / "once.toml"
    config.write_text(
        'name = "once"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 3\nn_train = 6\n'
        'n_val = 3\nkappa = 2.0\nlam = 1.0\ninstruments = []\n[[grid]]\nalgorithm = ["maml"]\ninner_steps = [1, 2]\n'
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", CRASHING_RUN, str(config), str(out), "1"], env=env).returncode == 139
    run_sweep(Sweep.from_file(config), out, progress=False)
    assert [r["status"] for r in read_records(out / "once.jsonl")] == ["ok", "ok"]

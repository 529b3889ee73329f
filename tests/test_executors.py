"""One sweep, every executor, the same records: local worker processes, a dask LocalCluster and submitit's local
executor against serial (every field but the run-dependent ones identical), each case exactly once, and a
worker that dies loses nothing: killed from outside, its case is measured again; killing its worker itself
(twice, the second time alone), its case becomes a ``failed`` record and the sweep goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from metabench.results import RUN_DEPENDENT_FIELDS, comparable, read_records
from metabench.sweep import Sweep, run_sweep
from metabench.sweep.executors import make_executor
from metabench.sweep.runner import contention
from tests.test_sweep import TINY as SWEEP_TINY

ROOT = Path(__file__).resolve().parents[1]
TINY = {**SWEEP_TINY, "threads": 1}  # one thread per case: serial and parallel runs pin the same
FAULTS = ("tests.worker_faults",)


def sweep(name: str = "par", steps=(1, 2, 3, 4)) -> Sweep:
    return Sweep(name=name, defaults=dict(TINY), grid=[{"algorithm": ["maml", "imaml"], "inner_steps": list(steps)}])


@pytest.fixture(scope="module")
def serial_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    run_sweep(sweep(), out, progress=False)
    return {r["case_id"]: r for r in read_records(out / "par.jsonl")}


def check_same_as_serial(path: Path, serial: dict, executor: str) -> None:
    records = read_records(path)
    ids = [r["case_id"] for r in records]
    assert len(ids) == len(set(ids)) == len(serial)  # every case exactly once
    for record in records:
        assert record["status"] == "ok", record["error"]
        assert record["executor"] == executor and record["worker"]
        assert comparable(record) == comparable(serial[record["case_id"]])
        assert set(record) - set(comparable(record)) <= RUN_DEPENDENT_FIELDS


def test_local_workers_give_the_serial_records(tmp_path, serial_records):
    summary = run_sweep(sweep(), tmp_path, progress=False, executor=make_executor("local", workers=2))
    assert summary.ran == len(serial_records)
    check_same_as_serial(tmp_path / "par.jsonl", serial_records, "local")
    workers = {r["worker"] for r in read_records(tmp_path / "par.jsonl")}
    assert all(w.split(":")[1].split()[0] != str(os.getpid()) for w in workers)  # not this process


def test_dask_local_cluster_gives_the_serial_records(tmp_path, serial_records):
    pytest.importorskip("distributed")
    executor = make_executor("dask", workers=2)
    run_sweep(sweep(), tmp_path, progress=False, executor=executor)
    check_same_as_serial(tmp_path / "par.jsonl", serial_records, "dask")
    assert all("(" in r["worker"] for r in read_records(tmp_path / "par.jsonl"))  # the dask worker's name


def test_submitit_local_executor_gives_the_serial_records(tmp_path, serial_records, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    executor = make_executor("submitit", workers=2, cluster="local", folder=tmp_path / "jobs", chunk=3)
    run_sweep(sweep(), tmp_path, progress=False, executor=executor)
    check_same_as_serial(tmp_path / "par.jsonl", serial_records, "submitit")


def test_dask_workers_do_not_sample_the_cases_frames_and_a_cluster_that_does_is_warned_about():
    """dask's profiler holds the running case's frames (and tensors): the live peak would depend on its timing."""
    distributed = pytest.importorskip("distributed")
    from metabench.sweep.executors.dask_cluster import ProfilerWarning, _profiling

    own = make_executor("dask", workers=1)
    own.start()
    try:
        assert not any(own._client.run(_profiling).values())
    finally:
        own.close()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        theirs = make_executor("dask", workers=1, scheduler=cluster.scheduler_address)
        with pytest.warns(ProfilerWarning, match="DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"):
            theirs.start()
        theirs.close()


# dask's variant waits out two worker deaths and restarts (about 35 s): run by `nox -s slow`
@pytest.mark.parametrize("name", ["local", pytest.param("dask", marks=pytest.mark.slow)])
def test_a_case_that_kills_its_worker_is_failed_and_the_rest_measured(tmp_path, monkeypatch, name):
    if name == "dask":
        pytest.importorskip("distributed")
    monkeypatch.setenv("METABENCH_FAULT_INNER_STEPS", "3")
    executor = make_executor(name, workers=2, imports=FAULTS)
    summary = run_sweep(sweep(), tmp_path, progress=False, executor=executor)
    records = read_records(tmp_path / "par.jsonl")
    assert len(records) == len({r["case_id"] for r in records}) == 8
    failed = [r for r in records if r["status"] == "failed"]
    assert sorted(r["inner_steps"] for r in failed) == [3, 3]  # maml and imaml at K = 3: nothing else
    assert all("the worker died while running this case" in r["error"] for r in failed)
    if name == "local":
        assert all("exit code 139" in r["error"] for r in failed)
    assert summary.statuses == {"ok": 6, "failed": 2}
    assert not (tmp_path / "par.jsonl.inflight").exists()


@pytest.mark.slow  # submitit notices a job that died without output after about a minute
def test_submitit_job_that_dies_fails_its_case_and_its_chunk_mates_are_measured(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("METABENCH_FAULT_INNER_STEPS", "2")
    executor = make_executor("submitit", workers=2, cluster="local", folder=tmp_path / "jobs", chunk=2, imports=FAULTS)
    run_sweep(sweep(steps=(1, 2)), tmp_path, progress=False, executor=executor)
    records = {(r["algorithm"], r["inner_steps"]): r for r in read_records(tmp_path / "par.jsonl")}
    assert len(records) == 4
    assert {k for k, r in records.items() if r["status"] == "failed"} == {("maml", 2), ("imaml", 2)}
    assert all(r["status"] == "ok" for k, r in records.items() if k[1] == 1)


def _children(pid: int) -> list[int]:
    """Live child pids of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
@pytest.mark.parametrize("name", ["local", "dask"])
def test_killing_a_worker_mid_run_loses_nothing(tmp_path, serial_records, name):
    if name == "dask":
        pytest.importorskip("distributed")
    big = sweep(steps=(1, 2, 3, 4, 5, 6))
    done = threading.Event()
    result = {}

    def run():
        try:
            result["summary"] = run_sweep(big, tmp_path, progress=False, executor=make_executor(name, workers=2))
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    store = tmp_path / "par.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not store.exists() or len(read_records(store)) < 2):
        time.sleep(0.02)
    workers = [p for p in _children(os.getpid()) if "spawn" in Path(f"/proc/{p}/cmdline").read_text()]
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)
    thread.join(timeout=300)
    assert done.is_set() and "summary" in result
    records = read_records(store)
    ids = [r["case_id"] for r in records]
    assert len(ids) == len(set(ids)) == 12  # every case once: the killed worker's case was measured again
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["status"] != "ok"]
    for record in records:
        if record["case_id"] in serial_records:
            assert comparable(record) == comparable(serial_records[record["case_id"]])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_driver_killed_mid_run_resumes_with_every_case_once(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text(
        'name = "par"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 4\nn_train = 8\n'
        "n_val = 4\nkappa = 10.0\nlam = 1.0\nmin_run_time = 0.05\nthreads = 1\n"
        '[[grid]]\nalgorithm = ["maml", "imaml", "fomaml"]\ninner_steps = [1, 2, 3, 4, 5, 6]\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "metabench", "run", "--config", str(config), "--out", str(tmp_path)]
    command += ["--executor", "local", "--workers", "2", "--no-progress"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "par.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not store.exists() or len(read_records(store)) < 3):
        time.sleep(0.02)
    workers = _children(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for pid in workers:  # orphaned workers end when their pipe to the driver closes; do not wait for that here
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = len(read_records(store))
    assert 3 <= before < 18, "the driver should have been killed part-way"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    ids = [r["case_id"] for r in read_records(store)]
    assert len(ids) == len(set(ids)) == 18
    assert all(r["status"] == "ok" for r in read_records(store))


def test_contention_is_warned_when_workers_times_threads_exceed_the_cores():
    cores = os.cpu_count() or 1
    cases = sweep().cases()
    assert contention(cases, make_executor("local", workers=1)) is None
    crowded = contention([{**c, "threads": cores} for c in cases], make_executor("local", workers=2))
    assert crowded and f"2 workers x {cores} thread(s)" in crowded and "contention" in crowded
    assert contention(cases, make_executor("serial")) is None


def test_executor_options_are_checked_by_name():
    with pytest.raises(ValueError, match="executor must be one of serial, local, dask, submitit"):
        make_executor("mpi")
    with pytest.raises(ValueError, match="the local executor does not take scheduler"):
        make_executor("local", scheduler="tcp://x:1")
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        make_executor("local", workers=0)
    with pytest.raises(ValueError, match="serial executor runs one case at a time"):
        make_executor("serial", workers=2)


def test_gpus_are_given_round_robin_to_local_workers(monkeypatch):
    import multiprocessing

    from metabench.sweep.executors import local

    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        local._init_worker(None, ["0", "1"], counter)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local.visible_gpus() == ["3", "5"]


def test_cli_dry_run_lists_the_cases_and_estimates_from_records(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text(
        'name = "par"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 4\nn_train = 8\n'
        "n_val = 4\nkappa = 10.0\nlam = 1.0\nmin_run_time = 0.001\nthreads = 1\n"
        '[executor]\nname = "local"\nworkers = 2\n'
        '[[grid]]\nalgorithm = ["maml", "imaml"]\ninner_steps = [1, 2, 3, 4]\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "metabench", "run", "--config", str(config), "--out", str(tmp_path)]
    dry = subprocess.run([*base, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.strip().splitlines()) == 8 and "no estimate" in dry.stderr
    assert not (tmp_path / "par.jsonl").exists()  # nothing ran
    ran = subprocess.run([*base, "--limit", "2", "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "local executor, 2 worker(s)" in ran.stderr  # from the sweep file's [executor] table
    dry = subprocess.run([*base, "--dry-run", "--executor", "serial"], env=env, capture_output=True, text=True)
    assert len(dry.stdout.strip().splitlines()) == 6
    assert "6 case(s) to run, 2 already in" in dry.stderr and "about" in dry.stderr and "serial executor" in dry.stderr

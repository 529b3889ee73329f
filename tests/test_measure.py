"""The measurement instruments: exact byte/FLOP counts, torch.func support, CPU fallbacks of GPU paths.

Nothing here asserts on wall time; timings are only checked for type and sign.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

import metabench
from metabench.measure import (
    MEASURE_KEYS,
    SAVED_HOOKS_UNAVAILABLE,
    LiveTensorTracker,
    NVMLSampler,
    RSSSampler,
    count_flops,
    cuda_memory,
    git_commit,
    instrument_overhead,
    machine_info,
    measure_call,
    saved_tensor_bytes,
    time_call,
)

F64 = torch.float64
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def problem():
    return metabench.LinearMetaRegression.generate(n_tasks=2, dim=50, n_train=60, n_val=20, kappa=10.0, lam=1.0, seed=0)


@pytest.fixture
def theta():
    return torch.zeros(50, dtype=F64)


def _live_and_saved(fn):
    """(live peak bytes, saved bytes) of one call of ``fn``."""
    tracker = LiveTensorTracker()

    def tracked():
        with tracker:
            fn()

    saved, status = saved_tensor_bytes(tracked)
    assert status == "ok"
    return tracker.peak_bytes, saved


# ---------------------------------------------------------------------- live tensor tracker
def test_live_tracker_exact_bytes_of_known_pattern():
    before = torch.empty(10_000, dtype=F64)  # alive before entry: never counted
    with LiveTensorTracker() as tracker:
        a = torch.empty(1000, dtype=F64)  # 8000 B
        b = torch.empty(500, dtype=torch.float32)  # 2000 B -> 10000 live
        del a  # 2000 live
        c = torch.empty(250, dtype=F64)  # 2000 B -> 4000 live
        view = before.view(100, 100)[3]  # a view of an older tensor: 0 B
        before.add_(1.0)  # in place on an older tensor: 0 B
        torch.add(before, 1.0, out=before)  # out= an older tensor: 0 B
    assert tracker.peak_bytes == 10_000
    assert tracker.allocated_bytes == 12_000
    assert tracker.current_bytes == 4000
    assert tracker.n_allocations == 3
    del b, c, view


def test_live_tracker_views_resizes_and_literals():
    with LiveTensorTracker() as tracker:
        a = torch.empty(1000, dtype=F64)
        _ = a[10:20], a.t(), a.view(10, 100), a.detach()  # views of a block tensor add 0
    assert tracker.allocated_bytes == 8000
    with LiveTensorTracker() as tracker:
        grown = torch.empty(0)
        grown.resize_(100)  # 400 B, counted as growth of a block storage
        literal = torch.tensor([1.0, 2.0])  # built outside the dispatcher, seen via lift_fresh: 8 B
    assert (tracker.peak_bytes, tracker.allocated_bytes) == (408, 408)
    del grown, literal


def test_live_tracker_frees_and_reentry():
    tracker = LiveTensorTracker()
    for _ in range(2):  # peaks reset on each entry
        with tracker:
            for _ in range(5):
                t = torch.empty(1000, dtype=F64)
                del t
        assert (tracker.peak_bytes, tracker.allocated_bytes, tracker.current_bytes) == (8000, 40_000, 0)


def test_live_tracker_sees_backward_pass():
    x = torch.randn(1000, dtype=F64, requires_grad=True)
    with LiveTensorTracker() as tracker:
        y = (x * x).sum()
        y.backward()
    # alive at exit: y (8 B) and x.grad (8000 B), both allocated inside, x.grad by the backward pass
    assert tracker.current_bytes == 8008
    assert tracker.peak_bytes >= 3 * 8000  # the backward pass's products and their sum
    assert x.grad is not None


def test_live_tracker_skips_meta_tensors():
    with LiveTensorTracker() as tracker:
        m = torch.empty(10**6, device="meta")
        _ = m * 2
    assert tracker.allocated_bytes == 0


def _sin_cos(z):
    return (z.sin() * z.cos()).sum()


def test_live_tracker_under_torch_func_grad_and_vmap():
    x = torch.ones(1000, dtype=F64)
    peaks = []
    for _ in range(2):
        with LiveTensorTracker() as tracker:
            g = torch.func.grad(_sin_cos)(x)
            v = torch.func.vmap(torch.func.grad(_sin_cos))(x.view(10, 100))
        peaks.append(tracker.peak_bytes)
        assert tracker.current_bytes >= g.nbytes + v.nbytes
    assert peaks[0] > 0 and peaks[0] == peaks[1]
    with LiveTensorTracker() as tracker:
        torch.func.vmap(lambda z: z * 2)(x.view(10, 100))
    assert tracker.peak_bytes == 8000  # one batched product


def test_live_tracker_under_functional_call():
    model = torch.nn.Linear(100, 10, dtype=F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    inputs = torch.randn(32, 100, dtype=F64)

    def loss(p):
        return torch.func.functional_call(model, p, (inputs,)).pow(2).sum()

    with LiveTensorTracker() as tracker:
        grads = torch.func.grad(loss)(params)
    assert tracker.peak_bytes > 0
    assert tracker.current_bytes >= sum(g.nbytes for g in grads.values())


# ---------------------------------------------------------------------- saved tensors
def test_saved_tensor_bytes_exact_and_deduplicated():
    x = torch.randn(100, dtype=F64, requires_grad=True)
    w = torch.randn(100, dtype=F64, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * x).sum()) == (800, "ok")  # x saved twice, counted once
    assert saved_tensor_bytes(lambda: (x * w).sin().sum()) == (2400, "ok")  # x, w, and x*w for sin
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: (x * w).sin().sum()) == (0, "ok")


def test_saved_tensor_bytes_refused_by_torch_func_grad():
    x = torch.ones(10, dtype=F64)
    with pytest.raises(RuntimeError, match="saved tensor hooks"):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            torch.func.grad(_sin_cos)(x)
    assert saved_tensor_bytes(lambda: torch.func.grad(_sin_cos)(x)) == (None, SAVED_HOOKS_UNAVAILABLE)
    assert SAVED_HOOKS_UNAVAILABLE.startswith("unavailable")


def test_saved_tensor_bytes_propagates_other_errors():
    def boom():
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        saved_tensor_bytes(boom)
    with pytest.raises(ValueError):
        saved_tensor_bytes(lambda: int("x"))


# ---------------------------------------------------------------------- memory vs K on a meta-learning problem
def test_maml_memory_grows_with_inner_steps_and_imaml_does_not(problem, theta):
    maml, imaml = {}, {}
    for k in (5, 20, 80):
        alg = metabench.get_algorithm("maml", inner_steps=k, inner_lr=0.05)
        maml[k] = _live_and_saved(lambda alg=alg: alg.hypergradient(problem, theta))
        alg = metabench.get_algorithm("imaml", inner_steps=k, inner_lr=0.05, cg_iters=5)
        imaml[k] = _live_and_saved(lambda alg=alg: alg.hypergradient(problem, theta))
    live = {k: v[0] for k, v in maml.items()}
    saved = {k: v[1] for k, v in maml.items()}
    assert live[5] < live[20] < live[80] and live[80] > 3 * live[5]
    # saved-for-backward bytes grow linearly in K: the increments are proportional to the added steps
    assert saved[5] < saved[20] < saved[80]
    assert (saved[80] - saved[20]) / (saved[20] - saved[5]) == pytest.approx((80 - 20) / (20 - 5), rel=0.05)
    imaml_live = [v[0] for v in imaml.values()]
    assert min(imaml_live) > 0
    assert max(imaml_live) <= 1.05 * min(imaml_live)


def test_one_task_per_graph_divides_maml_memory_by_the_task_batch():
    """maml's peak holds the graph of every task in it: 8 tasks at once vs one at a time, K = 60."""
    problem = metabench.LinearMetaRegression.generate(
        n_tasks=8, dim=50, n_train=60, n_val=20, kappa=10.0, lam=1.0, seed=0
    )
    theta = torch.zeros(50, dtype=F64)
    peak = {}
    for chunk in (None, 1):
        alg = metabench.get_algorithm("maml", inner_steps=60, inner_lr=0.05, task_chunk=chunk)
        peak[chunk] = _live_and_saved(lambda alg=alg: alg.hypergradient(problem, theta))[0]
    assert peak[1] < peak[None] / 4  # ideal 1/8; the per-chunk task data gather and the accumulators add a little


# ---------------------------------------------------------------------- RSS, CUDA, NVML
def test_rss_sampler():
    with RSSSampler() as rss:
        block = torch.ones(2_000_000, dtype=F64)
        del block
    assert rss.baseline_bytes > 0
    assert rss.peak_bytes >= rss.baseline_bytes
    assert rss.peak_delta_bytes == rss.peak_bytes - rss.baseline_bytes >= 0
    assert rss.n_samples >= 2


def test_cuda_memory_on_cpu_runs_fn_and_reports_unavailable():
    calls = []
    out = cuda_memory(lambda: calls.append(1), "cpu")
    assert out == {"cuda_max_allocated_bytes": None, "cuda_status": "unavailable: device is cpu"}
    assert calls == [1]


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-CUDA path")
def test_cuda_memory_without_cuda():
    out = cuda_memory(lambda: None, "cuda")
    assert out["cuda_max_allocated_bytes"] is None
    assert out["cuda_status"] == "unavailable: CUDA not available on this machine"


def test_cuda_memory_ok_path_with_fake_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1234)
    out = cuda_memory(lambda: calls.append("fn"), "cuda:0")
    assert out == {"cuda_max_allocated_bytes": 1234, "cuda_status": "ok"}
    assert calls == ["sync", "reset", "fn", "sync"]


def test_nvml_sampler_on_cpu_device():
    with NVMLSampler("cpu") as nvml:
        pass
    assert nvml.status == "unavailable: device is cpu"
    assert nvml.peak_bytes is None


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU path")
def test_nvml_sampler_without_gpu():
    with NVMLSampler("cuda") as nvml:
        torch.ones(10)
    assert nvml.status.startswith("unavailable")
    assert nvml.peak_bytes is None


def _fake_pynvml(used_values, init_error=False):
    """A stand-in ``pynvml`` module: ``used`` rises through ``used_values`` then stays."""
    fake = types.ModuleType("pynvml")
    fake.log = []

    class NVMLError(Exception):
        pass

    def init():
        fake.log.append("init")
        if init_error:
            raise NVMLError("Driver Not Loaded")

    values = iter(used_values)
    last = [0]

    def memory_info(handle):
        last[0] = next(values, last[0])
        return types.SimpleNamespace(used=last[0])

    fake.NVMLError = NVMLError
    fake.nvmlInit = init
    fake.nvmlShutdown = lambda: fake.log.append("shutdown")
    fake.nvmlDeviceGetHandleByIndex = lambda i: fake.log.append(f"index {i}") or f"handle{i}"
    fake.nvmlDeviceGetHandleByUUID = lambda u: fake.log.append(f"uuid {u}") or u
    fake.nvmlDeviceGetMemoryInfo = memory_info
    return fake


@pytest.mark.skipif(not NO_CUDA, reason="the fake NVML stands in for a missing GPU")
def test_nvml_sampler_ok_path_with_fake_nvml(monkeypatch):
    fake = _fake_pynvml([100, 500, 300])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with NVMLSampler("cuda:1") as nvml:
        assert nvml.baseline_bytes == 100
    assert nvml.status == "ok"
    assert nvml.peak_bytes == 500
    assert fake.log == ["init", "index 5", "shutdown"]  # torch index 1 -> visible device 5

    fake = _fake_pynvml([], init_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NVMLSampler("cuda") as nvml:
        pass
    assert nvml.status == "unavailable: NVML init failed (Driver Not Loaded)"
    assert nvml.peak_bytes is None
    assert fake.log == ["init"]  # no shutdown after a failed init


# ---------------------------------------------------------------------- FLOPs
def test_count_flops_exact_matmul():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert count_flops(lambda: a @ b) == {"matmul_flops": 2 * 64 * 32 * 16}
    assert count_flops(lambda: a.sin()) == {"matmul_flops": 0}  # elementwise ops are not counted


def test_hypergradient_flops_include_hessian_vector_products(problem, theta):
    def flops(**options):
        alg = metabench.get_algorithm("imaml", inner_steps=5, inner_lr=0.05, **options)
        return count_flops(lambda: alg.hypergradient(problem, theta))["matmul_flops"]

    few, many = flops(cg_iters=2), flops(cg_iters=10)
    assert 0 < few < many


# ---------------------------------------------------------------------- timing and measure_call
def test_time_call_types():
    out = time_call(lambda: torch.ones(10).sum(), "cpu", min_run_time=0.01)
    assert set(out) == {"time_median_s", "time_iqr_s", "time_runs"}
    assert isinstance(out["time_runs"], int) and out["time_runs"] >= 1
    assert out["time_median_s"] > 0 and out["time_iqr_s"] >= 0
    with pytest.raises(ValueError):
        time_call(lambda: None, "cpu", min_run_time=0)


def test_time_call_slower_than_min_run_time():
    import time

    out = time_call(lambda: time.sleep(0.02), "cpu", min_run_time=0.005)
    assert out["time_runs"] >= 1 and out["time_median_s"] > 0


def test_measure_call_on_cpu(problem, theta):
    alg = metabench.get_algorithm("maml", inner_steps=5, inner_lr=0.05)
    measures, result = measure_call(lambda: alg.hypergradient(problem, theta), "cpu", min_run_time=0.01)
    assert list(measures) == [key for keys in MEASURE_KEYS.values() for key in keys]
    for key in ("time_median_s", "time_iqr_s"):
        assert isinstance(measures[key], float)
    for key in ("time_runs", "live_peak_bytes", "live_allocated_bytes", "saved_bytes", "rss_peak_bytes"):
        assert isinstance(measures[key], int)
    assert isinstance(measures["rss_peak_delta_bytes"], int) and isinstance(measures["matmul_flops"], int)
    assert measures["live_peak_bytes"] > 0 and measures["saved_bytes"] > 0 and measures["matmul_flops"] > 0
    assert measures["saved_status"] == "ok"
    assert measures["cuda_max_allocated_bytes"] is None and measures["nvml_peak_bytes"] is None
    assert measures["cuda_status"].startswith("unavailable") and measures["nvml_status"].startswith("unavailable")
    assert isinstance(result, metabench.Hypergradient)
    torch.testing.assert_close(result.grad, alg.hypergradient(problem, theta).grad)


def test_measure_call_subsets_and_torch_func():
    x = torch.ones(1000, dtype=F64)
    measures, result = measure_call(lambda: torch.func.grad(_sin_cos)(x), "cpu", instruments=("memory",))
    assert set(measures) == set(MEASURE_KEYS["memory"])
    assert measures["saved_bytes"] is None and measures["saved_status"] == SAVED_HOOKS_UNAVAILABLE
    assert measures["live_peak_bytes"] > 0
    torch.testing.assert_close(result, x.cos() ** 2 - x.sin() ** 2)
    measures, result = measure_call(lambda: 7, "cpu", min_run_time=0.01, instruments=("time",))
    assert set(measures) == set(MEASURE_KEYS["time"]) and result == 7
    measures, result = measure_call(lambda: 7, "cpu", instruments=())
    assert measures == {} and result == 7
    with pytest.raises(ValueError, match="unknown instrument"):
        measure_call(lambda: 7, "cpu", instruments=("energy",))


def test_instrument_overhead_reports_ratios():
    a = torch.randn(20, 20)
    out = instrument_overhead(lambda: (a @ a).sum(), "cpu", min_run_time=0.01)
    assert set(out) == {"bare_time_s", "live_tracker_ratio", "flop_counter_ratio"}
    assert all(isinstance(v, float) and v > 0 for v in out.values())


# ---------------------------------------------------------------------- machine
def test_machine_info_and_git_commit(tmp_path, monkeypatch):
    info = machine_info()
    for key in (
        "platform",
        "python_version",
        "torch_version",
        "cpu_model",
        "cpu_logical_cores",
        "ram_total_bytes",
        "cuda_available",
        "cuda_device_name",
    ):
        assert key in info
    assert info["cpu_logical_cores"] >= 1 and info["ram_total_bytes"] > 0
    assert info["cuda_available"] == torch.cuda.is_available()
    commit = git_commit()
    assert commit is None or (isinstance(commit, str) and len(commit.removesuffix("+dirty")) >= 40)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # do not find an enclosing repo
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "missing.txt") is None


def test_git_commit_is_dirty_for_changed_or_new_code_but_not_for_records_written_into_the_checkout(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_commit(repo)
    assert clean is not None and not clean.endswith("+dirty")
    (repo / "results").mkdir()
    (repo / "results" / "sweep.jsonl").write_text("{}\n")  # records being written: still the commit's code
    assert git_commit(repo) == clean
    (repo / "b.py").write_text("y = 2\n")  # new code the commit does not hold
    assert git_commit(repo) == clean + "+dirty"
    (repo / "b.py").unlink()
    (repo / "a.py").write_text("x = 2\n")  # changed code
    assert git_commit(repo) == clean + "+dirty"

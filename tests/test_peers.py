"""Peer libraries (metabench.peers) compute metabench's maml, fomaml and imaml meta-gradients; compare() returns
complete rows."""

from __future__ import annotations

import pytest
import torch

import metabench as mb
from metabench.peers import METABENCH, PEERS, ROW_KEYS, compare, load_peers, peer
from metabench.problems import FewShotClassification

K, LR = 2, 0.1


@pytest.fixture(scope="module")
def tiny() -> FewShotClassification:
    return FewShotClassification.omniglot_like(
        ways=2, shots=1, query=2, n_tasks=2, filters=4, image_size=8, norm="none", dtype=torch.float64
    )


@pytest.fixture(scope="module")
def maml_grad(tiny) -> torch.Tensor:
    return mb.get_algorithm("maml", inner_steps=K, inner_lr=LR).hypergradient(tiny, _theta(tiny)).grad


def _theta(problem) -> torch.Tensor:
    """The initial weights, nudged so the check does not rest on the initialisation's symmetries."""
    theta = problem.initial_theta()
    return theta + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(3), dtype=theta.dtype)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_equals_metabench_maml_in_float64(tiny, maml_grad, name):
    module = peer(name)
    ok, reason = module.available()
    if not ok:
        pytest.skip(f"{name} unavailable: {reason}")
    grad = module.maml_meta_gradient(tiny, _theta(tiny), [0, 1], K, LR)
    assert grad.shape == maml_grad.shape and grad.dtype == torch.float64
    assert _rel(grad, maml_grad) <= 1e-10


def test_plain_peer_is_always_available_and_agrees(tiny, maml_grad):
    assert peer("plain").available()[0]
    grad = peer("plain").maml_meta_gradient(tiny, _theta(tiny), [0, 1], K, LR)
    assert _rel(grad, maml_grad) <= 1e-10


def test_peer_on_a_task_subset(tiny):
    theta = _theta(tiny)
    want = mb.get_algorithm("maml", inner_steps=K, inner_lr=LR).hypergradient(tiny, theta, tasks=[1]).grad
    assert _rel(peer("plain").maml_meta_gradient(tiny, theta, [1], K, LR), want) <= 1e-10


def test_learn2learn_available_never_raises():
    ok, reason = peer("learn2learn").available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
    if not ok:
        assert "learn2learn" in reason


def _implementations(algorithm):
    return [name for name in PEERS if hasattr(peer(name), f"{algorithm}_meta_gradient")]


@pytest.mark.parametrize("name", _implementations("fomaml"))
def test_peer_fomaml_equals_metabench_in_float64(tiny, name):
    module = peer(name)
    if not module.available()[0]:
        pytest.skip(f"{name} unavailable")
    want = mb.get_algorithm("fomaml", inner_steps=K, inner_lr=LR).hypergradient(tiny, _theta(tiny)).grad
    assert _rel(module.fomaml_meta_gradient(tiny, _theta(tiny), [0, 1], K, LR), want) <= 1e-12


@pytest.mark.parametrize("damping", [0.0, 0.7])
@pytest.mark.parametrize("name", _implementations("imaml"))
def test_peer_imaml_equals_metabench_in_float64(tiny, name, damping):
    module = peer(name)
    if not module.available()[0]:
        pytest.skip(f"{name} unavailable")
    problem = tiny.with_lam(2.0)
    options = {"inner_steps": K, "inner_lr": LR, "cg_iters": 4, "damping": damping}
    want = mb.get_algorithm("imaml", **options).hypergradient(problem, _theta(tiny)).grad
    got = module.imaml_meta_gradient(problem, _theta(tiny), [0, 1], K, LR, 4, damping)
    assert _rel(got, want) <= 1e-10


def test_plain_and_torchopt_cover_imaml():
    assert {"plain", "torchopt"} <= set(_implementations("imaml"))
    assert set(_implementations("maml")) == set(PEERS)


def test_peers_refuse_a_proximal_problem():
    problem = FewShotClassification.omniglot_like(
        ways=2, shots=1, query=2, n_tasks=1, filters=4, image_size=8, norm="none", lam=1.0, dtype=torch.float64
    )
    with pytest.raises(ValueError, match="lam = 0"):
        peer("plain").maml_meta_gradient(problem, problem.initial_theta(), [0], 1, LR)
    with pytest.raises(ValueError, match="lam > 0"):
        peer("plain").imaml_meta_gradient(problem.with_lam(0.0), problem.initial_theta(), [0], 1, LR, 2)


def test_compare_rows(tiny):
    rows = compare(tiny, [0, 1], K, LR, rounds=3, check_float64=True, verbose=False)
    assert [r["algorithm"] for r in rows if r["implementation"] == "metabench"] == list(METABENCH)
    for algorithm in METABENCH:
        assert {r["implementation"] for r in rows if r["algorithm"] == algorithm} == {"metabench"} | set(
            _implementations(algorithm)
        )
    available = {name for name, (module, _) in load_peers().items() if module is not None}
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        if r["source"] == "peer" and r["implementation"] not in available:
            assert r["status"] == "skipped" and r["reason"]
            continue
        assert r["status"] == "ok"
        assert r["time_s"] > 0 and r["peak_live_bytes"] > 0 and r["time_runs"] == 3 and r["time_iqr_s"] >= 0
        assert r["time_ratio_to_best_peer"] > 0 and r["memory_ratio_to_best_peer"] > 0
        assert r["lam"] == (1.0 if r["algorithm"] == "imaml" else 0.0)
        if r["source"] == "peer":
            assert r["rel_diff"] <= 1e-10 and r["rel_diff_float64"] <= 1e-10
    for algorithm in METABENCH:  # paired ratios: in each round a peer's time is at least the fastest peer's
        ran = [r for r in rows if r["algorithm"] == algorithm and r["source"] == "peer" and r["status"] == "ok"]
        assert all(r["time_ratio_to_best_peer"] >= 1.0 and r["time_ratio_iqr"] >= 0 for r in ran)
        if len(ran) == 1:
            assert ran[0]["time_ratio_to_best_peer"] == 1.0 and ran[0]["time_ratio_iqr"] == 0.0


def test_compare_times_the_compiled_adapter_and_says_what_ran(tiny, monkeypatch):
    """compiled=True adds metabench+compile rows for fomaml and imaml (none for maml, whose steps stay eager); they
    agree with metabench's eager result and say what ran and the compile time."""
    from metabench.algorithms import compiled_step

    monkeypatch.setattr(compiled_step, "BACKEND", "aot_eager")  # no C++ code generation in the suite
    rows = compare(tiny, [0, 1], K, LR, ["plain"], rounds=2, compiled=True, verbose=False)
    compiled = {r["algorithm"]: r for r in rows if r["implementation"] == "metabench+compile"}
    assert set(compiled) == {"fomaml", "imaml"}
    for r in compiled.values():
        assert r["status"] == "ok" and r["source"] == "metabench" and r["compile"] == "compiled"
        assert r["compile_s"] > 0 and "compile='on': compiled" in r["reason"]
        assert r["rel_diff"] <= 1e-10  # float64: the compiled gradient is eager's to round-off
        assert r["time_ratio_to_best_peer"] > 0


def test_compare_rejects_unknown_names(tiny):
    with pytest.raises(ValueError, match="unknown implementations"):
        compare(tiny, [0], 1, LR, ["nope"], verbose=False)
    with pytest.raises(ValueError, match="unknown algorithms"):
        compare(tiny, [0], 1, LR, algorithms=["reptile"], verbose=False)


def test_compare_reports_a_failing_implementation(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(peer("plain"), "maml_meta_gradient", broken)
    rows = compare(tiny, [0], 1, LR, ["plain"], algorithms=["maml"], rounds=3, verbose=False)
    assert rows[1]["status"] == "error" and "boom" in rows[1]["reason"]
    assert rows[0]["status"] == "ok" and rows[0]["time_ratio_to_best_peer"] is None  # no peer ran


def test_command_table_has_one_line_per_row(tiny):
    from metabench.peers.__main__ import table

    rows = compare(tiny, [0], 1, LR, ["plain", "learn2learn"], rounds=3, verbose=False)
    text = table(rows)
    assert text.count("\n") == len(rows) + 1 and "| imaml | 1 | 1 | metabench |" in text

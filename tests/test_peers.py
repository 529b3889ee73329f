"""Peer libraries (metabench.peers) compute metabench's MAML meta-gradient; compare() returns complete rows."""

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


def test_peers_refuse_a_proximal_problem():
    problem = FewShotClassification.omniglot_like(
        ways=2, shots=1, query=2, n_tasks=1, filters=4, image_size=8, norm="none", lam=1.0, dtype=torch.float64
    )
    with pytest.raises(ValueError, match="lam = 0"):
        peer("plain").maml_meta_gradient(problem, problem.initial_theta(), [0], 1, LR)


def test_compare_rows(tiny):
    rows = compare(tiny, [0, 1], K, LR, min_run_time=0.01, check_float64=True, verbose=False)
    assert [r["implementation"] for r in rows] == [*METABENCH, *PEERS]
    available = {name for name, (module, _) in load_peers().items() if module is not None}
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        if r["source"] == "peer" and r["implementation"] not in available:
            assert r["status"] == "skipped" and r["reason"]
            continue
        assert r["status"] == "ok"
        assert r["time_s"] > 0 and r["peak_live_bytes"] > 0
        assert r["time_ratio_to_best_peer"] > 0 and r["memory_ratio_to_best_peer"] > 0
        if r["implementation"] == "imaml":
            assert r["lam"] == 1.0 and r["rel_diff_to_maml"] is None
        elif r["implementation"] != "fomaml":
            assert r["rel_diff_to_maml"] <= 1e-10 and r["rel_diff_to_maml_float64"] <= 1e-10
    assert min(r["time_ratio_to_best_peer"] for r in rows if r["source"] == "peer" and r["status"] == "ok") == 1.0


def test_compare_rejects_unknown_implementation(tiny):
    with pytest.raises(ValueError, match="unknown implementations"):
        compare(tiny, [0], 1, LR, ["nope"], verbose=False)


def test_compare_reports_a_failing_implementation(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(peer("plain"), "maml_meta_gradient", broken)
    rows = compare(tiny, [0], 1, LR, ["maml", "plain"], min_run_time=0.01, verbose=False)
    assert rows[1]["status"] == "error" and "boom" in rows[1]["reason"]
    assert rows[0]["status"] == "ok" and rows[0]["time_ratio_to_best_peer"] is None  # no peer ran

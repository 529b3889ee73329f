"""metabench.evaluate: errors against the truth each problem has, computed once per point, never garbage."""

from __future__ import annotations

import pytest
import torch

import metabench as mb
from metabench import evaluate as ev
from metabench.problems import FewShotClassification
from metabench.sweep import Sweep, run_case

F64 = torch.float64
SMOOTH = {"dataset": "digits", "ways": 3, "shots": 2, "query": 3, "n_tasks": 2, "filters": 4}
SMOOTH |= {"activation": "silu", "pool": "avg", "norm": "none"}


@pytest.fixture(scope="module")
def net():
    """A tiny smooth net (SiLU, average pooling, no normalisation), MAML formulation with lam = 1, float64."""
    return FewShotClassification.generate(**SMOOTH, formulation="maml", lam=1.0, dtype=F64)


@pytest.fixture(scope="module")
def net_lam0():
    return FewShotClassification.generate(**SMOOTH, formulation="maml", lam=0.0, dtype=F64)


def test_exact_problems_get_exact_errors(linear_problem, linear_theta):
    maml = mb.get_algorithm("maml", inner_steps=4, inner_lr=0.1)
    grad = maml.hypergradient(linear_problem, linear_theta).grad
    out = ev.evaluate(linear_problem, maml, linear_theta, None, grad, cache=ev.TruthCache())
    assert out["truth"] == "exact" and out["truth_status"] == "ok"
    assert out["rel_error_algorithm"] < 1e-12  # maml is exactly the K-step derivative
    assert out["rel_error_exact"] > 1e-3  # 4 steps are far from the converged inner problem
    assert out["rel_error_reference"] is None and out["damping_bias"] is None


def test_network_errors_against_the_float64_references(net):
    theta, cache = net.initial_theta(), ev.TruthCache()
    maml = mb.get_algorithm("maml", inner_steps=3, inner_lr=0.1)
    out = ev.evaluate(net, maml, theta, None, maml.hypergradient(net, theta).grad, cache=cache)
    assert out["truth"] == "reference" and out["reference_kind"] == ev.IMPLICIT_REFERENCE
    assert out["truth_status"] == "ok"
    assert out["rel_error_algorithm"] < 1e-10  # float64 maml == the independent K-step loop
    assert out["rel_error_reference"] > 1e-3  # 3 inner steps are not the converged inner solution
    # iMAML with a converged inner loop and a converged CG is the reference hypergradient
    imaml = mb.get_algorithm("imaml", inner_steps=400, inner_lr=0.1, cg_iters=200, cg_tol=1e-12)
    out = ev.evaluate(net, imaml, theta, None, imaml.hypergradient(net, theta).grad, cache=cache)
    assert out["rel_error_reference"] < 1e-6, out
    assert out["rel_error_algorithm"] is None  # imaml is not a K-step derivative


def test_a_damped_solve_is_judged_against_both_references(net):
    theta, cache = net.initial_theta(), ev.TruthCache()
    damped = mb.get_algorithm("imaml", inner_steps=400, inner_lr=0.1, cg_iters=200, cg_tol=1e-12, damping=0.5)
    out = ev.evaluate(net, damped, theta, None, damped.hypergradient(net, theta).grad, cache=cache)
    assert out["rel_error_damped_reference"] < 1e-6  # it solves the damped system to convergence
    assert out["damping_bias"] > 1e-3  # which is not the undamped one
    assert out["rel_error_reference"] == pytest.approx(out["damping_bias"], rel=1e-3)


def test_references_are_computed_once_per_point(net):
    theta, cache = net.initial_theta(), ev.TruthCache()
    for steps in (2, 3):
        imaml = mb.get_algorithm("imaml", inner_steps=steps, inner_lr=0.1, cg_iters=3)
        ev.evaluate(net, imaml, theta, None, imaml.hypergradient(net, theta).grad, cache=cache)
    assert cache.computed == 1  # one reference hypergradient served both
    moved = theta + 1e-3
    ev.evaluate(net, imaml, moved, None, imaml.hypergradient(net, moved).grad, cache=cache)
    assert cache.computed == 2  # another theta, another reference


def test_lam_zero_takes_the_k_step_objective_as_its_reference(net_lam0):
    theta, cache = net_lam0.initial_theta(), ev.TruthCache()
    fomaml = mb.get_algorithm("fomaml", inner_steps=3, inner_lr=0.1)
    out = ev.evaluate(net_lam0, fomaml, theta, None, fomaml.hypergradient(net_lam0, theta).grad, cache=cache)
    assert out["reference_kind"] == ev.UNROLLED_REFERENCE and out["truth_status"] == "ok"
    expected = net_lam0.reference_algorithm_gradient(theta, 3, 0.1)
    assert out["rel_error_reference"] == pytest.approx(
        ev.rel_error(fomaml.hypergradient(net_lam0, theta).grad, expected)
    )
    assert out["rel_error_reference"] > 1e-3  # first order is not the K-step derivative


def test_a_reference_that_does_not_converge_is_no_reference(net, monkeypatch):
    """No garbage: a reference whose inner solve stops short gives null fields and the reason, and the other
    references (the K-step derivative) are still there."""
    monkeypatch.setattr(ev, "REFERENCE_BUDGET", {"inner_iters": 1, "strict": True})
    theta, cache = net.initial_theta(), ev.TruthCache()
    maml = mb.get_algorithm("maml", inner_steps=2, inner_lr=0.1)
    out = ev.evaluate(net, maml, theta, None, maml.hypergradient(net, theta).grad, cache=cache)
    assert out["rel_error_reference"] is None and "ReferenceNotConverged" in out["truth_status"]
    assert "did not converge" in out["truth_status"]
    assert out["rel_error_algorithm"] < 1e-10
    ev.evaluate(net, maml, theta, None, maml.hypergradient(net, theta).grad, cache=cache)
    assert cache.computed == 2  # the failed attempt is remembered, not repeated (1 + the K-step reference)


def test_a_sweep_record_on_a_network_carries_reference_errors(tmp_path):
    sweep = Sweep(
        name="net",
        defaults={
            "problem": "few_shot_classification",
            **SMOOTH,
            "dtype": "float32",
            "inner_lr": 0.1,
            "instruments": ["memory"],
            "threads": 1,
        },
        grid=[
            {"algorithm": ["maml", "imaml"], "formulation": ["maml"], "lam": [1.0], "inner_steps": [3]},
            {"algorithm": ["itd_bio"], "formulation": ["bilevel"], "inner_steps": [3]},
        ],
    )
    for case in sweep.cases():
        record = run_case(case)
        assert record["status"] == "ok", record["error"]
        assert record["truth"] == "reference" and record["truth_status"] == "ok", record["truth_status"]
        assert 0 < record["rel_error_reference"] < 10
        if record["algorithm"] != "imaml":  # float32 against the float64 K-step loop: rounding only
            assert record["rel_error_algorithm"] < 1e-4

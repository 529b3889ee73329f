"""Meta-training, and RM-MetaL's warm starts over outer steps."""

from __future__ import annotations

import pytest
import torch

import metabench as mb
from tests.reference import rel_error

F64 = torch.float64


@pytest.fixture(scope="module")
def bilevel():
    return mb.QuadraticBilevel.generate(n_tasks=4, p=5, q=6, kappa=10.0, rho=0.1, seed=1)


def run_rm_metal(problem, steps=100, **options):
    options = {"inner_steps": 2, "inner_lr": 0.9, "cg_iters": 2, **options}
    return mb.train(problem, "rm_metal", torch.zeros(problem.theta_shape, dtype=F64), steps, 0.005, **options)


def test_rm_metal_training_reduces_the_exact_gradient_norm(bilevel):
    result = run_rm_metal(bilevel)
    assert result.exact_grad_norm[-1] < 1e-2 * result.exact_grad_norm[0]
    _, f_star = bilevel.exact_optimum()
    assert result.objective[-1] - float(f_star) < 1e-3 * (result.objective[0] - float(f_star))


def test_training_is_deterministic(bilevel):
    a, b = run_rm_metal(bilevel, steps=10), run_rm_metal(bilevel, steps=10)
    assert torch.equal(a.theta, b.theta) and a.objective == b.objective


def test_rm_metal_beats_cold_imaml_with_the_same_steps_and_cg_iterations(bilevel):
    warm = run_rm_metal(bilevel)
    cold = mb.train(bilevel, "imaml", torch.zeros(5, dtype=F64), 100, 0.005, inner_steps=2, inner_lr=0.9, cg_iters=2)
    assert warm.exact_grad_norm[-1] < 0.1 * cold.exact_grad_norm[-1]


def test_warm_v_lowers_the_error_of_the_first_cg_iterate(bilevel):
    run = run_rm_metal(bilevel, steps=20)
    state, theta = run.state, run.theta
    q = bilevel.q

    def grad(cg_iters, warm_v):
        alg = mb.get_algorithm("rm_metal", inner_steps=2, inner_lr=0.9, cg_iters=cg_iters, warm_v=warm_v)
        return alg.hypergradient(bilevel, theta, state=state).grad

    solved = grad(q, warm_v=False)  # the exact AID solve at the same (warm) phi_K
    warm_error, cold_error = rel_error(grad(1, True), solved), rel_error(grad(1, False), solved)
    assert warm_error < 0.2 * cold_error


def test_state_carries_each_task_separately(bilevel):
    alg = mb.get_algorithm("rm_metal", inner_steps=3, inner_lr=0.9, cg_iters=2)
    theta = torch.zeros(5, dtype=F64)
    first = alg.hypergradient(bilevel, theta, tasks=[1, 3])
    assert first.state.seen.tolist() == [False, True, False, True]
    assert torch.equal(first.state.phi[[1, 3]], first.phi)
    second = alg.hypergradient(bilevel, theta, tasks=[0, 1], state=first.state)
    assert second.state.seen.tolist() == [True, True, False, True]
    # task 1 restarted from its phi_K: three more GD steps from there, not from zero
    cold = alg.hypergradient(bilevel, theta, tasks=[1])
    assert not torch.allclose(second.phi[1], cold.phi[0])
    assert torch.equal(first.state.seen, torch.tensor([False, True, False, True]))  # states are not mutated


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_decreases_the_meta_objective(optimizer):
    problem = mb.LinearMetaRegression.generate(3, 5, 10, 10, kappa=10.0, lam=0.5, seed=0)
    result = mb.train(problem, "maml", torch.zeros(5, dtype=F64), 30, 0.05, optimizer, inner_steps=10, inner_lr=0.1)
    assert len(result.objective) == 31 and len(result.counts) == 30
    assert result.objective[-1] < 0.9 * result.objective[0]
    inner = [c.inner_grads for c in result.counts]
    assert inner == sorted(inner) and inner[-1] == 30 * 3 * 10


def test_train_without_closed_form_records_none():
    problem = mb.LinearMetaRegression.generate(2, 3, 6, 4, kappa=2.0, lam=0.0, seed=0)
    result = mb.train(problem, "maml", torch.zeros(3, dtype=F64), 2, 0.1, inner_steps=2, inner_lr=0.1)
    assert result.objective == [None, None, None] and len(result.grad_norm) == 2


def test_a_diverging_run_stops_with_a_status_instead_of_nan_objectives(bilevel):
    run = mb.train(bilevel, "itd_bio", torch.zeros(5, dtype=F64), 200, 1e6, inner_steps=2, inner_lr=0.9)
    assert run.status == "diverged" and "outer step" in run.error
    assert len(run.objective) < 201  # it stopped where it diverged
    assert all(f is not None and f == f and abs(f) < float("inf") for f in run.objective)  # no NaN or inf kept
    ok = mb.train(bilevel, "itd_bio", torch.zeros(5, dtype=F64), 5, 0.01, inner_steps=2, inner_lr=0.9)
    assert ok.status == "ok" and ok.error is None and len(ok.objective) == 6

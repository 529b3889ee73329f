"""inner_solver='newton_cg' (iMAML's Hessian-free inner solver): one step reaches the optimum of a quadratic inner
problem, every product it takes is counted, iMAML on it matches the exact hypergradient, and algorithms that
back-propagate through the inner steps refuse it with a clear error."""

from __future__ import annotations

import pytest
import torch

from metabench import LinearMetaRegression, QuadraticBilevel, get_algorithm
from metabench.solvers import make_inner_solver

F64 = torch.float64


@pytest.fixture
def problem():
    return LinearMetaRegression.generate(n_tasks=3, dim=6, n_train=10, n_val=8, kappa=50.0, lam=1.0, seed=3)


def _theta(problem, seed=0):
    return torch.randn(problem.theta_shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_one_newton_step_reaches_the_quadratic_inner_optimum(problem):
    theta = _theta(problem)
    imaml = get_algorithm("imaml", inner_solver="newton_cg", newton_cg_iters=6, inner_steps=1, cg_iters=6)
    result = imaml.hypergradient(problem, theta)
    exact = problem.inner_solution(theta)
    assert float((result.phi - exact).norm()) <= 1e-10 * float(exact.norm())
    # 1 gradient + 6 CG products per task for the step, 1 gradient for the accepted trial point t = 1
    # (then iMAML's own: one linearization, cg_iters products, one outer gradient)
    n = problem.n_tasks
    assert result.counts.inner_grads == n * (2 + 1)
    assert result.counts.hvps == n * (6 + 6)
    truth = problem.exact_hypergradient(theta)
    assert float((result.grad - truth).norm()) <= 1e-9 * float(truth.norm())


def test_too_few_cg_iterations_still_descend_and_converge_in_more_steps(problem):
    theta = _theta(problem, seed=1)
    exact = problem.inner_solution(theta)
    errors = []
    for steps in (1, 4, 16, 32):
        imaml = get_algorithm("imaml", inner_solver="newton_cg", newton_cg_iters=3, inner_steps=steps, cg_iters=6)
        result = imaml.hypergradient(problem, theta)
        errors.append(float((result.phi - exact).norm() / exact.norm()))
    assert errors[0] < 0.5 and errors[2] <= 1e-7 and errors[3] <= 1e-12 and errors[2] < errors[1] < errors[0]
    # at the optimum the line search accepts t = 1 on round-off instead of halving 20 times per step
    assert result.counts.inner_grads <= 3 * (2 * 32 + 1 + 5)


def test_newton_cg_on_the_bilevel_family_with_rm_metal():
    problem = QuadraticBilevel.generate(n_tasks=2, p=4, q=5, kappa=20.0, rho=0.5, seed=0)
    theta = torch.randn(problem.theta_shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    result = get_algorithm("rm_metal", inner_solver="newton_cg", newton_cg_iters=5, inner_steps=2, cg_iters=5)
    grad = result.hypergradient(problem, theta).grad
    truth = problem.exact_hypergradient(theta)
    assert float((grad - truth).norm()) <= 1e-9 * float(truth.norm())


@pytest.mark.parametrize("name", ["maml", "itd_bio", "truncated", "maml_checkpointed"])
def test_algorithms_that_back_propagate_refuse_it(name):
    with pytest.raises(ValueError, match="cannot be back-propagated.*imaml, rm_metal or fomaml"):
        get_algorithm(name, inner_solver="newton_cg")


def test_options_are_checked_and_recorded():
    with pytest.raises(ValueError, match="newton_cg_iters"):
        get_algorithm("imaml", inner_solver="newton_cg", newton_cg_iters=0)
    solver = make_inner_solver("newton_cg", inner_lr=0.1, newton_cg_iters=3)
    assert solver.options == {"inner_solver": "newton_cg", "newton_cg_iters": 3}
    described = get_algorithm("imaml", inner_solver="newton_cg", newton_cg_iters=3).describe()
    assert described["inner_solver"] == "newton_cg" and described["newton_cg_iters"] == 3

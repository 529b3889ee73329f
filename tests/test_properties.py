"""Hypothesis property tests: generated condition numbers, and algorithms against the closed forms.

The closed forms (``exact_algorithm_gradient``: K GD steps in the eigenbasis, no autograd, no loop;
``exact_hypergradient``: the implicit-function answer) share no code with the algorithms.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metabench import LinearMetaRegression, QuadraticBilevel, get_algorithm

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------- strategies
@st.composite
def linear_problems(draw, max_log_kappa: float = 4.0) -> LinearMetaRegression:
    """Shapes n_tasks 1..3, dim 2..6, n_train in dim..2 dim or 1..dim-1; kappa log-uniform; lam in [0.01, 10]."""
    dim = draw(st.integers(2, 6), label="dim")
    underdetermined = draw(st.booleans(), label="n_train < dim")
    n_train = draw(st.integers(1, dim - 1) if underdetermined else st.integers(dim, 2 * dim), label="n_train")
    return LinearMetaRegression.generate(
        n_tasks=draw(st.integers(1, 3), label="n_tasks"),
        dim=dim,
        n_train=n_train,
        n_val=draw(st.integers(1, 8), label="n_val"),
        kappa=10.0 ** draw(st.floats(0.0, max_log_kappa), label="log10 kappa"),
        lam=draw(st.floats(0.01, 10.0), label="lam"),
        seed=draw(st.integers(0, 2**16), label="seed"),
    )


@st.composite
def bilevel_problems(draw, max_log_kappa: float = 4.0) -> QuadraticBilevel:
    return QuadraticBilevel.generate(
        n_tasks=draw(st.integers(1, 3), label="n_tasks"),
        p=draw(st.integers(1, 5), label="p"),
        q=draw(st.integers(2, 6), label="q"),
        kappa=10.0 ** draw(st.floats(0.0, max_log_kappa), label="log10 kappa"),
        rho=draw(st.floats(0.0, 1.0), label="rho"),
        seed=draw(st.integers(0, 2**16), label="seed"),
    )


thetas_seed = st.integers(0, 2**16)
lr_fractions = st.floats(0.05, 1.0)
inner_steps = st.integers(0, 30)


def inner_hessians(problem) -> torch.Tensor:
    """The inner Hessians d2g_i/dphi2 (G_i = H_i + lam I, or A_i), float64, one per task."""
    if isinstance(problem, LinearMetaRegression):
        return problem._quadratics()[4]
    return problem._matrices()[0]


def spectrum_bounds(problem) -> tuple[float, float]:
    """(mu, L): the smallest and largest eigenvalue of the inner Hessians over all tasks."""
    eig = torch.linalg.eigvalsh(inner_hessians(problem))
    return float(eig.min()), float(eig.max())


def make_theta(problem, seed: int) -> torch.Tensor:
    return torch.randn(problem.theta_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    err = float((actual.double() - expected.double()).norm())
    scale = max(float(expected.norm()), 1e-12)
    assert err <= rel * scale, f"relative error {err / scale:.3e} > {rel:g} (|expected| = {float(expected.norm()):.3e})"


def steps_to_contract(rate: float, target: float) -> int:
    """Smallest K with (1 - rate)^K <= target, for 0 < rate <= 1."""
    if rate >= 1.0:
        return 1
    return max(1, math.ceil(math.log(target) / math.log1p(-rate)))


# ---------------------------------------------------------------------------- (a) generators
@SETTINGS
@given(data=st.data())
def test_linear_generate_has_requested_condition_number(data):
    problem = data.draw(linear_problems())
    kappa = problem.describe()["kappa"]
    cond = problem.condition_numbers()
    assert cond.shape == (problem.n_tasks,)
    torch.testing.assert_close(cond, torch.full_like(cond, kappa), rtol=1e-8, atol=0.0)
    # and the spectrum is where the generator documents it: [L/kappa, L], L = max(1, lam kappa) (lam kappa if n < d)
    mu, L = spectrum_bounds(problem)
    expected_L = problem.lam * kappa if problem.n_train < problem.dim else max(1.0, problem.lam * kappa)
    assert math.isclose(L, expected_L, rel_tol=1e-8)
    assert mu >= problem.lam * (1 - 1e-8)


@SETTINGS
@given(data=st.data())
def test_bilevel_generate_has_requested_condition_number(data):
    problem = data.draw(bilevel_problems())
    kappa = problem.describe()["kappa"]
    cond = problem.condition_numbers()
    torch.testing.assert_close(cond, torch.full_like(cond, kappa), rtol=1e-8, atol=0.0)
    mu, L = spectrum_bounds(problem)
    assert math.isclose(L, 1.0, rel_tol=1e-8) and math.isclose(mu, 1.0 / kappa, rel_tol=1e-8)


# ---------------------------------------------------------------------------- (b)-(d) unrolled = closed form
@pytest.mark.parametrize(
    "name, problems", [("maml", linear_problems), ("itd_bio", bilevel_problems)], ids=["maml-linear", "itd_bio-bilevel"]
)
@SETTINGS
@given(data=st.data(), frac=lr_fractions, steps=inner_steps, seed=thetas_seed)
def test_unrolled_equals_exact_algorithm_gradient(name, problems, data, frac, steps, seed):
    problem = data.draw(problems(), label="problem")
    lr = frac / spectrum_bounds(problem)[1]
    theta = make_theta(problem, seed)
    grad = get_algorithm(name, inner_steps=steps, inner_lr=lr).hypergradient(problem, theta).grad
    assert_rel_close(grad, problem.exact_algorithm_gradient(theta, steps, lr), 1e-9)


@pytest.mark.parametrize("problems", [linear_problems, bilevel_problems], ids=["linear", "bilevel"])
@SETTINGS
@given(data=st.data(), frac=lr_fractions, seed=thetas_seed)
def test_truncated_equals_exact_algorithm_gradient(problems, data, frac, seed):
    problem = data.draw(problems(), label="problem")
    steps = data.draw(st.integers(1, 30), label="K")
    truncate = data.draw(st.integers(1, steps), label="T")
    lr = frac / spectrum_bounds(problem)[1]
    theta = make_theta(problem, seed)
    algorithm = get_algorithm("truncated", inner_steps=steps, inner_lr=lr, truncate=truncate)
    grad = algorithm.hypergradient(problem, theta).grad
    assert_rel_close(grad, problem.exact_algorithm_gradient(theta, steps, lr, truncate=truncate), 1e-9)


# ---------------------------------------------------------------------------- (e) imaml = exact hypergradient
# kappa <= 10^2.2 ~ 160 keeps K = ceil(log(1e-14) / log(1 - 1/kappa)) <= ~5000 GD steps at inner_lr = 1/L.
MAX_LOG_KAPPA_CONVERGED = 2.2


@SETTINGS
@given(data=st.data(), seed=thetas_seed)
def test_converged_imaml_equals_exact_hypergradient(data, seed):
    problem = data.draw(linear_problems(max_log_kappa=MAX_LOG_KAPPA_CONVERGED), label="problem")
    mu, L = spectrum_bounds(problem)
    steps = steps_to_contract(mu / L, 1e-14)
    assume(steps <= 5000)
    theta = make_theta(problem, seed)
    algorithm = get_algorithm("imaml", inner_steps=steps, inner_lr=1.0 / L, cg_iters=problem.dim)
    assert_rel_close(algorithm.hypergradient(problem, theta).grad, problem.exact_hypergradient(theta), 1e-7)


@SETTINGS
@given(data=st.data(), seed=thetas_seed)
def test_converged_imaml_equals_exact_hypergradient_on_bilevel(data, seed):
    problem = data.draw(bilevel_problems(max_log_kappa=MAX_LOG_KAPPA_CONVERGED), label="problem")
    mu, L = spectrum_bounds(problem)
    steps = steps_to_contract(mu / L, 1e-14)
    assume(steps <= 5000)
    theta = make_theta(problem, seed)
    algorithm = get_algorithm("imaml", inner_steps=steps, inner_lr=1.0 / L, cg_iters=problem.q)
    assert_rel_close(algorithm.hypergradient(problem, theta).grad, problem.exact_hypergradient(theta), 1e-7)


# ---------------------------------------------------------------------------- (f) K -> infinity
@SETTINGS
@given(data=st.data(), frac=lr_fractions, seed=thetas_seed)
def test_exact_algorithm_gradient_converges_to_exact_hypergradient(data, frac, seed):
    problem = data.draw(st.one_of(linear_problems(), bilevel_problems()), label="problem")
    mu, L = spectrum_bounds(problem)
    lr = frac / L
    theta = make_theta(problem, seed)
    exact = problem.exact_hypergradient(theta)
    # the closed form costs the same for any K, so K can be in the millions (kappa = 1e4, lr = 0.05/L)
    steps = steps_to_contract(lr * mu, 1e-16)
    for k in (steps, 4 * steps, 100 * steps):
        assert_rel_close(problem.exact_algorithm_gradient(theta, k, lr), exact, 1e-8)
    # and the converged K is no farther from the limit than a single step (up to rounding)
    far = float((problem.exact_algorithm_gradient(theta, 1, lr) - exact).norm())
    near = float((problem.exact_algorithm_gradient(theta, steps, lr) - exact).norm())
    assert near <= far + 1e-10 * max(float(exact.norm()), 1e-12)

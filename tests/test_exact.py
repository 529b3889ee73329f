"""Every adapter against closed forms and independent routes, in float64 with tight tolerances."""

from __future__ import annotations

import pytest
import torch

import metabench as mb
from tests.reference import (
    central_difference,
    cg_reference,
    linear_gd_iterate,
    linear_matrices,
    linear_meta_loss_after,
    linear_outer_grad,
    rel_error,
    solve_each,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def linear():
    return mb.LinearMetaRegression.generate(n_tasks=3, dim=6, n_train=10, n_val=8, kappa=30.0, lam=0.2, seed=3)


@pytest.fixture(scope="module")
def bilevel():
    return mb.QuadraticBilevel.generate(n_tasks=3, p=4, q=6, kappa=30.0, rho=0.1, seed=4)


@pytest.fixture(scope="module")
def theta_lin(linear):
    return torch.randn(linear.theta_shape, generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.fixture(scope="module")
def theta_bil(bilevel):
    return torch.randn(bilevel.theta_shape, generator=torch.Generator().manual_seed(1), dtype=F64)


def L_of(problem):
    """Largest eigenvalue of the inner Hessians (the smoothness constant of g)."""
    A = linear_matrices(problem)[0] if problem.family == "maml" else problem._data["A"].double()
    return float(torch.linalg.eigvalsh(A).max())


# ---------------------------------------------------------------- the closed forms themselves
class TestClosedFormsAreRight:
    def test_generate_sets_kappa_exactly(self):
        for n_train in (4, 12):  # fewer and more rows than dim
            p = mb.LinearMetaRegression.generate(4, 8, n_train, 5, kappa=1e4, lam=0.3, seed=2)
            assert torch.allclose(p.condition_numbers(), torch.full((4,), 1e4, dtype=F64), rtol=1e-8)
        q = mb.QuadraticBilevel.generate(4, 3, 7, kappa=1e4, rho=0.0, seed=2)
        assert torch.allclose(q.condition_numbers(), torch.full((4,), 1e4, dtype=F64), rtol=1e-8)

    def test_generate_is_deterministic_in_seed(self):
        a = mb.LinearMetaRegression.generate(2, 4, 6, 5, kappa=10.0, lam=0.1, seed=7)
        b = mb.LinearMetaRegression.generate(2, 4, 6, 5, kappa=10.0, lam=0.1, seed=7)
        c = mb.LinearMetaRegression.generate(2, 4, 6, 5, kappa=10.0, lam=0.1, seed=8)
        assert all(torch.equal(a._data[k], b._data[k]) for k in a._data)
        assert not torch.equal(a._data["X_tr"], c._data["X_tr"])

    def test_exact_hypergradient_matches_finite_differences(self, linear, bilevel, theta_lin, theta_bil):
        # F is quadratic in theta, so central differences are exact up to rounding.
        for problem, theta in ((linear, theta_lin), (bilevel, theta_bil)):
            fd = central_difference(lambda t: problem.meta_objective(t), theta)  # noqa: B023
            assert rel_error(problem.exact_hypergradient(theta), fd) < 1e-7

    def test_linear_exact_hypergradient_is_imaml_formula(self, linear, theta_lin):
        A, b, _, _ = linear_matrices(linear)
        phi_star = solve_each(A, b + linear.lam * theta_lin)
        H = A - linear.lam * torch.eye(6, dtype=F64)
        eye = torch.eye(6, dtype=F64)
        expected = solve_each(eye + H / linear.lam, linear_outer_grad(linear, phi_star)).mean(0)
        assert rel_error(linear.exact_hypergradient(theta_lin), expected) < 1e-12

    @pytest.mark.parametrize("steps,truncate", [(0, None), (1, None), (7, None), (7, 3), (7, 1), (40, 40)])
    def test_linear_algorithm_gradient_matches_finite_differences(self, linear, theta_lin, steps, truncate):
        lr = 1.0 / L_of(linear)
        if truncate is None or truncate == steps:
            fd = central_difference(
                lambda t: linear_meta_loss_after(linear, t, lambda s: linear_gd_iterate(linear, s, steps, lr)),
                theta_lin,
            )
        else:  # phi_{K-T} held constant: differentiate only through the last T steps
            anchor = linear_gd_iterate(linear, theta_lin, steps - truncate, lr)

            def last_steps(t):
                A, b, _, _ = linear_matrices(linear)
                phi = anchor.clone()
                for _ in range(truncate):
                    phi = phi - lr * ((A @ phi.unsqueeze(-1)).squeeze(-1) - b - linear.lam * t)
                return phi

            fd = central_difference(lambda t: linear_meta_loss_after(linear, t, last_steps), theta_lin)
        exact = linear.exact_algorithm_gradient(theta_lin, steps, lr, truncate=truncate)
        assert rel_error(exact, fd) < 1e-7

    def test_bilevel_algorithm_gradient_matches_finite_differences(self, bilevel, theta_bil):
        A, B, c, t = (bilevel._data[k].double() for k in ("A", "B", "c", "t"))
        lr, steps = 1.0 / L_of(bilevel), 9
        phi0 = torch.randn(bilevel.n_tasks, bilevel.q, generator=torch.Generator().manual_seed(5), dtype=F64)

        def F_K(theta):
            phi = phi0.clone()
            for _ in range(steps):
                phi = phi - lr * ((A @ phi.unsqueeze(-1)).squeeze(-1) - B @ theta - c)
            return 0.5 * (phi - t).pow(2).sum(-1).mean() + 0.5 * bilevel.rho * theta.pow(2).sum()

        exact = bilevel.exact_algorithm_gradient(theta_bil, steps, lr, phi0=phi0)
        assert rel_error(exact, central_difference(F_K, theta_bil)) < 1e-7

    @pytest.mark.parametrize("name", ["linear", "bilevel"])
    def test_exact_optimum_is_stationary_and_minimal(self, name, request):
        problem = request.getfixturevalue(name)
        theta_star, f_star = problem.exact_optimum()
        scale = problem.exact_hypergradient(torch.zeros_like(theta_star)).norm()
        assert float(problem.exact_hypergradient(theta_star).norm()) < 1e-9 * float(scale)
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            other = theta_star + 1e-2 * torch.randn(theta_star.shape, generator=gen, dtype=F64)
            assert float(problem.meta_objective(other)) > float(f_star)

    def test_algorithm_gradient_tends_to_exact_hypergradient(self, linear, theta_lin):
        lr = 1.0 / L_of(linear)
        exact = linear.exact_hypergradient(theta_lin)
        errors = [rel_error(linear.exact_algorithm_gradient(theta_lin, k, lr), exact) for k in (10, 100, 1000, 5000)]
        # kappa = 30 at inner_lr = 1/L contracts like (1 - 1/30)^K: far from the limit at K = 10, within
        # 1e-3 at K = 100, and at float64 round-off (about 1e-14 here, which differs by BLAS) from K = 1000 on
        assert errors[0] > 0.1 and errors[1] < 1e-2 * errors[0]
        assert max(errors[2:]) < 1e-12


# ---------------------------------------------------------------- unrolled adapters
@pytest.mark.parametrize("solver_steps", [0, 1, 5, 60])
@pytest.mark.parametrize("lr_fraction", [0.3, 1.0, 1.9])
def test_maml_equals_exact_algorithm_gradient(linear, theta_lin, solver_steps, lr_fraction):
    lr = lr_fraction / L_of(linear)
    grad = mb.get_algorithm("maml", inner_steps=solver_steps, inner_lr=lr).hypergradient(linear, theta_lin).grad
    assert rel_error(grad, linear.exact_algorithm_gradient(theta_lin, solver_steps, lr)) < 1e-9


@pytest.mark.parametrize("steps,truncate", [(1, 1), (6, 1), (6, 3), (6, 6), (50, 10)])
@pytest.mark.parametrize("problem_name", ["linear", "bilevel"])
def test_truncated_equals_exact_algorithm_gradient(problem_name, steps, truncate, request):
    problem = request.getfixturevalue(problem_name)
    theta = request.getfixturevalue("theta_lin" if problem_name == "linear" else "theta_bil")
    lr = 1.0 / L_of(problem)
    alg = mb.get_algorithm("truncated", inner_steps=steps, truncate=truncate, inner_lr=lr)
    expected = problem.exact_algorithm_gradient(theta, steps, lr, truncate=truncate)
    assert rel_error(alg.hypergradient(problem, theta).grad, expected) < 1e-9


@pytest.mark.parametrize("name", ["itd_bio", "maml"])
@pytest.mark.parametrize("steps", [0, 1, 8, 80])
def test_itd_bio_equals_exact_algorithm_gradient(bilevel, theta_bil, name, steps):
    lr = 1.5 / L_of(bilevel)
    grad = mb.get_algorithm(name, inner_steps=steps, inner_lr=lr).hypergradient(bilevel, theta_bil).grad
    assert rel_error(grad, bilevel.exact_algorithm_gradient(theta_bil, steps, lr)) < 1e-9


def test_itd_bio_and_maml_agree_on_the_maml_family(linear, theta_lin):
    a = mb.get_algorithm("itd_bio", inner_steps=12, inner_lr=0.05).hypergradient(linear, theta_lin).grad
    b = mb.get_algorithm("maml", inner_steps=12, inner_lr=0.05).hypergradient(linear, theta_lin).grad
    assert torch.equal(a, b)


@pytest.mark.parametrize("steps", [0, 3, 25])
def test_fomaml_is_outer_gradient_at_phi_K(linear, theta_lin, steps):
    lr = 1.0 / L_of(linear)
    phi_K = linear_gd_iterate(linear, theta_lin, steps, lr)
    expected = linear_outer_grad(linear, phi_K).mean(0)
    result = mb.get_algorithm("fomaml", inner_steps=steps, inner_lr=lr).hypergradient(linear, theta_lin)
    assert rel_error(result.phi, phi_K) < 1e-12
    assert rel_error(result.grad, expected) < 1e-10


@pytest.mark.parametrize("momentum", [None, 0.7])
@pytest.mark.parametrize("steps", [1, 10, 40])
def test_maml_nesterov_matches_finite_differences(linear, theta_lin, momentum, steps):
    lr = 1.0 / L_of(linear)
    A, b, _, _ = linear_matrices(linear)

    def nesterov_phi(theta):
        phi = y = theta.expand_as(b).clone()
        for k in range(steps):
            nxt = y - lr * ((A @ y.unsqueeze(-1)).squeeze(-1) - b - linear.lam * theta)
            beta = momentum if momentum is not None else k / (k + 3)
            y, phi = nxt + beta * (nxt - phi), nxt
        return phi

    fd = central_difference(lambda t: linear_meta_loss_after(linear, t, nesterov_phi), theta_lin)
    alg = mb.get_algorithm("maml", inner_steps=steps, inner_lr=lr, inner_solver="nesterov", momentum=momentum)
    assert rel_error(alg.hypergradient(linear, theta_lin).grad, fd) < 1e-7


def test_nesterov_converges_faster_than_gd_on_ill_conditioned_problem():
    problem = mb.LinearMetaRegression.generate(2, 10, 20, 10, kappa=1e3, lam=1e-3, seed=0)
    theta = torch.zeros(10, dtype=F64)
    exact = problem.exact_hypergradient(theta)
    lr, kappa = 1.0 / L_of(problem), 1e3
    momentum = (kappa**0.5 - 1) / (kappa**0.5 + 1)
    gd = mb.get_algorithm("maml", inner_steps=300, inner_lr=lr).hypergradient(problem, theta).grad
    agd = mb.get_algorithm("maml", inner_steps=300, inner_lr=lr, inner_solver="nesterov", momentum=momentum)
    assert rel_error(agd.hypergradient(problem, theta).grad, exact) < 1e-3 * rel_error(gd, exact)


# ---------------------------------------------------------------- implicit adapters
@pytest.mark.parametrize("cg_iters", [1, 2, 4, 6])
def test_imaml_is_imaml_algorithm_2(linear, theta_lin, cg_iters):
    """CG from 0 on (I + H/lam) u = grad L(phi_K), per task, averaged: iMAML's Algorithm 2."""
    steps, lr = 15, 1.0 / L_of(linear)
    phi_K = linear_gd_iterate(linear, theta_lin, steps, lr)
    A, _, _, _ = linear_matrices(linear)
    eye = torch.eye(6, dtype=F64)
    rhs = linear_outer_grad(linear, phi_K)
    expected = torch.stack(
        [cg_reference(eye + (A[i] - linear.lam * eye) / linear.lam, rhs[i], cg_iters) for i in range(3)]
    ).mean(0)
    alg = mb.get_algorithm("imaml", inner_steps=steps, inner_lr=lr, cg_iters=cg_iters)
    assert rel_error(alg.hypergradient(linear, theta_lin).grad, expected) < 1e-10


@pytest.mark.parametrize("name", ["imaml", "rm_metal"])
@pytest.mark.parametrize("damping", [0.5, 3.0])
def test_damping_solves_the_damped_system(linear, theta_lin, name, damping):
    """damping delta: (H + (lam + delta) I) v = grad L(phi_K), grad = mean lam v; full CG = the dense solve."""
    steps, lr, dim = 7, 1.0 / L_of(linear), linear.phi_shape[0]
    A, _, _, _ = linear_matrices(linear)
    phi_K = linear_gd_iterate(linear, theta_lin, steps, lr)
    damped = A + damping * torch.eye(dim, dtype=F64)
    expected = (linear.lam * solve_each(damped, linear_outer_grad(linear, phi_K))).mean(0)
    options = {"inner_steps": steps, "inner_lr": lr, "cg_iters": dim}
    grad = mb.get_algorithm(name, damping=damping, **options).hypergradient(linear, theta_lin).grad
    assert rel_error(grad, expected) < 1e-8
    undamped = mb.get_algorithm(name, **options).hypergradient(linear, theta_lin).grad
    assert rel_error(undamped, expected) > 1e-3  # the option changes the system


@pytest.mark.parametrize("name", ["imaml", "rm_metal"])
@pytest.mark.parametrize("problem_name", ["linear", "bilevel"])
def test_implicit_with_full_cg_is_the_exact_solve_at_phi_K(name, problem_name, request):
    problem = request.getfixturevalue(problem_name)
    theta = request.getfixturevalue("theta_lin" if problem_name == "linear" else "theta_bil")
    dim, lr, steps = problem.phi_shape[0], 1.0 / L_of(problem), 7
    result = mb.get_algorithm(name, inner_steps=steps, inner_lr=lr, cg_iters=dim).hypergradient(problem, theta)
    if problem_name == "linear":
        A, _, _, _ = linear_matrices(problem)
        phi_K = linear_gd_iterate(problem, theta, steps, lr)
        expected = (problem.lam * solve_each(A, linear_outer_grad(problem, phi_K))).mean(0)
    else:
        A, B, t = (problem._data[k].double() for k in ("A", "B", "t"))
        v = solve_each(A, result.phi - t)
        expected = problem.rho * theta + (B.transpose(1, 2) @ v.unsqueeze(-1)).squeeze(-1).mean(0)
    assert rel_error(result.grad, expected) < 1e-8


@pytest.mark.parametrize("name", ["imaml", "rm_metal"])
@pytest.mark.parametrize("problem_name", ["linear", "bilevel"])
def test_implicit_converges_to_exact_hypergradient(name, problem_name, request):
    problem = request.getfixturevalue(problem_name)
    theta = request.getfixturevalue("theta_lin" if problem_name == "linear" else "theta_bil")
    dim = problem.phi_shape[0]
    alg = mb.get_algorithm(name, inner_steps=2000, inner_lr=1.0 / L_of(problem), cg_iters=dim)
    assert rel_error(alg.hypergradient(problem, theta).grad, problem.exact_hypergradient(theta)) < 1e-8


@pytest.mark.parametrize("problem_name", ["linear", "bilevel"])
def test_neumann_converges_to_exact_hypergradient(problem_name, request):
    problem = request.getfixturevalue(problem_name)
    theta = request.getfixturevalue("theta_lin" if problem_name == "linear" else "theta_bil")
    lr = 1.0 / L_of(problem)
    exact = problem.exact_hypergradient(theta)
    errors = [
        rel_error(
            mb.get_algorithm("neumann", inner_steps=2000, inner_lr=lr, neumann_iters=n)
            .hypergradient(problem, theta)
            .grad,
            exact,
        )
        for n in (0, 10, 100, 2000)
    ]
    # the series contracts like (1 - 1/kappa)^N: no term (N = 0) is far off, N = 100 within a few percent,
    # N = 2000 at round-off; each stage is closer than the one before by a margin far above round-off
    assert errors[0] > 0.5
    assert all(later < 0.95 * earlier for earlier, later in zip(errors[:3], errors[1:3]))
    assert errors[2] < 0.1 and errors[3] < 1e-8


def test_neumann_is_the_truncated_series(linear, theta_lin):
    steps, lr, n_terms = 10, 0.8 / L_of(linear), 6
    phi_K = linear_gd_iterate(linear, theta_lin, steps, lr)
    A, _, _, _ = linear_matrices(linear)
    b = linear_outer_grad(linear, phi_K)
    total, term = b.clone(), b.clone()
    for _ in range(n_terms):
        term = term - lr * (A @ term.unsqueeze(-1)).squeeze(-1)
        total = total + term
    expected = (linear.lam * lr * total).mean(0)  # AID on the MAML family: grad = lam v
    alg = mb.get_algorithm("neumann", inner_steps=steps, inner_lr=lr, neumann_iters=n_terms)
    assert rel_error(alg.hypergradient(linear, theta_lin).grad, expected) < 1e-10


def test_rm_metal_cold_equals_imaml(bilevel, theta_bil):
    options = dict(inner_steps=5, inner_lr=0.5, cg_iters=3)
    a = mb.get_algorithm("rm_metal", **options).hypergradient(bilevel, theta_bil).grad
    b = mb.get_algorithm("imaml", **options).hypergradient(bilevel, theta_bil).grad
    assert rel_error(a, b) < 1e-12

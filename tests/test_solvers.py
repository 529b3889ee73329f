"""The shared solver components against direct linear algebra, and how algorithms take them."""

from __future__ import annotations

import pytest
import torch

import metabench as mb
from metabench.errors import DivergenceError, SolverBreakdown
from metabench.solvers import (
    INNER_SOLVERS,
    ConjugateGradient,
    GradientDescent,
    InnerSolver,
    Nesterov,
    cg,
    conjugate_gradient,
    gradient_descent,
    make_inner_solver,
    nesterov,
    neumann,
    neumann_series,
)
from tests.reference import rel_error, solve_each

F64 = torch.float64


def spd_batch(n_tasks=3, n=8, kappa=50.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_tasks, n, n, generator=gen, dtype=F64))
    eig = torch.logspace(0, torch.log10(torch.tensor(kappa)).item(), n, dtype=F64) / kappa
    return (q * eig) @ q.transpose(1, 2), torch.randn(n_tasks, n, generator=gen, dtype=F64)


def batched(A):
    return lambda v: (A @ v.unsqueeze(-1)).squeeze(-1)


class TestConjugateGradient:
    def test_n_iterations_solve_the_system(self):
        A, b = spd_batch()
        x, matvecs = conjugate_gradient(batched(A), b, iters=8)
        assert rel_error(x, solve_each(A, b)) < 1e-10
        assert matvecs <= 8

    def test_error_in_energy_norm_decreases(self):
        A, b = spd_batch(n=12, kappa=1e3)
        exact = solve_each(A, b)
        errors = []
        for k in range(1, 13):
            e = conjugate_gradient(batched(A), b, iters=k)[0] - exact
            errors.append(float(torch.einsum("ti,tij,tj->", e, A, e)))
        # CG minimises the energy norm over growing Krylov spaces: every iteration lowers it by a margin
        # far above rounding here (by 4% or more per iteration, from ~7e3 down to ~1e1)
        assert all(later < 0.99 * earlier for earlier, later in zip(errors, errors[1:]))

    def test_warm_start_at_the_solution_costs_one_product_and_stays(self):
        A, b = spd_batch()
        exact = solve_each(A, b)
        x, matvecs = conjugate_gradient(batched(A), b, iters=5, x0=exact, tol=1e-10)
        assert matvecs == 1 and rel_error(x, exact) < 1e-12

    def test_converged_task_waits_while_others_iterate(self):
        A, b = spd_batch()
        b[1] = 0.0
        x, _ = conjugate_gradient(batched(A), b, iters=8)
        assert torch.equal(x[1], torch.zeros_like(x[1]))
        assert rel_error(x[[0, 2]], solve_each(A[[0, 2]], b[[0, 2]])) < 1e-10

    def test_tolerance_stops_early(self):
        A, b = spd_batch(kappa=2.0)
        _, matvecs = conjugate_gradient(batched(A), b, iters=8, tol=1e-3)
        assert matvecs < 8

    def test_indefinite_matrix_is_a_breakdown(self):
        A = torch.diag(torch.tensor([1.0, -1.0], dtype=F64)).unsqueeze(0)
        with pytest.raises(SolverBreakdown, match="non-positive curvature"):
            conjugate_gradient(batched(A), torch.tensor([[1.0, 1.0]], dtype=F64), iters=2)

    @pytest.mark.parametrize("tol", [1e200, -1e-3, 1.5])
    def test_tolerance_outside_0_1_is_refused_not_an_overflow(self, tol):
        A, b = spd_batch()
        with pytest.raises(ValueError, match=r"cg_tol must be a finite number in \[0, 1\]"):
            conjugate_gradient(batched(A), b, iters=3, tol=tol)
        with pytest.raises(ValueError, match="cg_tol"):
            cg(iters=3, tol=tol)


class TestNeumann:
    def test_series_tends_to_the_solution(self):
        A, b = spd_batch(kappa=10.0)
        exact = solve_each(A, b)
        errors = [rel_error(neumann_series(batched(A), b, n, lr=1.0)[0], exact) for n in (1, 10, 100, 400)]
        # contraction (1 - 1/kappa)^N = 0.9^N: 0.35 at N = 10, 3e-5 at N = 100, round-off at N = 400
        assert errors[0] > 0.5 and 0.05 < errors[1] < 0.5 and 1e-7 < errors[2] < 1e-3 and errors[3] < 1e-12

    def test_counts_products(self):
        A, b = spd_batch()
        assert neumann_series(batched(A), b, 7, lr=0.5)[1] == 7

    def test_growing_terms_are_a_divergence_not_a_result(self):
        """An indefinite H: I - lr H has an eigenvalue 1 + lr > 1, so the series would grow without bound."""
        A = torch.diag(torch.tensor([1.0, -0.5], dtype=F64)).unsqueeze(0)
        b = torch.tensor([[1.0, 1e-3]], dtype=F64)  # the growing direction starts small
        with pytest.raises(DivergenceError, match="Neumann series diverges"):
            neumann_series(batched(A), b, 200, lr=0.5)
        # lr above 2/L on an SPD matrix diverges too
        A, b = spd_batch()
        with pytest.raises(DivergenceError, match="neumann_lr >= 2/L"):
            neumann_series(batched(A), b, 50, lr=2.5)

    def test_a_converging_series_never_trips_the_growth_check(self):
        A, b = spd_batch(kappa=1e4)  # terms shrink by at most 1 - 1e-4 per product: slow, not growing
        v, _ = neumann_series(batched(A), b, 2000, lr=1.0)
        assert bool(torch.isfinite(v).all())


class TestLinearSolverComponents:
    def test_damping_solves_the_damped_system(self):
        A, b = spd_batch()
        x, info = cg(iters=8, damping=0.3).solve(batched(A), b)
        damped = A + 0.3 * torch.eye(A.shape[-1], dtype=F64)
        assert rel_error(x, solve_each(damped, b)) < 1e-10
        assert info["linear_solver_matvecs"] <= 8
        v, _ = neumann(iters=3000, lr=0.9, damping=0.1).solve(batched(A), b)
        assert rel_error(v, solve_each(A + 0.1 * torch.eye(A.shape[-1], dtype=F64), b)) < 1e-8

    def test_options_are_flat_record_fields(self):
        assert cg(iters=4, tol=1e-6, damping=2.0).options == {
            "linear_solver": "cg",
            "cg_iters": 4,
            "cg_tol": 1e-6,
            "damping": 2.0,
        }
        assert neumann(iters=3, lr=0.2).options == {
            "linear_solver": "neumann",
            "neumann_iters": 3,
            "neumann_lr": 0.2,
            "damping": 0.0,
        }
        assert cg(iters=4) == ConjugateGradient(4) and cg(iters=4) != cg(iters=5)

    @pytest.mark.parametrize(
        "factory, kwargs, match",
        [
            (cg, {"iters": -1}, "cg_iters"),
            (cg, {"damping": -1.0}, "damping"),
            (neumann, {"iters": 2.5}, "neumann_iters"),
            (neumann, {"lr": 0.0}, "neumann_lr"),
        ],
    )
    def test_bad_options_name_the_parameter(self, factory, kwargs, match):
        with pytest.raises((ValueError, TypeError), match=match):
            factory(**kwargs)


class _Quadratic:
    """g(phi) = 1/2 phi'A phi - b'phi per task, as an InnerAccess."""

    def __init__(self, A, b):
        self.A, self.b, self.grads = A, b, 0

    def grad(self, phi):
        self.grads += 1
        return (self.A @ phi.unsqueeze(-1)).squeeze(-1) - self.b

    def hvp(self, phi, u):
        return (self.A @ u.unsqueeze(-1)).squeeze(-1)


def _run(solver: InnerSolver, inner, phi0, steps):
    state = solver.init(phi0)
    for k in range(steps):
        state = solver.step(inner, k, state)
    return state[0]


class TestInnerSolvers:
    @pytest.mark.parametrize("solver", [gradient_descent(1.0), nesterov(1.0), nesterov(1.0, momentum=0.5)])
    def test_converges_to_minimiser(self, solver):
        A, b = spd_batch(kappa=10.0)
        inner = _Quadratic(A, b)
        phi = _run(solver, inner, torch.zeros_like(b), 500)
        assert rel_error(phi, solve_each(A, b)) < 1e-10
        assert inner.grads == 500  # one gradient per step, taken through the InnerAccess

    def test_gd_step_is_the_formula(self):
        A, b = spd_batch()
        phi = torch.randn_like(b)
        (step,) = gradient_descent(0.3).step(_Quadratic(A, b), 0, (phi,))
        torch.testing.assert_close(step, phi - 0.3 * ((A @ phi.unsqueeze(-1)).squeeze(-1) - b), rtol=0, atol=0)

    def test_nesterov_schedule_is_k_over_k_plus_3(self):
        A, b = spd_batch()
        inner, solver = _Quadratic(A, b), nesterov(0.5)
        phi, y = torch.randn_like(b), torch.randn_like(b)
        phi_next, y_next = solver.step(inner, 4, (phi, y))
        expected = y - 0.5 * inner.grad(y)
        torch.testing.assert_close(phi_next, expected, rtol=0, atol=0)
        torch.testing.assert_close(y_next, expected + (4 / 7) * (expected - phi), rtol=0, atol=0)

    def test_registry_and_factories(self):
        assert set(INNER_SOLVERS) == {"gd", "nesterov", "newton_cg"}
        assert make_inner_solver("gd", inner_lr=0.2, momentum=0.9) == GradientDescent(0.2)  # momentum: not GD's
        assert make_inner_solver("nesterov", inner_lr=0.2, momentum=0.9) == Nesterov(0.2, 0.9)
        with pytest.raises(ValueError, match="inner_solver must be one of"):
            make_inner_solver("adam", inner_lr=0.1)
        with pytest.raises(ValueError, match="inner_lr"):
            gradient_descent(-1.0)
        with pytest.raises(ValueError, match="momentum"):
            nesterov(0.1, momentum=1.5)


class TestAlgorithmsTakeComponents:
    def test_an_inner_solver_instance_equals_its_flat_options(self, linear_problem, linear_theta):
        flat = mb.get_algorithm("maml", inner_steps=6, inner_lr=0.05, inner_solver="nesterov", momentum=0.6)
        given = mb.get_algorithm("maml", inner_steps=6, inner_solver=nesterov(0.05, 0.6))
        a, b = flat.hypergradient(linear_problem, linear_theta), given.hypergradient(linear_problem, linear_theta)
        assert torch.equal(a.grad, b.grad) and a.counts == b.counts
        assert given.describe()["inner_solver"] == "nesterov" and given.describe()["momentum"] == 0.6

    def test_options_given_twice_are_refused(self):
        with pytest.raises(ValueError, match="inner_lr"):
            mb.get_algorithm("maml", inner_lr=0.3, inner_solver=gradient_descent(0.1))
        with pytest.raises(ValueError, match="cg_iters"):
            mb.get_algorithm("imaml", cg_iters=7, linear_solver=cg(iters=3))
        with pytest.raises(TypeError, match="LinearSolver"):
            mb.get_algorithm("imaml", linear_solver="cg")

    def test_a_linear_solver_instance_replaces_the_flat_options(self, linear_problem, linear_theta):
        flat = mb.get_algorithm("imaml", inner_steps=5, inner_lr=0.1, cg_iters=3, damping=0.5)
        given = mb.get_algorithm("imaml", inner_steps=5, inner_lr=0.1, linear_solver=cg(iters=3, damping=0.5))
        a, b = flat.hypergradient(linear_problem, linear_theta), given.hypergradient(linear_problem, linear_theta)
        assert torch.equal(a.grad, b.grad) and a.counts == b.counts
        # imaml's engine with a Neumann solver is the neumann algorithm
        series = mb.get_algorithm("imaml", inner_steps=5, inner_lr=0.1, linear_solver=neumann(iters=4, lr=0.1))
        plain = mb.get_algorithm("neumann", inner_steps=5, inner_lr=0.1, neumann_iters=4)
        torch.testing.assert_close(
            series.hypergradient(linear_problem, linear_theta).grad,
            plain.hypergradient(linear_problem, linear_theta).grad,
            rtol=1e-12,
            atol=0,
        )

    def test_maml_checkpointed_refuses_a_solver_it_cannot_recompute(self):
        class Stateful(GradientDescent):
            name = "stateful_gd"
            checkpointable = False

        with pytest.raises(ValueError, match="checkpointable"):
            mb.get_algorithm("maml_checkpointed", inner_solver=Stateful(0.1))
        mb.get_algorithm("maml", inner_solver=Stateful(0.1))  # plain maml does not recompute: fine


def test_cg_meeting_non_positive_curvature_raises_or_truncates_that_task_alone():
    from metabench.errors import SolverBreakdown
    from metabench.solvers.linear.cg import cg, conjugate_gradient

    H = torch.stack([torch.diag(torch.tensor([1.0, -1.0])), torch.tensor([[2.0, 0.5], [0.5, 1.0]])]).double()
    b = torch.ones(2, 2, dtype=torch.float64)

    def matvec(v):
        return torch.einsum("tij,tj->ti", H, v)

    with pytest.raises(SolverBreakdown, match="cg_breakdown='stop'"):
        conjugate_gradient(matvec, b, 5)
    stopped = []
    x, _ = conjugate_gradient(matvec, b, 5, on_breakdown="stop", stopped=stopped)
    assert stopped == [0] and torch.equal(x[0], torch.zeros(2, dtype=torch.float64))  # p'Hp = 1 - 1 = 0 at once
    assert float((H[1] @ x[1] - b[1]).abs().max()) < 1e-12  # the SPD task is solved (2 iterations, dimension 2)
    solver = cg(iters=5, breakdown="stop")
    _, info = solver.solve(matvec, b, None)
    assert info["cg_truncated_tasks"] == 1 and solver.options["cg_breakdown"] == "stop"
    with pytest.raises(ValueError, match="cg_breakdown must be one of"):
        cg(breakdown="ignore")
    # "continue" (iMAML's code): a negative p'Hp is divided by and CG goes on; an exactly zero one stops that task
    H2 = torch.stack([torch.diag(torch.tensor([1.0, -3.0])), torch.diag(torch.tensor([2.0, 1.0]))]).double()
    met = []
    x, _ = conjugate_gradient(lambda v: torch.einsum("tij,tj->ti", H2, v), b, 2, on_breakdown="continue", stopped=met)
    assert met == [0] and float((H2[0] @ x[0] - b[0]).abs().max()) < 1e-12  # 2 steps solve the indefinite 2x2

"""The shared solvers against direct linear algebra."""

from __future__ import annotations

import pytest
import torch

from metabench.errors import DivergenceError, SolverBreakdown
from metabench.solvers import conjugate_gradient, gradient_descent, nesterov, neumann_series, run_inner_solver
from tests.reference import rel_error

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
        assert rel_error(x, torch.linalg.solve(A, b)) < 1e-10
        assert matvecs <= 8

    def test_error_in_energy_norm_decreases(self):
        A, b = spd_batch(n=12, kappa=1e3)
        exact = torch.linalg.solve(A, b)
        errors = []
        for k in range(1, 13):
            e = conjugate_gradient(batched(A), b, iters=k)[0] - exact
            errors.append(float(torch.einsum("ti,tij,tj->", e, A, e)))
        assert all(later < earlier for earlier, later in zip(errors, errors[1:]))

    def test_warm_start_at_the_solution_costs_one_product_and_stays(self):
        A, b = spd_batch()
        exact = torch.linalg.solve(A, b)
        x, matvecs = conjugate_gradient(batched(A), b, iters=5, x0=exact, tol=1e-10)
        assert matvecs == 1 and rel_error(x, exact) < 1e-12

    def test_converged_task_waits_while_others_iterate(self):
        A, b = spd_batch()
        b[1] = 0.0
        x, _ = conjugate_gradient(batched(A), b, iters=8)
        assert torch.equal(x[1], torch.zeros_like(x[1]))
        assert rel_error(x[[0, 2]], torch.linalg.solve(A[[0, 2]], b[[0, 2]])) < 1e-10

    def test_tolerance_stops_early(self):
        A, b = spd_batch(kappa=2.0)
        _, matvecs = conjugate_gradient(batched(A), b, iters=8, tol=1e-3)
        assert matvecs < 8

    def test_indefinite_matrix_is_a_breakdown(self):
        A = torch.diag(torch.tensor([1.0, -1.0], dtype=F64)).unsqueeze(0)
        with pytest.raises(SolverBreakdown, match="non-positive curvature"):
            conjugate_gradient(batched(A), torch.tensor([[1.0, 1.0]], dtype=F64), iters=2)


class TestNeumann:
    def test_series_tends_to_the_solution(self):
        A, b = spd_batch(kappa=10.0)
        exact = torch.linalg.solve(A, b)
        errors = [rel_error(neumann_series(batched(A), b, n, lr=1.0)[0], exact) for n in (1, 10, 100, 400)]
        assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-12

    def test_counts_products(self):
        A, b = spd_batch()
        assert neumann_series(batched(A), b, 7, lr=0.5)[1] == 7


class TestInnerSolvers:
    def quadratic_grad(self, A, b):
        def grad_fn(phi, track):
            return (A @ phi.unsqueeze(-1)).squeeze(-1) - b

        return grad_fn

    @pytest.mark.parametrize("solver", [gradient_descent, nesterov])
    def test_converges_to_minimiser(self, solver):
        A, b = spd_batch(kappa=10.0)
        phi = solver(self.quadratic_grad(A, b), torch.zeros_like(b), 500, 1.0, 0)
        assert rel_error(phi, torch.linalg.solve(A, b)) < 1e-10

    @pytest.mark.parametrize("solver", [gradient_descent, nesterov])
    def test_truncation_cuts_the_path_to_phi0(self, solver):
        A, b = spd_batch()
        phi0 = torch.zeros_like(b).requires_grad_(True)
        full = solver(self.quadratic_grad(A, b), phi0, 5, 0.5, 5)
        assert full.requires_grad and torch.autograd.grad(full.sum(), phi0)[0].abs().sum() > 0
        cut = solver(self.quadratic_grad(A, b), phi0, 5, 0.5, 2)
        assert not cut.requires_grad  # this grad_fn has no other input with a graph

    def test_divergence_is_reported(self):
        A, b = spd_batch()
        with pytest.raises(DivergenceError, match="inner_lr"):
            run_inner_solver("gd", self.quadratic_grad(A, b), torch.ones_like(b), 2000, 10.0, 0)

    def test_unknown_solver(self):
        with pytest.raises(ValueError, match="inner_solver must be one of"):
            run_inner_solver("adam", None, torch.zeros(1, 1), 1, 0.1, 0)

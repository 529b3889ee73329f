"""The closed forms' dense solves are right with any thread count (batched LU is not, on some CPUs)."""

from __future__ import annotations

import pytest
import torch

from metabench import LinearMetaRegression, QuadraticBilevel
from metabench._linalg import spd_inverse, spd_solve
from tests.reference import rel_error, solve_each

F64 = torch.float64


def spd(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, n, n, generator=gen, dtype=F64)
    return A @ A.mT + n * torch.eye(n, dtype=F64)


@pytest.mark.parametrize("threads", [1, 2])
def test_spd_solve_and_inverse_with_one_or_two_threads(threads):
    """200 x 200 in a batch of 4: where batched torch.linalg.solve returned 1e16 residuals with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        A = spd(4, 200)
        b = torch.randn(4, 200, generator=torch.Generator().manual_seed(1), dtype=F64)
        x = spd_solve(A, b)
        assert float(((A @ x.unsqueeze(-1)).squeeze(-1) - b).norm() / b.norm()) < 1e-12
        B = torch.randn(4, 200, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
        assert float((A @ spd_solve(A, B) - B).norm() / B.norm()) < 1e-12
        eye = torch.eye(200, dtype=F64).expand(4, 200, 200)
        assert float((A @ spd_inverse(A) - eye).norm() / eye.norm()) < 1e-12
    finally:
        torch.set_num_threads(before)


def test_a_matrix_that_is_not_positive_definite_is_named():
    A = spd(3, 4)
    A[1] = -A[1]
    with pytest.raises(ValueError, match="task 1 is not positive definite"):
        spd_solve(A, torch.ones(3, 4, dtype=F64), "exact_hypergradient")


def test_closed_forms_at_dim_200_with_two_threads():
    """The exact hypergradients of both problems at a size where batched LU broke, against per-task solves."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        linear = LinearMetaRegression.generate(n_tasks=3, dim=200, n_train=250, n_val=20, kappa=100.0, lam=1.0, seed=0)
        theta = torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=F64)
        d = {k: v.double() for k, v in linear._data.items()}
        A = d["X_tr"].mT @ d["X_tr"] / linear.n_train + torch.eye(200, dtype=F64)
        b = torch.einsum("tnd,tn->td", d["X_tr"], d["y_tr"]) / linear.n_train
        phi = solve_each(A, b + theta)
        outer = torch.einsum("tmd,tm->td", d["X_val"], torch.einsum("tmd,td->tm", d["X_val"], phi) - d["y_val"])
        expected = solve_each(A, outer / linear.n_val).mean(0)
        assert rel_error(linear.exact_hypergradient(theta), expected) < 1e-10
        bilevel = QuadraticBilevel.generate(n_tasks=3, p=5, q=200, kappa=100.0, rho=0.1, seed=0)
        theta = torch.randn(5, generator=torch.Generator().manual_seed(4), dtype=F64)
        A, B, c, t = (bilevel._data[k] for k in ("A", "B", "c", "t"))
        phi = solve_each(A, B @ theta + c)
        expected = 0.1 * theta + torch.einsum("tij,ti->j", B, solve_each(A, phi - t)) / 3
        assert rel_error(bilevel.exact_hypergradient(theta), expected) < 1e-10
    finally:
        torch.set_num_threads(before)

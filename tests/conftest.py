"""Small shared fixtures: one generated problem of each family, in float64.

The linear problem's inner Hessians G_i = H_i + lam I have eigenvalues in [L/kappa, L] with
L = max(1, lam kappa) = 10, so GD on it is stable for inner_lr < 2/L = 0.2; the bilevel
problem's A_i have eigenvalues in [1/kappa, 1].
"""

from __future__ import annotations

import os

import pytest
import torch

from metabench import LinearMetaRegression, QuadraticBilevel


@pytest.fixture(scope="session")
def linear_problem() -> LinearMetaRegression:
    return LinearMetaRegression.generate(n_tasks=3, dim=5, n_train=8, n_val=6, kappa=20.0, lam=0.5, seed=0)


@pytest.fixture(scope="session")
def bilevel_problem() -> QuadraticBilevel:
    return QuadraticBilevel.generate(n_tasks=3, p=4, q=5, kappa=20.0, rho=0.1, seed=0)


@pytest.fixture
def linear_theta(linear_problem) -> torch.Tensor:
    """A fixed non-zero float64 theta for ``linear_problem`` (fresh per test)."""
    return torch.randn(linear_problem.theta_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture
def bilevel_theta(bilevel_problem) -> torch.Tensor:
    """A fixed non-zero float64 theta for ``bilevel_problem`` (fresh per test)."""
    return torch.randn(bilevel_problem.theta_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


#: Intra-op threads in every test: 1 by default, as the sweeps and benchmarks measure (on a shared 2-core
#: machine small ops are far slower with two); METABENCH_TEST_THREADS=2 runs the suite with two, to check
#: that no assertion depends on one BLAS reduction order.
TEST_THREADS = int(os.environ.get("METABENCH_TEST_THREADS", "1"))


@pytest.fixture(autouse=True)
def one_thread():
    """``TEST_THREADS`` intra-op threads in every test (1 unless METABENCH_TEST_THREADS says otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)

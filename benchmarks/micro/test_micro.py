"""Micro-benchmarks (pytest-benchmark) of the shared solvers and the instruments.

Run with ``nox -s pytest_benchmark``: results are saved under ``.benchmarks/`` and compared with
the last saved run. The instrument benchmarks time one hypergradient bare, under the live-tensor
tracker and under the FLOP counter, so their ratio is each instrument's overhead.
"""

import pytest
import torch

import metabench as mb
from metabench.measure import LiveTensorTracker, count_flops
from metabench.solvers import conjugate_gradient, neumann_series

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def spd():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 64, 64, generator=gen, dtype=torch.float64))
    A = (q * torch.logspace(-2, 0, 64, dtype=torch.float64)) @ q.transpose(1, 2)
    return A, torch.randn(8, 64, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def problem():
    return mb.LinearMetaRegression.generate(n_tasks=4, dim=20, n_train=40, n_val=40, kappa=100.0, lam=1.0, seed=0)


def test_conjugate_gradient_20_iterations(benchmark, spd):
    A, b = spd
    benchmark(conjugate_gradient, lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, 20)


def test_neumann_series_20_terms(benchmark, spd):
    A, b = spd
    benchmark(neumann_series, lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, 20, 1.0)


@pytest.mark.parametrize("name", ["maml", "imaml"])
@pytest.mark.parametrize("instrument", ["bare", "live_tracker", "flop_counter"])
def test_hypergradient_under_instrument(benchmark, problem, name, instrument):
    mu, L = problem.inner_hessian_bounds()
    algorithm = mb.get_algorithm(name, inner_steps=20, inner_lr=1 / L)
    theta = torch.zeros(20, dtype=torch.float64)

    def bare():
        return algorithm.hypergradient(problem, theta)

    def tracked():
        with LiveTensorTracker():
            return bare()

    run = {"bare": bare, "live_tracker": tracked, "flop_counter": lambda: count_flops(bare)}[instrument]
    benchmark.group = f"hypergradient-{name}"
    benchmark(run)

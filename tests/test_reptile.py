"""reptile: the Reptile direction (theta - phi_K)/(K alpha) exactly (float64, against the GD recursion written out
on the closed-form quadratics), counted as K inner gradients and no outer one, refused where it cannot apply, and
reported with its (large) error to the exact hypergradient: it is not a meta-gradient."""

from __future__ import annotations

import pytest
import torch

from metabench import LinearMetaRegression, QuadraticBilevel, get_algorithm
from metabench.oracle import OracleCounts
from metabench.sweep import Sweep, run_case

F64 = torch.float64


@pytest.fixture
def problem():
    return LinearMetaRegression.generate(n_tasks=3, dim=5, n_train=9, n_val=7, kappa=20.0, lam=2.0, seed=4)


@pytest.mark.parametrize("K", [1, 3, 10])
def test_reptile_is_theta_minus_phi_K_over_K_alpha(problem, K):
    theta = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(K))
    alpha = 0.05
    _, b, _, _, A = problem.quadratics()
    phi = theta.expand(3, 5).clone()
    for _ in range(K):  # g_i = 1/2 phi'H phi - b'phi + lam/2 ||phi - theta||^2: grad = A phi - b - lam theta
        phi = phi - alpha * (torch.einsum("tij,tj->ti", A, phi) - b - problem.lam * theta)
    expected = ((theta - phi) / (K * alpha)).mean(0)
    result = get_algorithm("reptile", inner_steps=K, inner_lr=alpha).hypergradient(problem, theta)
    assert float((result.grad - expected).norm()) <= 1e-12 * float(expected.norm())
    assert float((result.phi - phi).norm()) <= 1e-12 * float(phi.norm())
    assert result.counts == OracleCounts(inner_grads=3 * K)


def test_reptile_refuses_what_it_cannot_do():
    bilevel = QuadraticBilevel.generate(n_tasks=2, p=3, q=4, kappa=5.0, rho=0.5, seed=0)
    with pytest.raises(ValueError, match="reptile needs phi0 to depend on theta"):
        get_algorithm("reptile").hypergradient(bilevel, torch.zeros(bilevel.theta_shape, dtype=F64))
    with pytest.raises(ValueError, match="inner_steps >= 1"):
        get_algorithm("reptile", inner_steps=0)
    with pytest.raises(ValueError, match="step size alpha"):
        get_algorithm("reptile", inner_solver="newton_cg")


def test_reptile_records_its_error_to_the_exact_hypergradient():
    grid = {
        "problem": ["linear_meta_regression"],
        "n_tasks": [2],
        "dim": [4],
        "n_train": [8],
        "n_val": [4],
        "kappa": [10.0],
        "lam": [1.0],
        "algorithm": ["reptile"],
        "inner_steps": [5],
        "instruments": [[]],
    }
    (record,) = (run_case(c) for c in Sweep(name="reptile", grid=[grid]).cases())
    assert record["status"] == "ok", record["error"]
    assert record["outer_grads"] == 0 and record["inner_grads"] == 10
    assert record["rel_error_exact"] > 1e-3  # a different update, not a meta-gradient: its distance is reported
    assert record["rel_error_algorithm"] is None  # there is no objective it differentiates

"""Spectrum control of LinearMetaRegression.generate (iMAML Figure 2a): geometric, clustered, uniform.

CG solves G v = b exactly in as many iterations as G has distinct eigenvalues, so iMAML's Figure-2a claims
(a few CG iterations make the implicit meta-gradient exact) hold on the clustered spectrum, not on the
geometric one.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import metabench as mb
from metabench.problems._random import cluster_sizes, clustered_spectrum, condition_spectrum
from metabench.problems.linear_regression import LinearMetaRegression
from metabench.solvers import conjugate_gradient

F64 = torch.float64


def gen(**kwargs) -> LinearMetaRegression:
    base = {"n_tasks": 3, "dim": 20, "n_train": 40, "n_val": 30, "kappa": 100.0, "lam": 1.0, "seed": 0}
    return LinearMetaRegression.generate(**(base | kwargs))


def eigenvalues(problem) -> torch.Tensor:
    """Eigenvalues of every G_i = H_i + lam I, (n_tasks, dim), ascending."""
    return torch.linalg.eigvalsh(problem._quadratics()[4])


def n_clusters(values: torch.Tensor, rel: float = 1e-8) -> int:
    """The number of groups of sorted ``values`` whose neighbours lie within ``rel`` (relative) of each other."""
    v = values.sort().values
    return 1 + int(((v[1:] - v[:-1]) > rel * v[1:].abs()).sum())


def matvec_of(problem):
    A = problem._quadratics()[4]
    return lambda v: torch.einsum("tde,te->td", A, v)


def rhs(problem, seed=5) -> torch.Tensor:
    return torch.randn(problem.n_tasks, problem.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------------------- the defaults are unchanged
#: sum and sum of squares of X_tr, y_tr, X_val, y_val, recorded from the generator before ``spectrum`` existed
BEFORE = [
    (
        {"n_tasks": 3, "dim": 6, "n_train": 10, "n_val": 7, "kappa": 50.0, "lam": 0.5, "seed": 4},
        [
            (-4.583104646356055, 1279.352021536737),
            (-112.96745159155077, 2714.5839205431193),
            (-0.7855030307105832, 123.02394546402023),
            (32.884621996122576, 353.13521182800315),
        ],
    ),
    (
        {"n_tasks": 2, "dim": 8, "n_train": 3, "n_val": 5, "kappa": 100.0, "lam": 1.0, "seed": 1},
        [
            (52.270845211523635, 1053.7302284706561),
            (-6.872569984281828, 2775.754253914829),
            (-5.420916345555646, 98.00026886714905),
            (9.131767907983887, 152.07206118771936),
        ],
    ),
    (
        {"n_tasks": 2, "dim": 5, "n_train": 9, "n_val": 4, "kappa": 10.0, "lam": 0.0, "seed": 7},
        [
            (5.126259014470046, 38.815146579799425),
            (4.864819874358824, 85.03052360904495),
            (-2.501759521486803, 47.06814755258916),
            (3.8154675232713844, 129.1283169287187),
        ],
    ),
]


@pytest.mark.parametrize("kwargs, sums", BEFORE, ids=["n>d", "n<d", "lam=0"])
def test_defaults_give_the_same_tensors_as_before(kwargs, sums):
    for explicit in ({}, {"spectrum": "geometric", "distinct": None}):
        data = LinearMetaRegression.generate(**kwargs, **explicit)._data
        for key, (total, squares) in zip(("X_tr", "y_tr", "X_val", "y_val"), sums):
            t = data[key]
            assert float(t.sum()) == pytest.approx(total, rel=1e-12, abs=1e-12), key
            assert float((t * t).sum()) == pytest.approx(squares, rel=1e-12), key


def test_clustered_with_dim_values_is_the_geometric_spectrum():
    assert torch.equal(clustered_spectrum(20, 0.5, 50.0, 20), condition_spectrum(20, 0.5, 50.0))
    a, b = gen(), gen(spectrum="clustered", distinct=20)
    assert all(torch.allclose(a._data[k], b._data[k], rtol=0, atol=1e-12) for k in a._data)


def test_cluster_sizes():
    assert cluster_sizes(20, 5) == [4] * 5
    assert cluster_sizes(20, 3) == [7, 7, 6]
    assert cluster_sizes(20, 5, at_low=12) == [12, 2, 2, 2, 2]
    assert cluster_sizes(20, 4, at_low=15) == [15, 2, 2, 1]
    assert cluster_sizes(20, 4, at_low=3) == [5, 5, 5, 5]


# ---------------------------------------------------------------------------- exact kappa, distinct count
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"spectrum": "uniform"},
        {"spectrum": "clustered", "distinct": 5},
        {"spectrum": "clustered", "distinct": 2},
        {"spectrum": "clustered", "distinct": 7, "kappa": 1e6},
        {"spectrum": "clustered", "distinct": 3, "lam": 0.001},  # lam kappa < 1: L = 1, mu = 0.01 > lam
        {"spectrum": "clustered", "distinct": 4, "n_train": 6},  # n_train < dim: lam fills null(H_i)
        {"spectrum": "uniform", "n_train": 6},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default",
)
def test_exact_kappa_and_distinct_count(kwargs):
    problem = gen(**kwargs)
    kappa = kwargs.get("kappa", 100.0)
    assert torch.allclose(problem.condition_numbers(), torch.full((3,), kappa, dtype=F64), rtol=1e-9, atol=0)
    want = kwargs.get("distinct") or min(20, kwargs.get("n_train", 40) + 1)
    assert [n_clusters(e) for e in eigenvalues(problem)] == [want] * 3
    info = problem.describe()
    assert info["spectrum"] == kwargs.get("spectrum", "geometric") and info["distinct"] == kwargs.get("distinct")
    assert json.loads(json.dumps(info)) == info


def test_clustered_values_and_multiplicities():
    e = eigenvalues(gen(spectrum="clustered", distinct=5, lam=0.001))[0]  # L = 1, mu = 0.01
    expected = torch.tensor([0.01 * 100 ** (c / 4) for c in range(5)], dtype=F64).repeat_interleave(4)
    assert torch.allclose(e, expected, rtol=1e-10, atol=0)
    uniform = eigenvalues(gen(spectrum="uniform", lam=0.001))[0]
    assert torch.allclose(uniform, torch.linspace(0.01, 1.0, 20, dtype=F64), rtol=1e-10, atol=0)


def test_kappa_one_and_dim_one():
    flat = gen(kappa=1.0, spectrum="clustered", distinct=1)
    assert torch.allclose(flat.condition_numbers(), torch.ones(3, dtype=F64), rtol=1e-12)
    one = gen(dim=1, kappa=1.0, spectrum="clustered", distinct=1)
    assert one.dim == 1


# ---------------------------------------------------------------------------- CG terminates in `distinct` iterations
@pytest.mark.parametrize("distinct", [2, 3, 4, 5])
def test_cg_converges_in_exactly_distinct_iterations(distinct):
    """In float64 at kappa = 100 (measured, residual after `distinct` iterations): 1e-11 for 5 distinct values;
    rounding (lost orthogonality) then costs more: 2e-9 for 8 (8e-12 after 9), 1.5e-7 for 10 (1.8e-10 after 11)."""
    problem = gen(spectrum="clustered", distinct=distinct)
    matvec, b = matvec_of(problem), rhs(problem)
    x, used = conjugate_gradient(matvec, b, iters=200, tol=1e-10)
    assert used == distinct
    assert bool(((b - matvec(x)).norm(dim=-1) <= 1e-10 * b.norm(dim=-1)).all())
    x, used = conjugate_gradient(matvec, b, iters=distinct - 1)  # one fewer: far from solved
    assert bool(((b - matvec(x)).norm(dim=-1) > 1e-6 * b.norm(dim=-1)).all())


def test_cg_needs_many_more_iterations_on_the_geometric_spectrum():
    for spectrum in ("geometric", "uniform"):
        problem = gen(spectrum=spectrum)
        _, used = conjugate_gradient(matvec_of(problem), rhs(problem), iters=500, tol=1e-10)
        assert used >= 18, spectrum  # 20 distinct eigenvalues (kappa = 100: 1e-10 takes about dim iterations)


# ---------------------------------------------------------------------------- n_train < dim: the effective kappa
@pytest.mark.parametrize("d, n, kappa", [(20, 5, 100.0), (20, 10, 1e4), (50, 10, 1e6), (12, 11, 30.0)])
def test_effective_condition_number_on_the_range_of_H(d, n, kappa):
    """G_i restricted to range(H_i) has condition number exactly kappa^((n-1)/(d-1)), and that is what
    gradient descent from phi0 = theta sees; the whole G_i still has condition number kappa."""
    problem = gen(n_tasks=2, dim=d, n_train=n, kappa=kappa)
    lam = problem.lam
    H, b, _, _, A = problem._quadratics()
    e = torch.linalg.eigvalsh(A)
    assert torch.allclose(problem.condition_numbers(), torch.full((2,), kappa, dtype=F64), rtol=1e-8)
    assert torch.allclose(e[:, : d - n], torch.full((2, d - n), lam, dtype=F64), rtol=1e-8)  # null(H): lam
    effective = kappa ** ((n - 1) / (d - 1))
    assert torch.allclose(e[:, -1] / e[:, d - n], torch.full((2,), effective, dtype=F64), rtol=1e-8)
    assert torch.allclose(e[:, d - n] / lam, torch.full((2,), kappa ** ((d - n) / (d - 1)), dtype=F64), rtol=1e-8)
    # gradient descent at lr = 1/L from phi0 = theta: the error contracts by 1 - 1/kappa_eff, not 1 - 1/kappa
    theta = torch.randn(d, generator=torch.Generator().manual_seed(3), dtype=F64)
    L = float(e[:, -1].max())
    phi_star = problem.inner_solution(theta)
    phi = theta.expand(2, d).clone()
    e0 = (theta - phi_star).norm(dim=-1)
    errors = []
    while len(errors) < 800 and (not errors or bool((errors[-1] > 1e-7 * e0).any())):  # above float64's floor
        phi = phi - (torch.einsum("tde,te->td", A, phi) - b - lam * theta) / L
        errors.append((phi - phi_star).norm(dim=-1))
    rho = 1 - 1 / effective
    bound = rho ** torch.arange(1, len(errors) + 1, dtype=F64).unsqueeze(1) * e0
    assert bool((torch.stack(errors) <= bound * (1 + 1e-6)).all())  # ||e_k|| <= (1 - 1/kappa_eff)^k ||e_0||
    rate = (errors[-1] / errors[-11]) ** 0.1  # observed over the last 10 steps: the bound's rate is attained
    assert torch.allclose(rate, torch.full((2,), rho, dtype=F64), rtol=0, atol=0.05 * (1 - rho)), (rate, rho)
    # CG on G_i (the implicit system): lam and the n range values, at most n + 1 iterations in exact arithmetic
    if n <= 10 and kappa <= 1e4:
        _, used = conjugate_gradient(matvec_of(problem), rhs(problem), iters=500, tol=1e-10)
        assert used <= n + 1 + 4


def test_effective_condition_number_of_uniform_and_clustered_with_few_rows():
    d, n, kappa = 20, 5, 100.0
    e = eigenvalues(gen(dim=d, n_train=n, kappa=kappa, spectrum="uniform"))
    assert torch.allclose(
        e[:, -1] / e[:, d - n], torch.full((3,), kappa / (1 + (kappa - 1) * (d - n) / (d - 1)), dtype=F64)
    )
    for distinct in (2, 4, 6):
        e = eigenvalues(gen(dim=d, n_train=n, kappa=kappa, spectrum="clustered", distinct=distinct))
        want = kappa ** ((distinct - 2) / (distinct - 1))
        assert torch.allclose(e[:, -1] / e[:, d - n], torch.full((3,), want, dtype=F64), rtol=1e-8)


# ---------------------------------------------------------------------------- bad values, the parameter named
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"spectrum": "log"}, ValueError, "spectrum must be one of"),
        ({"spectrum": None}, ValueError, "spectrum"),
        ({"distinct": 5}, ValueError, "distinct applies only to spectrum='clustered'"),
        ({"spectrum": "uniform", "distinct": 20}, ValueError, "distinct applies only"),
        ({"spectrum": "clustered"}, ValueError, "needs distinct"),
        ({"spectrum": "clustered", "distinct": 0}, ValueError, r"distinct must be in \[1, 20\]"),
        ({"spectrum": "clustered", "distinct": 21}, ValueError, r"distinct must be in \[1, 20\]"),
        ({"spectrum": "clustered", "distinct": 1}, ValueError, "distinct = 1"),
        ({"spectrum": "clustered", "distinct": 3, "kappa": 1.0}, ValueError, "distinct must be 1 when kappa = 1"),
        ({"spectrum": "clustered", "distinct": 5.0}, TypeError, "distinct must be an integer"),
        ({"spectrum": "clustered", "distinct": True}, TypeError, "distinct"),
        ({"spectrum": "clustered", "distinct": 7, "n_train": 5}, ValueError, r"distinct must be in \[2, n_train \+ 1"),
    ],
)
def test_bad_spectrum_or_distinct_rejected(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gen(**kwargs)


def test_sweeps_see_the_parameters():
    from metabench.sweep.spec import _problem_params

    params = _problem_params("linear_meta_regression")
    assert params["spectrum"] == "geometric" and params["distinct"] is None


# ---------------------------------------------------------------------------- iMAML Figure 2a
def _errors(problem, theta, name, Ks, **options):
    _, L = problem.inner_hessian_bounds()
    exact = problem.exact_hypergradient(theta)
    out = []
    for K in Ks:
        grad = mb.get_algorithm(name, inner_steps=K, inner_lr=1 / L, **options).hypergradient(problem, theta).grad
        out.append(float((grad - exact).norm() / exact.norm()))
    return out


def test_imaml_figure_2a():
    """kappa = 100, dim 20, n_train 40, lam = 1 (L = 100, mu = 1), inner_lr = 1/L, 2 tasks. Measured errors at
    K = 10, 100, 300, 1000. Clustered (5 distinct eigenvalues): iMAML with 5 CG iterations has no plateau
    (0.22, 9.8e-3, 1.6e-5, 1.0e-13) and beats MAML (0.53, 1.9e-2, 3.0e-5, 1.4e-14: both at float64's floor at
    K = 1000); with 2 CG iterations it plateaus at 0.67. Geometric: the 5-CG plateau is 0.20 (MAML: 8.8e-3 at
    K = 300, 1.0e-6 at K = 1000, so there MAML overtakes iMAML-5 at large K)."""
    Ks = [10, 100, 300, 1000]
    theta = torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=F64)
    clustered = gen(n_tasks=2, spectrum="clustered", distinct=5)
    imaml5 = _errors(clustered, theta, "imaml", Ks, cg_iters=5)
    maml = _errors(clustered, theta, "maml", Ks)
    assert imaml5[-1] < 1e-6 and all(a > b for a, b in zip(imaml5, imaml5[1:]))  # keeps falling with K
    assert all(i < m for i, m in zip(imaml5, maml) if m > 1e-10)  # better than MAML at every K above rounding
    imaml2 = _errors(clustered, theta, "imaml", Ks[-2:], cg_iters=2)
    assert min(imaml2) > 1e-2 and math.isclose(imaml2[0], imaml2[1], rel_tol=1e-3)  # a plateau
    geometric = gen(n_tasks=2)
    geo5 = _errors(geometric, theta, "imaml", Ks[-2:], cg_iters=5)
    assert min(geo5) > 1e-2 and math.isclose(geo5[0], geo5[1], rel_tol=0.05)  # a plateau at ~0.2
    assert min(geo5) > 1e6 * imaml5[-1]  # orders of magnitude above the clustered spectrum's error

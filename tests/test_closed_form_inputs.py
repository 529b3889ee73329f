"""The closed-form problems on inputs at their edges: ragged tasks, empty sets, extreme kappa and lam,
and results that would overflow or come from a singular system (they raise, never return NaN)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metabench
from metabench import DivergenceError, LinearMetaRegression, QuadraticBilevel
from metabench.problems.base import BilevelProblem
from tests.reference import central_difference, linear_gd_iterate, linear_meta_loss_after

F64 = torch.float64
SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
RAGGED_SIZES = [(5, 3), (2, 7), (9, 1), (4, 4)]  # (n_i, m_i): fewer and more rows than dim = 4


def ragged_tasks(sizes=RAGGED_SIZES, dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    return [(r(n, dim), r(n), r(m, dim), r(m)) for n, m in sizes]


def rel(actual, expected) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def theta_for(problem, seed=1):
    return torch.randn(problem.theta_shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def tasks():
    return ragged_tasks()


@pytest.fixture(scope="module")
def ragged(tasks):
    return LinearMetaRegression.from_arrays(tasks, lam=0.7)


@pytest.fixture(scope="module")
def singles(tasks):
    return [LinearMetaRegression.from_arrays([task], lam=0.7) for task in tasks]


def spectrum_L(problem) -> float:
    return problem.inner_hessian_bounds()[1]


# ---------------------------------------------------------------------------- 1. truth
def test_truth_attribute():
    assert BilevelProblem.truth == "none"
    assert LinearMetaRegression.truth == "exact" and QuadraticBilevel.truth == "exact"


# ---------------------------------------------------------------------------- 2. ragged tasks
class TestRaggedTasks:
    def test_fields_and_describe(self, ragged):
        assert ragged.n_train == (5, 2, 9, 4) and ragged.n_val == (3, 7, 1, 4)
        assert ragged.train_rows == (5, 2, 9, 4) and ragged.val_rows == (3, 7, 1, 4)
        assert ragged._data["X_tr"].shape == (4, 9, 4) and ragged._data["X_val"].shape == (4, 7, 4)
        d = ragged.describe()
        assert d["n_train"] == [5, 2, 9, 4] and d["n_val"] == [3, 7, 1, 4]
        assert json.loads(json.dumps(d)) == d

    def test_equal_sizes_keep_the_scalar_path(self):
        equal = LinearMetaRegression.from_arrays(ragged_tasks([(6, 3)] * 3), lam=0.5)
        assert equal.n_train == 6 and equal.n_val == 3 and set(equal._data) == {"X_tr", "y_tr", "X_val", "y_val"}
        assert equal.describe() == {
            "problem": "linear_meta_regression",
            "n_tasks": 3,
            "dim": 4,
            "n_train": 6,
            "n_val": 3,
            "lam": 0.5,
            "source": "arrays",
        }
        gen = LinearMetaRegression.generate(n_tasks=2, dim=3, n_train=5, n_val=4, kappa=5.0, lam=0.5, seed=0)
        assert gen.n_train == 5 and gen.n_val == 4 and "train_rows" not in gen._data

    def test_only_validation_ragged(self):
        p = LinearMetaRegression.from_arrays(ragged_tasks([(6, 3), (6, 5)]), lam=0.5)
        assert p.n_train == 6 and p.n_val == (3, 5) and "train_rows" not in p._data and "val_rows" in p._data

    @pytest.mark.parametrize("subset", [None, [2, 0], [3]])
    def test_losses_are_the_per_task_losses(self, ragged, singles, subset):
        index = list(range(4)) if subset is None else subset
        theta = theta_for(ragged)
        phi = torch.randn(len(index), 4, generator=torch.Generator().manual_seed(2), dtype=F64)
        tasks = ragged.task_index(subset)
        inner = ragged.inner_loss(theta, phi, tasks)
        outer = ragged.outer_loss(theta, phi, tasks)
        for row, i in enumerate(index):
            one = torch.tensor([0])
            torch.testing.assert_close(
                inner[row], singles[i].inner_loss(theta, phi[row : row + 1], one)[0], rtol=1e-12, atol=0
            )
            torch.testing.assert_close(
                outer[row], singles[i].outer_loss(theta, phi[row : row + 1], one)[0], rtol=1e-12, atol=0
            )
            X, y, Xv, yv = ragged_tasks()[i]  # and the formula, from the raw rows
            expected = (X @ phi[row] - y).pow(2).sum() / (2 * len(y)) + 0.35 * (phi[row] - theta).pow(2).sum()
            torch.testing.assert_close(inner[row], expected, rtol=1e-13, atol=0)
            torch.testing.assert_close(
                outer[row], (Xv @ phi[row] - yv).pow(2).sum() / (2 * len(yv)), rtol=1e-13, atol=0
            )

    def test_closed_forms_are_per_task_means(self, ragged, singles):
        theta = theta_for(ragged)
        lr = 1.0 / spectrum_L(ragged)
        mean = lambda f: torch.stack([f(s) for s in singles]).mean(0)  # noqa: E731
        assert rel(ragged.exact_hypergradient(theta), mean(lambda s: s.exact_hypergradient(theta))) < 1e-12
        for K, T in ((0, None), (1, None), (12, None), (12, 5)):
            got = ragged.exact_algorithm_gradient(theta, K, lr, truncate=T)
            expected = mean(lambda s: s.exact_algorithm_gradient(theta, K, lr, truncate=T))  # noqa: B023
            assert rel(got, expected) < 1e-12, (K, T)
        assert abs(float(ragged.meta_objective(theta) - mean(lambda s: s.meta_objective(theta)))) < 1e-12 * float(
            ragged.meta_objective(theta)
        )
        assert rel(ragged.meta_hessian(), mean(lambda s: s.meta_hessian())) < 1e-12
        assert rel(ragged.inner_solution(theta), torch.cat([s.inner_solution(theta) for s in singles])) < 1e-12
        cond = torch.cat([s.condition_numbers() for s in singles])
        torch.testing.assert_close(ragged.condition_numbers(), cond, rtol=1e-12, atol=0)
        bounds = [s.inner_hessian_bounds() for s in singles]
        mu, L = ragged.inner_hessian_bounds()
        assert math.isclose(mu, min(b[0] for b in bounds), rel_tol=1e-12)
        assert math.isclose(L, max(b[1] for b in bounds), rel_tol=1e-12)
        sub = ragged.exact_hypergradient(theta, tasks=[2, 0])
        expected = (singles[2].exact_hypergradient(theta) + singles[0].exact_hypergradient(theta)) / 2
        assert rel(sub, expected) < 1e-12
        theta_star, _ = ragged.exact_optimum()
        assert float(ragged.exact_hypergradient(theta_star).norm()) < 1e-10 * float(
            ragged.exact_hypergradient(torch.zeros(4, dtype=F64)).norm()
        )

    @pytest.mark.parametrize("subset", [None, [2, 0]])
    def test_algorithms_match_the_closed_forms(self, ragged, tasks, subset):
        theta = theta_for(ragged)
        lr, K = 1.0 / spectrum_L(ragged), 15
        maml = metabench.get_algorithm("maml", inner_steps=K, inner_lr=lr).hypergradient(ragged, theta, tasks=subset)
        assert rel(maml.grad, ragged.exact_algorithm_gradient(theta, K, lr, tasks=subset)) < 1e-10
        chunked = metabench.get_algorithm("maml", inner_steps=K, inner_lr=lr, task_chunk=1)  # one task per graph
        assert rel(chunked.hypergradient(ragged, theta, tasks=subset).grad, maml.grad) < 1e-12
        imaml = metabench.get_algorithm("imaml", inner_steps=800, inner_lr=lr, cg_iters=40)
        assert (
            rel(imaml.hypergradient(ragged, theta, tasks=subset).grad, ragged.exact_hypergradient(theta, subset)) < 1e-8
        )
        # fomaml: mean_i grad L_i(phi_K,i), from the raw rows by explicit GD
        fomaml = metabench.get_algorithm("fomaml", inner_steps=K, inner_lr=lr).hypergradient(
            ragged, theta, tasks=subset
        )
        grads = []
        for i in range(4) if subset is None else subset:
            X, y, Xv, yv = tasks[i]
            phi = theta.clone()
            for _ in range(K):
                phi = phi - lr * (X.T @ (X @ phi - y) / len(y) + ragged.lam * (phi - theta))
            grads.append(Xv.T @ (Xv @ phi - yv) / len(yv))
        assert rel(fomaml.grad, torch.stack(grads).mean(0)) < 1e-10

    def test_column_mismatch_names_the_task(self):
        bad = ragged_tasks([(3, 2), (4, 2)])
        bad[1] = (torch.randn(4, 5, dtype=F64), torch.randn(4, dtype=F64), torch.randn(2, 5, dtype=F64), bad[1][3])
        with pytest.raises(ValueError, match=r"tasks\[1\]\.X_tr has 5 columns, but tasks\[0\]\.X_tr has 4"):
            LinearMetaRegression.from_arrays(bad, lam=0.5)

    def test_constructor_counts(self):
        X = torch.randn(2, 5, 3, dtype=F64)
        y = torch.randn(2, 5, dtype=F64)
        Xv, yv = torch.randn(2, 4, 3, dtype=F64), torch.randn(2, 4, dtype=F64)
        with pytest.raises(ValueError, match=r"task 0: the rows of X_tr/y_tr beyond train_rows\[0\] = 3 must be zero"):
            LinearMetaRegression(X, y, Xv, yv, lam=0.5, train_rows=[3, 5])
        with pytest.raises(ValueError, match=r"train_rows\[1\] must be an integer in \[1, 5\]"):
            LinearMetaRegression(X, y, Xv, yv, lam=0.5, train_rows=[5, 0])
        X[:, 3:], y[:, 3:] = 0.0, 0.0
        trimmed = LinearMetaRegression(X, y, Xv, yv, lam=0.5, train_rows=[3, 3])  # equal counts: padding dropped
        assert trimmed.n_train == 3 and trimmed._data["X_tr"].shape == (2, 3, 3)


# ---------------------------------------------------------------------------- 3. empty sets
@pytest.mark.parametrize("which, param", [(0, "n_train"), (2, "n_val")])
def test_empty_sets_are_refused(which, param):
    tasks = ragged_tasks([(3, 2), (4, 2)])
    task = list(tasks[1])
    task[which], task[which + 1] = task[which][:0], task[which + 1][:0]
    tasks[1] = tuple(task)
    name = "X_tr" if which == 0 else "X_val"
    with pytest.raises(ValueError, match=rf"tasks\[1\]\.{name} has 0 rows: {param} must be >= 1"):
        LinearMetaRegression.from_arrays(tasks, lam=0.5)
    with pytest.raises(ValueError, match=param):
        LinearMetaRegression.generate(
            **(dict(n_tasks=2, dim=3, n_train=4, n_val=4, kappa=5.0, lam=0.5, seed=0) | {param: 0})
        )
    X, y, Xv, yv = (torch.zeros(2, 0, 3, dtype=F64), torch.zeros(2, 0, dtype=F64), *tasks[0][2:])
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        LinearMetaRegression(X, y, Xv.expand(2, -1, -1), yv.expand(2, -1), lam=0.5)


# ---------------------------------------------------------------------------- 4. kappa range
@pytest.mark.parametrize("kappa", [1e13, 1e18])
def test_kappa_beyond_1e12_is_refused(kappa):
    with pytest.raises(ValueError, match=r"kappa must be a finite number in \[1, 1e\+12\], got .*float64 rounding"):
        LinearMetaRegression.generate(2, 5, 8, 4, kappa=kappa, lam=0.5, seed=0)
    with pytest.raises(ValueError, match=r"kappa must be a finite number in \[1, 1e\+12\]"):
        QuadraticBilevel.generate(2, 3, 5, kappa=kappa, rho=0.1, seed=0)


@pytest.mark.parametrize("n_train, lam", [(400, 0.0), (400, 1.0), (100, 0.01)])
def test_kappa_1e12_is_realised_within_one_percent(n_train, lam):
    """The docstring's claim: at the bound the realised condition number is within ~1% (dim 200)."""
    p = LinearMetaRegression.generate(2, 200, n_train, 3, kappa=1e12, lam=lam, seed=0)
    torch.testing.assert_close(p.condition_numbers(), torch.full((2,), 1e12, dtype=F64), rtol=1e-2, atol=0)
    theta = theta_for(p)
    if lam > 0:  # and the closed forms still accept it (not numerically singular)
        assert bool(torch.isfinite(p.exact_hypergradient(theta)).all())


def test_bilevel_kappa_1e12_is_realised_within_one_percent():
    q = QuadraticBilevel.generate(2, 3, 200, kappa=1e12, rho=0.1, seed=0)
    torch.testing.assert_close(q.condition_numbers(), torch.full((2,), 1e12, dtype=F64), rtol=1e-2, atol=0)
    assert bool(torch.isfinite(q.exact_hypergradient(theta_for(q))).all())


# ---------------------------------------------------------------------------- 5. overflow and singular systems
class TestFiniteOrRaise:
    def test_linear_algorithm_gradient_overflow(self, linear_problem, linear_theta):
        L = spectrum_L(linear_problem)
        msg = r"exact_algorithm_gradient overflowed: 1000 GD steps with inner_lr=.* > 2/L=.* diverge"
        with pytest.raises(DivergenceError, match=msg):
            linear_problem.exact_algorithm_gradient(linear_theta, 1000, 10.0 / L)
        lr, K = 2.5 / L, 6  # past 2/L but finite: a value, the derivative of the explicit unroll
        exact = linear_problem.exact_algorithm_gradient(linear_theta, K, lr)
        fd = central_difference(
            lambda t: linear_meta_loss_after(linear_problem, t, lambda s: linear_gd_iterate(linear_problem, s, K, lr)),
            linear_theta,
        )
        assert bool(torch.isfinite(exact).all()) and float(exact.norm()) > 10.0
        assert rel(exact, fd) < 1e-6

    def test_bilevel_algorithm_gradient_overflow(self, bilevel_problem, bilevel_theta):
        L = spectrum_L(bilevel_problem)
        with pytest.raises(DivergenceError, match=r"exact_algorithm_gradient overflowed: 2000 GD steps"):
            bilevel_problem.exact_algorithm_gradient(bilevel_theta, 2000, 5.0 / L)
        A, B, c, t = (bilevel_problem._data[k] for k in ("A", "B", "c", "t"))
        lr, K = 2.5 / L, 8

        def F_K(theta):
            phi = torch.zeros_like(c)
            for _ in range(K):
                phi = phi - lr * ((A @ phi.unsqueeze(-1)).squeeze(-1) - B @ theta - c)
            return 0.5 * (phi - t).pow(2).sum(-1).mean() + 0.5 * bilevel_problem.rho * theta.pow(2).sum()

        exact = bilevel_problem.exact_algorithm_gradient(bilevel_theta, K, lr)
        assert bool(torch.isfinite(exact).all()) and float(exact.norm()) > 10.0
        assert rel(exact, central_difference(F_K, bilevel_theta)) < 1e-6

    def test_meta_objective_overflow_is_divergence(self, linear_problem, bilevel_problem):
        for problem in (linear_problem, bilevel_problem):
            huge = torch.full(problem.theta_shape, 1e200, dtype=F64)
            with pytest.raises(DivergenceError, match="meta_objective overflowed float64: the result is not finite"):
                problem.meta_objective(huge)
            assert bool(torch.isfinite(problem.exact_hypergradient(huge)).all())  # linear in theta: finite

    def test_linear_singular_system_is_a_value_error(self):
        tasks = ragged_tasks([(2, 3), (3, 3)], dim=5)  # n_i < dim: H_i singular
        tiny = LinearMetaRegression.from_arrays(tasks, lam=1e-300)
        theta = theta_for(tiny)
        for method in ("inner_solution", "meta_objective", "exact_hypergradient", "meta_hessian"):
            args = () if method == "meta_hessian" else (theta,)
            with pytest.raises(
                ValueError, match=rf"{method} needs a nonsingular inner Hessian .* task 0's is singular"
            ):
                getattr(tiny, method)(*args)
        with pytest.raises(ValueError, match="exact_optimum needs a nonsingular"):
            tiny.exact_optimum()
        zero = LinearMetaRegression.from_arrays(tasks, lam=0.0)
        for method in ("inner_solution", "meta_objective", "exact_hypergradient"):
            with pytest.raises(ValueError, match=rf"{method} needs lam > 0"):
                getattr(zero, method)(theta)
        with pytest.raises(ValueError, match="needs lam > 0"):
            zero.meta_hessian()
        # plain MAML (lam = 0) on a singular H is legal and finite
        assert bool(torch.isfinite(zero.exact_algorithm_gradient(theta, 5, 0.1)).all())
        fine = LinearMetaRegression.from_arrays(tasks, lam=1e-6)  # small but far above rounding: a value
        assert bool(torch.isfinite(fine.exact_hypergradient(theta)).all())

    def test_bilevel_singular_system_is_a_value_error(self):
        A = torch.diag(torch.tensor([1.0, 0.5, 1e-300], dtype=F64))  # positive definite, singular in float64
        tasks = [(A, torch.randn(3, 2, dtype=F64), torch.randn(3, dtype=F64), torch.randn(3, dtype=F64))]
        q = QuadraticBilevel.from_arrays(tasks, rho=0.1)
        theta = torch.ones(2, dtype=F64)
        for call in (q.inner_solution, q.meta_objective, q.exact_hypergradient):
            with pytest.raises(ValueError, match=r"needs a nonsingular inner Hessian A_i, but task 0's is singular"):
                call(theta)
        with pytest.raises(ValueError, match="meta_hessian needs a nonsingular"):
            q.meta_hessian()


# ---------------------------------------------------------------------------- 6. extreme lam
class TestLam:
    @pytest.mark.parametrize("n_train", [3, 8])  # fewer and more rows than dim = 5
    def test_generate_refuses_overflowing_lam(self, n_train):
        with pytest.raises(ValueError, match=r"lam = 1e\+308 is too large: .*lam \* kappa = inf"):
            LinearMetaRegression.generate(2, 5, n_train, 4, kappa=10.0, lam=1e308, seed=0)
        with pytest.raises(ValueError, match=r"lam = 1e\+153 is too large"):
            LinearMetaRegression.generate(2, 5, n_train, 4, kappa=100.0, lam=1e153, seed=0)

    def test_large_legal_lam_is_finite(self):
        p = LinearMetaRegression.generate(2, 5, 3, 4, kappa=10.0, lam=1e100, seed=0)
        for value in (p.exact_hypergradient(theta_for(p)), p.meta_hessian(), p.condition_numbers()):
            assert bool(torch.isfinite(value).all())
        torch.testing.assert_close(p.condition_numbers(), torch.full((2,), 10.0, dtype=F64), rtol=1e-8, atol=0)

    def test_generate_refuses_lam_that_overflows_the_dtype(self):
        with pytest.raises(ValueError, match=r"lam = 1e\+100 is too large for dtype torch.float32"):
            LinearMetaRegression.generate(2, 5, 8, 4, kappa=10.0, lam=1e100, seed=0, dtype=torch.float32)

    @pytest.mark.parametrize("lam", [math.inf, math.nan, -1.0])
    def test_bad_lam_is_refused(self, lam):
        tasks = ragged_tasks()
        with pytest.raises(ValueError, match="lam must be a finite number"):
            LinearMetaRegression.from_arrays(tasks, lam=lam)
        X = torch.zeros(1, 2, 3, dtype=F64)
        with pytest.raises(ValueError, match="lam must be a finite number"):
            LinearMetaRegression(X, X[..., 0], X, X[..., 0], lam=lam)


# ---------------------------------------------------------------------------- hypothesis properties
@SETTINGS
@given(
    log_kappa=st.floats(0.0, 8.0),
    dim=st.integers(2, 12),
    rows=st.floats(0.3, 2.0),
    lam=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**16),
)
def test_generate_realises_kappa_up_to_1e8(log_kappa, dim, rows, lam, seed):
    kappa = 10.0**log_kappa
    n_train = max(1, round(rows * dim))
    p = LinearMetaRegression.generate(2, dim, n_train, 3, kappa=kappa, lam=lam, seed=seed)
    torch.testing.assert_close(p.condition_numbers(), torch.full((2,), kappa, dtype=F64), rtol=1e-6, atol=0)
    q = QuadraticBilevel.generate(2, 2, dim, kappa=kappa, rho=0.1, seed=seed)
    torch.testing.assert_close(q.condition_numbers(), torch.full((2,), kappa, dtype=F64), rtol=1e-6, atol=0)


@SETTINGS
@given(
    sizes=st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=4),
    dim=st.integers(1, 5),
    lam=st.floats(0.1, 5.0),
    steps=st.integers(0, 10),
    seed=st.integers(0, 2**16),
)
def test_ragged_from_arrays_is_the_per_task_mean(sizes, dim, lam, steps, seed):
    tasks = ragged_tasks(sizes, dim=dim, seed=seed)
    ragged = LinearMetaRegression.from_arrays(tasks, lam=lam)
    singles = [LinearMetaRegression.from_arrays([task], lam=lam) for task in tasks]
    theta = theta_for(ragged, seed)
    lr = 1.0 / spectrum_L(ragged)
    hyper = torch.stack([s.exact_hypergradient(theta) for s in singles]).mean(0)
    algo = torch.stack([s.exact_algorithm_gradient(theta, steps, lr) for s in singles]).mean(0)
    assert rel(ragged.exact_hypergradient(theta), hyper) < 1e-12
    assert rel(ragged.exact_algorithm_gradient(theta, steps, lr), algo) < 1e-12
    objective = torch.stack([s.meta_objective(theta) for s in singles]).mean()
    assert abs(float(ragged.meta_objective(theta) - objective)) <= 1e-12 * float(objective)

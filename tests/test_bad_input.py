"""Every bad input gives a clear ValueError/TypeError naming the parameter; divergence is a DivergenceError."""

from __future__ import annotations

import math

import pytest
import torch

import metabench
from metabench import DivergenceError, LinearMetaRegression, QuadraticBilevel, get_algorithm
from metabench.algorithms import WarmStartState

F64 = torch.float64
LINEAR_OK = dict(n_tasks=3, dim=5, n_train=8, n_val=6, kappa=20.0, lam=0.5, seed=0)
BILEVEL_OK = dict(n_tasks=3, p=4, q=5, kappa=20.0, rho=0.1, seed=0)
IMPLICIT = ["imaml", "neumann", "rm_metal"]


def case(id_, kwargs, exc, match):
    return pytest.param(kwargs, exc, match, id=id_)


@pytest.fixture(scope="module")
def lam0_problem() -> LinearMetaRegression:
    """A MAML-family problem with lam = 0 (inner objective not strongly convex by construction)."""
    return LinearMetaRegression.generate(n_tasks=3, dim=4, n_train=8, n_val=5, kappa=5.0, lam=0.0, seed=0)


def _linear_tasks(n_tasks=2, n=6, m=4, d=3, dtype=F64):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return [(r(n, d), r(n), r(m, d), r(m)) for _ in range(n_tasks)]


def _bilevel_tasks(n_tasks=2, q=3, p=2):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_tasks):
        M = torch.randn(q, q, generator=gen, dtype=F64)
        A = M @ M.T + q * torch.eye(q, dtype=F64)
        B, c, t = (torch.randn(*shape, generator=gen, dtype=F64) for shape in ((q, p), (q,), (q,)))
        out.append((A, B, c, t))
    return out


# ---------------------------------------------------------------------------- generators
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        case("lam<0", {"lam": -0.1}, ValueError, "lam"),
        case("lam-nan", {"lam": math.nan}, ValueError, "lam"),
        case("kappa<1", {"kappa": 0.5}, ValueError, "kappa"),
        case("kappa-inf", {"kappa": math.inf}, ValueError, "kappa"),
        case("kappa-str", {"kappa": "20"}, TypeError, "kappa"),
        case("n_tasks=0", {"n_tasks": 0}, ValueError, "n_tasks"),
        case("dim=0", {"dim": 0}, ValueError, "dim"),
        case("dim-float", {"dim": 5.0}, TypeError, "dim"),
        case("dim-bool", {"dim": True}, TypeError, "dim"),
        case("n_train=0", {"n_train": 0}, ValueError, "n_train"),
        case("n_val=0", {"n_val": 0}, ValueError, "n_val"),
        case("seed<0", {"seed": -1}, ValueError, "seed"),
        case("dim=1-kappa>1", {"dim": 1}, ValueError, "kappa"),
        case("n_train<dim-lam=0", {"n_train": 3, "lam": 0.0}, ValueError, "lam"),
        case("dtype-int", {"dtype": torch.int64}, TypeError, "dtype"),
        case("task_std<0", {"task_std": -1.0}, ValueError, "task_std"),
        case("noise_std<0", {"noise_std": -1.0}, ValueError, "noise_std"),
    ],
)
def test_linear_generate_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LinearMetaRegression.generate(**(LINEAR_OK | kwargs))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        case("rho<0", {"rho": -0.1}, ValueError, "rho"),
        case("kappa<1", {"kappa": 0.9}, ValueError, "kappa"),
        case("n_tasks=0", {"n_tasks": 0}, ValueError, "n_tasks"),
        case("p=0", {"p": 0}, ValueError, "p"),
        case("q=0", {"q": 0}, ValueError, "q"),
        case("p-float", {"p": 2.5}, TypeError, "p"),
        case("q=1-kappa>1", {"q": 1}, ValueError, "kappa"),
        case("seed<0", {"seed": -3}, ValueError, "seed"),
    ],
)
def test_bilevel_generate_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QuadraticBilevel.generate(**(BILEVEL_OK | kwargs))


# ---------------------------------------------------------------------------- from_arrays
def _linear_bad(kind):
    tasks = _linear_tasks()
    X, y, Xv, yv = tasks[1]
    if kind == "columns-across-tasks":  # rows may differ across tasks (ragged tasks); columns (dim) may not
        tasks[1] = (torch.randn(7, 5, dtype=F64), torch.randn(7, dtype=F64), torch.randn(Xv.shape[0], 5, dtype=F64), yv)
    elif kind == "y_tr-rows":
        tasks[0] = (tasks[0][0], torch.randn(5, dtype=F64), *tasks[0][2:])
    elif kind == "y_val-rows":
        tasks[0] = (*tasks[0][:3], torch.randn(9, dtype=F64))
    elif kind == "columns":
        tasks[0] = (tasks[0][0], tasks[0][1], torch.randn(4, 2, dtype=F64), tasks[0][3])
    elif kind == "X_tr-1d":
        tasks[0] = (torch.randn(6, dtype=F64), *tasks[0][1:])
    elif kind == "nan":
        tasks[0] = (tasks[0][0].clone().fill_(math.nan), *tasks[0][1:])
    elif kind == "int-dtype":
        tasks[0] = (tasks[0][0].to(torch.int64), *tasks[0][1:])
    elif kind == "not-a-tuple":
        tasks[0] = tasks[0][0]
    elif kind == "empty":
        tasks = []
    return tasks


@pytest.mark.parametrize(
    "kind, exc, match",
    [
        pytest.param("columns-across-tasks", ValueError, r"tasks\[1\]\.X_tr has .* columns", id="columns-across-tasks"),
        pytest.param("y_tr-rows", ValueError, r"tasks\[0\].*y_tr", id="y_tr-rows"),
        pytest.param("y_val-rows", ValueError, r"tasks\[0\].*y_val", id="y_val-rows"),
        pytest.param("columns", ValueError, r"tasks\[0\].*columns", id="columns"),
        pytest.param("X_tr-1d", ValueError, r"tasks\[0\].*X_tr", id="X_tr-1d"),
        pytest.param("nan", ValueError, r"tasks\[0\]\.X_tr", id="nan"),
        pytest.param("int-dtype", TypeError, r"tasks\[0\]\.X_tr", id="int-dtype"),
        pytest.param("not-a-tuple", ValueError, r"tasks\[0\]", id="not-a-tuple"),
        pytest.param("empty", ValueError, "tasks", id="empty"),
    ],
)
def test_linear_from_arrays_rejects(kind, exc, match):
    with pytest.raises(exc, match=match):
        LinearMetaRegression.from_arrays(_linear_bad(kind), lam=0.5)


def test_linear_from_arrays_rejects_negative_lam():
    with pytest.raises(ValueError, match="lam"):
        LinearMetaRegression.from_arrays(_linear_tasks(), lam=-1.0)


def test_linear_from_arrays_accepts_good_input():
    problem = LinearMetaRegression.from_arrays(_linear_tasks(), lam=0.5)
    assert (problem.n_tasks, problem.n_train, problem.dim, problem.n_val) == (2, 6, 3, 4)


def _bilevel_bad(kind):
    tasks = _bilevel_tasks()
    A, B, c, t = tasks[0]
    if kind == "non-symmetric":
        A = A.clone()
        A[0, 1] += 1.0
    elif kind == "not-pd":
        A = -A
    elif kind == "singular":
        A = torch.zeros_like(A)
    elif kind == "A-shape":
        A = torch.eye(4, dtype=F64)
    elif kind == "c-shape":
        c = torch.randn(4, dtype=F64)
    elif kind == "B-1d":
        B = torch.randn(3, dtype=F64)
    elif kind == "shape-across-tasks":
        tasks[1] = (tasks[1][0], torch.randn(3, 5, dtype=F64), *tasks[1][2:])
    elif kind == "inf":
        t = t.clone().fill_(math.inf)
    elif kind == "empty":
        return []
    tasks[0] = (A, B, c, t)
    return tasks


@pytest.mark.parametrize(
    "kind, exc, match",
    [
        pytest.param("non-symmetric", ValueError, r"tasks\[0\]\.A.*symmetric", id="non-symmetric-A"),
        pytest.param("not-pd", ValueError, r"tasks\[0\]\.A.*positive definite", id="negative-definite-A"),
        pytest.param("singular", ValueError, r"tasks\[0\]\.A.*positive definite", id="singular-A"),
        pytest.param("A-shape", ValueError, r"tasks\[0\]\.A.*shape", id="A-shape"),
        pytest.param("c-shape", ValueError, r"tasks\[0\]\.c.*shape", id="c-shape"),
        pytest.param("B-1d", ValueError, r"tasks\[0\]\.B", id="B-1d"),
        pytest.param("shape-across-tasks", ValueError, r"tasks\[1\]\.B.*same shapes", id="shape-across-tasks"),
        pytest.param("inf", ValueError, r"tasks\[0\]\.t", id="inf"),
        pytest.param("empty", ValueError, "tasks", id="empty"),
    ],
)
def test_bilevel_from_arrays_rejects(kind, exc, match):
    with pytest.raises(exc, match=match):
        QuadraticBilevel.from_arrays(_bilevel_bad(kind), rho=0.1)


def test_bilevel_from_arrays_rejects_negative_rho():
    with pytest.raises(ValueError, match="rho"):
        QuadraticBilevel.from_arrays(_bilevel_tasks(), rho=-0.5)


# ---------------------------------------------------------------------------- algorithm options
@pytest.mark.parametrize(
    "name, options, exc, match",
    [
        pytest.param("maml", {"inner_steps": -1}, ValueError, "inner_steps", id="inner_steps<0"),
        pytest.param("imaml", {"task_chunk": 0}, ValueError, "task_chunk", id="task_chunk=0"),
        pytest.param("imaml", {"damping": -1.0}, ValueError, "damping", id="damping<0"),
        pytest.param("maml", {"task_chunk": 1.5}, TypeError, "task_chunk", id="task_chunk-float"),
        pytest.param("maml", {"inner_steps": 2.5}, TypeError, "inner_steps", id="inner_steps-float"),
        pytest.param("imaml", {"inner_steps": None}, TypeError, "inner_steps", id="inner_steps-None"),
        pytest.param("maml", {"inner_lr": 0.0}, ValueError, "inner_lr", id="inner_lr=0"),
        pytest.param("maml", {"inner_lr": -0.1}, ValueError, "inner_lr", id="inner_lr<0"),
        pytest.param("imaml", {"inner_lr": math.nan}, ValueError, "inner_lr", id="inner_lr-nan"),
        pytest.param("neumann", {"inner_lr": math.inf}, ValueError, "inner_lr", id="inner_lr-inf"),
        pytest.param("maml", {"inner_lr": "0.1"}, TypeError, "inner_lr", id="inner_lr-str"),
        pytest.param("maml", {"inner_solver": "adam"}, ValueError, "inner_solver", id="inner_solver-adam"),
        pytest.param("rm_metal", {"inner_solver": None}, ValueError, "inner_solver", id="inner_solver-None"),
        pytest.param("maml", {"momentum": 1.5}, ValueError, "momentum", id="momentum>1"),
        pytest.param("truncated", {"truncate": 0}, ValueError, "truncate", id="truncate=0"),
        pytest.param("truncated", {"truncate": -2}, ValueError, "truncate", id="truncate<0"),
        pytest.param("truncated", {"inner_steps": 4, "truncate": 5}, ValueError, "truncate", id="truncate>K"),
        pytest.param("truncated", {"inner_steps": 0}, ValueError, "truncate", id="truncate-with-K=0"),
        pytest.param("truncated", {"truncate": 2.0}, TypeError, "truncate", id="truncate-float"),
        pytest.param("imaml", {"cg_iters": -1}, ValueError, "cg_iters", id="cg_iters<0"),
        pytest.param("rm_metal", {"cg_iters": -1}, ValueError, "cg_iters", id="rm_metal-cg_iters<0"),
        pytest.param("imaml", {"cg_tol": -1e-3}, ValueError, "cg_tol", id="cg_tol<0"),
        pytest.param("neumann", {"neumann_iters": -1}, ValueError, "neumann_iters", id="neumann_iters<0"),
        pytest.param("neumann", {"neumann_lr": 0.0}, ValueError, "neumann_lr", id="neumann_lr=0"),
        pytest.param("rm_metal", {"warm_phi": "yes"}, TypeError, "warm_phi", id="warm_phi-str"),
        pytest.param("rm_metal", {"warm_v": 1}, TypeError, "warm_v", id="warm_v-int"),
    ],
)
def test_bad_option_values(name, options, exc, match):
    with pytest.raises(exc, match=match):
        get_algorithm(name, **options)


def test_unhashable_inner_solver_names_parameter():
    with pytest.raises((ValueError, TypeError), match="inner_solver"):
        get_algorithm("maml", inner_solver=["gd"])


def test_unknown_algorithm_lists_available():
    with pytest.raises(ValueError, match="unknown algorithm 'mamll'") as info:
        get_algorithm("mamll")
    for name in metabench.available_algorithms():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["maml", "imaml", "truncated", "rm_metal"])
def test_unknown_option_lists_accepted(name):
    with pytest.raises(TypeError, match="unknown option") as info:
        get_algorithm(name, inner_stepz=3)
    message = str(info.value)
    assert "inner_stepz" in message
    for option in get_algorithm(name).options:
        assert option in message


def test_option_meant_for_another_algorithm_is_unknown():
    with pytest.raises(TypeError, match="cg_iters"):
        get_algorithm("maml", cg_iters=3)


# ---------------------------------------------------------------------------- exact_algorithm_gradient
@pytest.mark.parametrize("which", ["linear", "bilevel"])
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        case("truncate=0", {"truncate": 0}, ValueError, "truncate"),
        case("truncate>K", {"truncate": 6}, ValueError, "truncate"),
        case("truncate-float", {"truncate": 1.5}, TypeError, "truncate"),
        case("inner_steps<0", {"inner_steps": -1}, ValueError, "inner_steps"),
        case("inner_lr=0", {"inner_lr": 0.0}, ValueError, "inner_lr"),
        case("inner_lr-nan", {"inner_lr": math.nan}, ValueError, "inner_lr"),
    ],
)
def test_exact_algorithm_gradient_rejects(which, kwargs, exc, match, linear_problem, bilevel_problem):
    problem = linear_problem if which == "linear" else bilevel_problem
    theta = torch.zeros(problem.theta_shape, dtype=F64)
    call = {"inner_steps": 5, "inner_lr": 0.05} | kwargs
    with pytest.raises(exc, match=match):
        problem.exact_algorithm_gradient(theta, **call)


def test_exact_algorithm_gradient_rejects_bad_phi0(bilevel_problem):
    theta = torch.zeros(bilevel_problem.theta_shape, dtype=F64)
    with pytest.raises(ValueError, match="phi0"):
        bilevel_problem.exact_algorithm_gradient(theta, 5, 0.1, phi0=torch.zeros(7, dtype=F64))
    with pytest.raises(ValueError, match="phi0"):
        bilevel_problem.exact_algorithm_gradient(theta, 5, 0.1, phi0=torch.full((5,), math.nan, dtype=F64))


# ---------------------------------------------------------------------------- theta and tasks
def _bad_theta(kind, shape):
    if kind == "nan":
        t = torch.zeros(shape, dtype=F64)
        t[0] = math.nan
        return t
    if kind == "inf":
        t = torch.zeros(shape, dtype=F64)
        t[-1] = -math.inf
        return t
    if kind == "wrong-shape":
        return torch.zeros(shape[0] + 1, dtype=F64)
    if kind == "2-d":
        return torch.zeros(1, *shape, dtype=F64)
    if kind == "int-dtype":
        return torch.zeros(shape, dtype=torch.int64)
    if kind == "list":
        return [0.0] * shape[0]
    raise AssertionError(kind)


THETA_CASES = [
    pytest.param("nan", ValueError, "theta.*finite", id="nan"),
    pytest.param("inf", ValueError, "theta.*finite", id="inf"),
    pytest.param("wrong-shape", ValueError, "theta.*shape", id="wrong-shape"),
    pytest.param("2-d", ValueError, "theta.*shape", id="2-d"),
    pytest.param("int-dtype", TypeError, "theta.*floating", id="int-dtype"),
    pytest.param("list", TypeError, "theta.*torch.Tensor", id="list"),
]


@pytest.mark.parametrize("which", ["linear", "bilevel"])
@pytest.mark.parametrize("name", ["itd_bio", "imaml"])
@pytest.mark.parametrize("kind, exc, match", THETA_CASES)
def test_bad_theta(kind, exc, match, name, which, linear_problem, bilevel_problem):
    problem = linear_problem if which == "linear" else bilevel_problem
    with pytest.raises(exc, match=match):
        get_algorithm(name, inner_steps=3).hypergradient(problem, _bad_theta(kind, problem.theta_shape))


@pytest.mark.parametrize("kind, exc, match", THETA_CASES)
def test_bad_theta_closed_forms(kind, exc, match, linear_problem):
    theta = _bad_theta(kind, linear_problem.theta_shape)
    with pytest.raises(exc, match=match):
        linear_problem.exact_hypergradient(theta)
    with pytest.raises(exc, match=match):
        linear_problem.exact_algorithm_gradient(theta, 3, 0.1)


def test_problem_must_be_a_bilevel_problem(linear_theta):
    with pytest.raises(TypeError, match="problem"):
        get_algorithm("maml").hypergradient("linear", linear_theta)


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param([3], id="too-large"),
        pytest.param([0, 5], id="one-too-large"),
        pytest.param([-1], id="negative"),
        pytest.param([], id="empty"),
        pytest.param([0.0, 1.0], id="float"),
        pytest.param(1.0, id="float-scalar"),
        pytest.param([[0, 1]], id="2-d"),
        pytest.param([True, False], id="bool"),
        pytest.param(torch.tensor([], dtype=torch.long), id="empty-tensor"),
    ],
)
@pytest.mark.parametrize("name", ["maml", "rm_metal"])
def test_bad_tasks(tasks, name, linear_problem, linear_theta):
    with pytest.raises(ValueError, match="tasks"):
        get_algorithm(name, inner_steps=2).hypergradient(linear_problem, linear_theta, tasks=tasks)


@pytest.mark.parametrize("tasks", [pytest.param("0", id="str"), pytest.param({0, 1}, id="set")])
def test_non_sequence_tasks_name_the_parameter(tasks, linear_problem, linear_theta):
    with pytest.raises((ValueError, TypeError), match="tasks"):
        get_algorithm("maml", inner_steps=2).hypergradient(linear_problem, linear_theta, tasks=tasks)


def test_bad_tasks_closed_forms(linear_problem, bilevel_problem):
    with pytest.raises(ValueError, match="tasks"):
        linear_problem.exact_hypergradient(torch.zeros(5, dtype=F64), tasks=[7])
    with pytest.raises(ValueError, match="tasks"):
        bilevel_problem.exact_algorithm_gradient(torch.zeros(4, dtype=F64), 3, 0.1, tasks=[])


# ---------------------------------------------------------------------------- refusals by design
@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_refuses_lam_zero(name, lam0_problem):
    theta = torch.zeros(lam0_problem.theta_shape, dtype=F64)
    with pytest.raises(ValueError, match="lam") as info:
        get_algorithm(name, inner_steps=3, inner_lr=0.1).hypergradient(lam0_problem, theta)
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["maml", "itd_bio", "fomaml"])
def test_unrolled_accepts_lam_zero(name, lam0_problem):
    theta = torch.zeros(lam0_problem.theta_shape, dtype=F64)
    grad = get_algorithm(name, inner_steps=3, inner_lr=0.1).hypergradient(lam0_problem, theta).grad
    assert torch.isfinite(grad).all()


def test_fomaml_refuses_bilevel_family(bilevel_problem, bilevel_theta):
    with pytest.raises(ValueError, match="fomaml.*phi0"):
        get_algorithm("fomaml").hypergradient(bilevel_problem, bilevel_theta)


def test_truncated_refuses_lam_zero_with_truncation(lam0_problem):
    theta = torch.zeros(lam0_problem.theta_shape, dtype=F64)
    with pytest.raises(ValueError, match="lam = 0"):
        get_algorithm("truncated", inner_steps=6, truncate=3, inner_lr=0.1).hypergradient(lam0_problem, theta)
    # T = K is full back-prop, which is fine with lam = 0.
    full = get_algorithm("truncated", inner_steps=6, truncate=6, inner_lr=0.1).hypergradient(lam0_problem, theta)
    maml = get_algorithm("maml", inner_steps=6, inner_lr=0.1).hypergradient(lam0_problem, theta)
    torch.testing.assert_close(full.grad, maml.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["maml", "truncated", "fomaml", "itd_bio", "imaml", "neumann"])
def test_state_to_stateless_algorithm(name, linear_problem, linear_theta):
    state = get_algorithm("rm_metal", inner_steps=2).hypergradient(linear_problem, linear_theta).state
    with pytest.raises(ValueError, match="stateless.*state"):
        get_algorithm(name, inner_steps=6).hypergradient(linear_problem, linear_theta, state=state)


def _warm_state(n_tasks, dim):
    zeros = torch.zeros(n_tasks, dim, dtype=F64)
    return WarmStartState(phi=zeros, v=zeros, seen=torch.ones(n_tasks, dtype=torch.bool))


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"phi": 0}, id="dict"),
        pytest.param(torch.zeros(3, 5, dtype=F64), id="tensor"),
        pytest.param(_warm_state(2, 5), id="wrong-n_tasks"),
        pytest.param(_warm_state(3, 4), id="wrong-phi-shape"),
    ],
)
def test_rm_metal_rejects_foreign_state(state, linear_problem, linear_theta):
    with pytest.raises(ValueError, match="state"):
        get_algorithm("rm_metal", inner_steps=2).hypergradient(linear_problem, linear_theta, state=state)


def test_rm_metal_rejects_state_of_problem_with_other_n_tasks(linear_problem):
    other = LinearMetaRegression.generate(n_tasks=2, dim=5, n_train=8, n_val=6, kappa=20.0, lam=0.5, seed=1)
    state = get_algorithm("rm_metal", inner_steps=2).hypergradient(other, torch.zeros(5, dtype=F64)).state
    with pytest.raises(ValueError, match="state"):
        get_algorithm("rm_metal", inner_steps=2).hypergradient(linear_problem, torch.zeros(5, dtype=F64), state=state)


# ---------------------------------------------------------------------------- train
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        case("optimizer-unknown", {"optimizer": "rmsprop"}, ValueError, "optimizer"),
        case("optimizer-case", {"optimizer": "SGD"}, ValueError, "optimizer"),
        case("outer_steps<0", {"outer_steps": -1}, ValueError, "outer_steps"),
        case("outer_steps-float", {"outer_steps": 2.0}, TypeError, "outer_steps"),
        case("outer_lr=0", {"outer_lr": 0.0}, ValueError, "outer_lr"),
        case("outer_lr<0", {"outer_lr": -0.1}, ValueError, "outer_lr"),
        case("outer_lr-nan", {"outer_lr": math.nan}, ValueError, "outer_lr"),
        case("algorithm-unknown", {"algorithm": "anil_v2"}, ValueError, "unknown algorithm"),
        case("algorithm-not-algorithm", {"algorithm": 42}, TypeError, "algorithm"),
        case("unknown-option", {"inner_stepz": 3}, TypeError, "inner_stepz"),
        case("theta0-nan", {"theta0": torch.full((5,), math.nan, dtype=F64)}, ValueError, "theta"),
        case("theta0-shape", {"theta0": torch.zeros(4, dtype=F64)}, ValueError, "theta"),
    ],
)
def test_train_rejects(kwargs, exc, match, linear_problem):
    call = {"algorithm": "maml", "theta0": torch.zeros(5, dtype=F64), "outer_steps": 2, "outer_lr": 0.1} | kwargs
    with pytest.raises(exc, match=match):
        metabench.train(linear_problem, **call)


def test_train_rejects_options_with_instance(linear_problem):
    with pytest.raises(TypeError, match="options"):
        metabench.train(linear_problem, get_algorithm("maml"), torch.zeros(5, dtype=F64), 2, 0.1, inner_steps=3)


# ---------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("solver", ["gd", "nesterov"])
@pytest.mark.parametrize("name", ["fomaml", "imaml", "itd_bio", "maml", "neumann", "rm_metal", "truncated"])
def test_diverging_inner_lr_raises_divergence_error(name, solver, linear_problem, linear_theta):
    algorithm = get_algorithm(name, inner_steps=500, inner_lr=5.0, inner_solver=solver)  # 5.0 >> 2/L = 0.2
    with pytest.raises(DivergenceError, match="diverged|non-finite"):
        algorithm.hypergradient(linear_problem, linear_theta)


@pytest.mark.parametrize("name", ["itd_bio", "truncated", "neumann", "imaml", "rm_metal"])
def test_diverging_inner_lr_raises_on_bilevel(name, bilevel_problem, bilevel_theta):
    with pytest.raises(DivergenceError):
        # |1 - 5 a| <= 4 for the eigenvalues a in [1/20, 1]: 4^1000 overflows float64.
        get_algorithm(name, inner_steps=1000, inner_lr=5.0).hypergradient(bilevel_problem, bilevel_theta)


def test_divergence_error_is_not_value_error():
    assert issubclass(DivergenceError, metabench.MetabenchError)
    assert not issubclass(DivergenceError, ValueError)


@pytest.mark.parametrize(
    "name, which, steps, dtype",
    [
        pytest.param("imaml", "linear", 100, torch.float64, id="imaml-linear-float64"),
        pytest.param("rm_metal", "linear", 100, torch.float64, id="rm_metal-linear-float64"),
        pytest.param("imaml", "bilevel", 500, torch.float64, id="imaml-bilevel-float64"),
        pytest.param("imaml", "linear", 20, torch.float32, id="imaml-linear-float32"),
    ],
)
def test_diverged_but_finite_phi_is_not_a_silent_zero(name, which, steps, dtype, linear_problem, bilevel_problem):
    problem = linear_problem if which == "linear" else bilevel_problem
    theta = torch.ones(problem.theta_shape, dtype=dtype)
    with pytest.raises(DivergenceError):
        get_algorithm(name, inner_steps=steps, inner_lr=5.0).hypergradient(problem, theta)

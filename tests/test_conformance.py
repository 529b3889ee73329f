"""Conformance of every registered algorithm to the one interface, on both problem families.

Parametrized over ``available_algorithms()`` x {linear_meta_regression, quadratic_bilevel} x
{float32, float64}; a combination an algorithm refuses by design (its ``check_problem`` raises
ValueError, e.g. fomaml on the bilevel family) is skipped with the refusal's message.
"""

from __future__ import annotations

import pytest
import torch

import metabench
from metabench import Hypergradient, LinearMetaRegression, OracleCounts, QuadraticBilevel, get_algorithm
from metabench.algorithms import Algorithm, WarmStartState, register
from metabench.algorithms.unrolled import UnrolledAlgorithm
from metabench.solvers import ConjugateGradient, GradientDescent

ALGORITHMS = metabench.available_algorithms()
PROBLEMS = {"linear_meta_regression": "linear_problem", "quadratic_bilevel": "bilevel_problem"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

K, T, CG, NEUMANN = 7, 3, 3, 4  # CG < dim = q = 5, so CG never converges early
OPTIONS = {
    "truncated": {"truncate": T},
    "imaml": {"cg_iters": CG},
    "rm_metal": {"cg_iters": CG},
    "neumann": {"neumann_iters": NEUMANN},
}
INNER_LR = {"linear_meta_regression": 0.1, "quadratic_bilevel": 0.5}  # 1/L and 1/(2L)
REFUSED = {  # refused by design
    ("fomaml", "quadratic_bilevel"),
    ("reptile", "quadratic_bilevel"),
    ("anil", "quadratic_bilevel"),
}


def make_algorithm(name: str, problem_name: str, **extra) -> Algorithm:
    options = {"inner_steps": K, "inner_lr": INNER_LR[problem_name]} | OPTIONS.get(name, {}) | extra
    return get_algorithm(name, **options)


def make_theta(problem, dtype=torch.float64, seed=1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(problem.theta_shape, generator=gen, dtype=torch.float64).to(dtype)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def skip_if_refused(algorithm: Algorithm, problem) -> None:
    try:
        algorithm.check_problem(problem)
    except ValueError as err:
        pytest.skip(str(err))


def _params(with_dtype: bool):
    out = []
    for name in ALGORITHMS:
        for problem_name in PROBLEMS:
            if with_dtype:
                out += [pytest.param(name, problem_name, d, id=f"{name}-{problem_name}-{d}") for d in DTYPES]
            else:
                out.append(pytest.param(name, problem_name, id=f"{name}-{problem_name}"))
    return out


@pytest.fixture
def case(request, name, problem_name, dtype):
    """(algorithm, problem, theta) for one combination, skipped when refused by design."""
    problem = request.getfixturevalue(PROBLEMS[problem_name])
    algorithm = make_algorithm(name, problem_name)
    skip_if_refused(algorithm, problem)
    return algorithm, problem, make_theta(problem, DTYPES[dtype])


ALL = pytest.mark.parametrize("name, problem_name, dtype", _params(with_dtype=True))


# ---------------------------------------------------------------------------- the result
@ALL
def test_result_types_shapes_and_dtypes(case):
    algorithm, problem, theta = case
    hg = algorithm.hypergradient(problem, theta)
    assert isinstance(hg, Hypergradient)
    assert hg.grad.shape == theta.shape
    assert hg.grad.dtype == theta.dtype
    assert hg.grad.device == theta.device
    assert not hg.grad.requires_grad
    assert bool(torch.isfinite(hg.grad).all())
    assert hg.phi.shape == (problem.n_tasks, *problem.phi_shape)
    assert hg.phi.dtype == theta.dtype
    assert bool(torch.isfinite(hg.phi).all())
    assert torch.equal(hg.tasks, torch.arange(problem.n_tasks))
    assert isinstance(hg.counts, OracleCounts)
    for value in hg.counts.as_tuple():
        assert type(value) is int and value >= 0
    assert hg.counts.outer_grads == (problem.n_tasks if algorithm.is_hypergradient else 0)  # reptile: no query loss
    if algorithm.stateful:
        assert isinstance(hg.state, WarmStartState)
    else:
        assert hg.state is None


@ALL
def test_deterministic(case):
    algorithm, problem, theta = case
    first = algorithm.hypergradient(problem, theta)
    second = algorithm.hypergradient(problem, theta)
    assert torch.equal(first.grad, second.grad)
    assert torch.equal(first.phi, second.phi)
    assert first.counts == second.counts


@ALL
def test_task_subset_is_mean_of_single_tasks(case, dtype):
    algorithm, problem, theta = case
    both = algorithm.hypergradient(problem, theta, tasks=[0, 2])
    one = algorithm.hypergradient(problem, theta, tasks=[0])
    other = algorithm.hypergradient(problem, theta, tasks=[2])
    tol = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-6)}[dtype]
    torch.testing.assert_close(both.grad, (one.grad + other.grad) / 2, **tol)
    assert both.phi.shape == (2, *problem.phi_shape)
    torch.testing.assert_close(both.phi, torch.cat([one.phi, other.phi]), **tol)
    assert torch.equal(both.tasks, torch.tensor([0, 2]))
    # and the rows of the all-task call
    full = algorithm.hypergradient(problem, theta)
    torch.testing.assert_close(both.phi, full.phi[[0, 2]], **tol)
    # oracle counts are linear in the number of tasks
    assert both.counts == one.counts + other.counts


@ALL
@pytest.mark.parametrize("chunk", [1, 2])
def test_task_chunks_give_the_one_graph_result(case, dtype, chunk):
    """task_chunk only changes how many tasks share a graph: grad, phi, counts and state are the same."""
    algorithm, problem, theta = case
    whole = algorithm.hypergradient(problem, theta)
    chunked = get_algorithm(algorithm.name, **{**algorithm.options, "task_chunk": chunk}).hypergradient(problem, theta)
    tol = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=1e-5, atol=1e-6)}[dtype]
    torch.testing.assert_close(chunked.grad, whole.grad, **tol)
    torch.testing.assert_close(chunked.phi, whole.phi, **tol)
    assert chunked.counts == whole.counts
    assert whole.info["task_chunk"] == problem.n_tasks and chunked.info["task_chunk"] == chunk
    if algorithm.stateful:  # the state is threaded through the chunks: the next call's start is the same
        for field in ("phi", "v", "seen"):
            torch.testing.assert_close(getattr(chunked.state, field), getattr(whole.state, field), **tol)


@ALL
def test_theta_is_not_modified_and_gets_no_grad(case):
    algorithm, problem, theta = case
    theta = theta.clone().requires_grad_(True)
    before = theta.detach().clone()
    algorithm.hypergradient(problem, theta)
    assert theta.grad is None
    assert theta.requires_grad and theta.is_leaf
    assert torch.equal(theta.detach(), before)
    plain = before.clone()
    algorithm.hypergradient(problem, plain)
    assert not plain.requires_grad and plain.grad is None
    assert torch.equal(plain, before)


# ---------------------------------------------------------------------------- float32 vs float64
@pytest.fixture(scope="module")
def well_conditioned():
    return {
        "linear_meta_regression": LinearMetaRegression.generate(
            n_tasks=3, dim=5, n_train=8, n_val=6, kappa=5.0, lam=0.5, seed=3
        ),
        "quadratic_bilevel": QuadraticBilevel.generate(n_tasks=3, p=4, q=5, kappa=5.0, rho=0.1, seed=3),
    }


@pytest.mark.parametrize("name, problem_name", _params(with_dtype=False))
def test_float32_close_to_float64(name, problem_name, well_conditioned):
    problem = well_conditioned[problem_name]
    algorithm = make_algorithm(name, problem_name, inner_lr=0.5 if problem_name == "quadratic_bilevel" else 0.2)
    skip_if_refused(algorithm, problem)
    theta = make_theta(problem)
    g64 = algorithm.hypergradient(problem, theta).grad
    g32 = algorithm.hypergradient(problem, theta.float()).grad
    assert g32.dtype == torch.float32
    assert rel_l2(g32, g64) < 1e-3


# ---------------------------------------------------------------------------- refusals
def test_refusals_are_exactly_the_designed_ones(linear_problem, bilevel_problem):
    problems = {"linear_meta_regression": linear_problem, "quadratic_bilevel": bilevel_problem}
    refused = set()
    for name in ALGORITHMS:
        for problem_name, problem in problems.items():
            try:
                make_algorithm(name, problem_name).check_problem(problem)
            except ValueError:
                refused.add((name, problem_name))
    assert refused == REFUSED & {(n, p) for n in ALGORITHMS for p in PROBLEMS}


# ---------------------------------------------------------------------------- oracle counts
@pytest.fixture(params=list(PROBLEMS), ids=list(PROBLEMS))
def problem_name(request):
    return request.param


@pytest.fixture(params=[None, [1, 2]], ids=["all-tasks", "tasks-1-2"])
def tasks(request):
    return request.param


#: What each algorithm is defined to cost per task, as oracle calls (n tasks; K, T, CG, NEUMANN as above).
#: The oracle counts what the algorithm performs; this table is the definition it must meet.
DEFINED = {
    "maml": lambda n: OracleCounts(inner_grads=n * K, outer_grads=n, hvps=n * K),
    "anil": lambda n: OracleCounts(inner_grads=n * K, outer_grads=n, hvps=n * K),  # maml on the head
    "itd_bio": lambda n: OracleCounts(inner_grads=n * K, outer_grads=n, hvps=n * K),
    "truncated": lambda n: OracleCounts(inner_grads=n * K, outer_grads=n, hvps=n * T),
    "fomaml": lambda n: OracleCounts(inner_grads=n * K, outer_grads=n),
    "reptile": lambda n: OracleCounts(inner_grads=n * K),
    # the forward pass, then every segment but the last (kept with its graph from the forward pass) recomputed
    # once during the backward pass: segments of C = round(sqrt K), the last one L = K - C floor((K - 1)/C) long
    "maml_checkpointed": lambda n: OracleCounts(
        inner_grads=n * (2 * K - (K - round(K**0.5) * ((K - 1) // round(K**0.5)))), outer_grads=n, hvps=n * K
    ),
    # K inner steps + the gradient at phi_K whose graph the products differentiate; one cross product
    "imaml": lambda n: OracleCounts(inner_grads=n * (K + 1), outer_grads=n, hvps=n * CG, jvps=n),
    "rm_metal": lambda n: OracleCounts(inner_grads=n * (K + 1), outer_grads=n, hvps=n * CG, jvps=n),
    "neumann": lambda n: OracleCounts(inner_grads=n * (K + 1), outer_grads=n, hvps=n * NEUMANN, jvps=n),
}


def _counts(name, problem_name, request, tasks, **extra):
    problem = request.getfixturevalue(PROBLEMS[problem_name])
    algorithm = make_algorithm(name, problem_name, **extra)
    skip_if_refused(algorithm, problem)
    theta = make_theta(problem)
    n = problem.n_tasks if tasks is None else len(tasks)
    return algorithm.hypergradient(problem, theta, tasks=tasks).counts, n


@pytest.mark.parametrize("inner_solver", ["gd", "nesterov"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_counted_calls_equal_the_definition(name, inner_solver, problem_name, tasks, request):
    """Every registered algorithm, both families, GD and Nesterov inner loops: the oracle's count of what the
    call performed equals the algorithm's definition. A new algorithm needs its line in DEFINED."""
    assert name in DEFINED, f"{name} has no oracle-call definition in tests/test_conformance.py DEFINED: add one"
    counts, n = _counts(name, problem_name, request, tasks, inner_solver=inner_solver)
    assert counts == DEFINED[name](n)


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_counts_do_not_depend_on_the_task_chunk(name, chunk, problem_name, request):
    counts, n = _counts(name, problem_name, request, None, task_chunk=chunk)
    assert counts == DEFINED[name](n)


class _CGTwice(ConjugateGradient):
    """CG that wastes one Hessian-vector product per iteration (and declares nothing)."""

    def _solve(self, matvec, b, x0):
        return super()._solve(lambda u: (matvec(u), matvec(u))[1], b, x0)


class _NewtonProbe(GradientDescent):
    """A GD step that also takes one Hessian-vector product per step through the InnerAccess (as Newton-CG would)."""

    name = "newton_probe"

    def step(self, inner, k, state):
        (phi,) = state
        inner.hvp(phi, torch.ones_like(phi))
        return (phi - self.lr * inner.grad(phi),)


def test_extra_products_show_in_the_counts_without_being_declared(linear_problem):
    theta, n = make_theta(linear_problem), linear_problem.n_tasks
    base = {"inner_steps": K, "inner_lr": 0.1}
    wasteful_cg = get_algorithm("imaml", **base, linear_solver=_CGTwice(iters=CG))
    assert wasteful_cg.hypergradient(linear_problem, theta).counts == OracleCounts(
        inner_grads=n * (K + 1), outer_grads=n, hvps=2 * n * CG, jvps=n
    )
    # an inner solver's Hessian-vector products: one linearisation (inner gradient + product) per step
    probing = get_algorithm("imaml", inner_steps=K, cg_iters=CG, inner_solver=_NewtonProbe(0.1))
    assert probing.hypergradient(linear_problem, theta).counts == OracleCounts(
        inner_grads=n * (2 * K + 1), outer_grads=n, hvps=n * (K + CG), jvps=n
    )

    class ExtraOuter(metabench.algorithms.imaml.IMAML):  # not registered: the counts need no registry either
        name = "imaml_with_an_extra_outer_gradient"

        def _compute(self, oracle, theta, state):
            out = super()._compute(oracle, theta, state)
            oracle.outer_grad(theta, out.phi, wrt=(out.phi.requires_grad_(True),))
            return out

    extra = ExtraOuter(**base, cg_iters=CG).hypergradient(linear_problem, theta)
    assert extra.counts == OracleCounts(inner_grads=n * (K + 1), outer_grads=2 * n, hvps=n * CG, jvps=n)


def test_backward_through_the_inner_loop_is_counted_when_it_happens(linear_problem):
    """maml's HVPs are counted by the backward pass itself: a loop whose steps are never back-propagated
    (theta does not reach f through them) performs and counts none."""
    theta, n = make_theta(linear_problem), linear_problem.n_tasks
    maml = get_algorithm("maml", inner_steps=K, inner_lr=0.1)
    assert maml.hypergradient(linear_problem, theta).counts.hvps == n * K
    truncated = get_algorithm("truncated", inner_steps=K, inner_lr=0.1, truncate=1)
    assert truncated.hypergradient(linear_problem, theta).counts.hvps == n


def test_counts_rm_metal_cold_then_warm(problem_name, tasks, request):
    problem = request.getfixturevalue(PROBLEMS[problem_name])
    algorithm = make_algorithm("rm_metal", problem_name)
    theta = make_theta(problem)
    n = problem.n_tasks if tasks is None else len(tasks)
    cold = algorithm.hypergradient(problem, theta, tasks=tasks)
    assert cold.counts == OracleCounts(inner_grads=n * (K + 1), outer_grads=n, hvps=n * CG, jvps=n)
    warm = algorithm.hypergradient(problem, theta, tasks=tasks, state=cold.state)
    # one extra product for the initial residual b - H v0
    assert warm.counts == OracleCounts(inner_grads=n * (K + 1), outer_grads=n, hvps=n * (CG + 1), jvps=n)
    assert isinstance(warm.state, WarmStartState)


def test_counts_rm_metal_without_warm_v_has_no_extra_product(linear_problem):
    algorithm = make_algorithm("rm_metal", "linear_meta_regression", warm_v=False)
    theta = make_theta(linear_problem)
    state = algorithm.hypergradient(linear_problem, theta).state
    counts = algorithm.hypergradient(linear_problem, theta, state=state).counts
    assert counts.hvps == linear_problem.n_tasks * CG


def test_counts_add():
    a, b = OracleCounts(1, 2, 3, 4), OracleCounts(10, 20, 30, 40)
    assert a + b == OracleCounts(11, 22, 33, 44)
    assert (a + b).as_dict() == {"inner_grads": 11, "outer_grads": 22, "hvps": 33, "jvps": 44}
    assert OracleCounts() == OracleCounts(0, 0, 0, 0)


# ---------------------------------------------------------------------------- rm_metal state
def test_rm_metal_state_marks_seen_tasks(linear_problem):
    algorithm = make_algorithm("rm_metal", "linear_meta_regression")
    theta = make_theta(linear_problem)
    first = algorithm.hypergradient(linear_problem, theta, tasks=[1])
    assert first.state.seen.tolist() == [False, True, False]
    torch.testing.assert_close(first.state.phi[1], first.phi[0], rtol=0, atol=0)
    second = algorithm.hypergradient(linear_problem, theta, tasks=[0, 1], state=first.state)
    assert second.state.seen.tolist() == [True, True, False]
    assert first.state.seen.tolist() == [False, True, False]  # the old state is not mutated


# ---------------------------------------------------------------------------- aliasing
@pytest.mark.parametrize("name", ["fomaml", "imaml", "itd_bio", "maml", "neumann", "rm_metal"])
def test_phi_does_not_alias_theta_with_zero_inner_steps(name, linear_problem):
    theta = make_theta(linear_problem)
    hg = get_algorithm(name, inner_steps=0).hypergradient(linear_problem, theta)
    phi_before = hg.phi.clone()
    theta.add_(1.0)  # e.g. an optimizer step
    assert torch.equal(hg.phi, phi_before)


# ---------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", ALGORITHMS)
def test_get_algorithm_defaults_and_repr(name):
    algorithm = get_algorithm(name)
    assert isinstance(algorithm, Algorithm)
    assert algorithm.name == name
    assert set(algorithm.options) == set(type(algorithm).options_spec)
    text = repr(algorithm)
    assert text.startswith(f"{name}(")
    for key, value in algorithm.options.items():
        assert f"{key}={value!r}" in text
        assert getattr(algorithm, key) == value
    custom = get_algorithm(name, inner_steps=12, inner_lr=0.05)
    assert "inner_steps=12" in repr(custom) and "inner_lr=0.05" in repr(custom)


def test_available_algorithms_is_sorted_and_complete():
    assert ALGORITHMS == sorted(ALGORITHMS)
    assert {"fomaml", "imaml", "itd_bio", "maml", "neumann", "rm_metal", "truncated"} <= set(ALGORITHMS)


def test_register_rejects_non_algorithm():
    with pytest.raises(TypeError, match="Algorithm"):
        register(int)
    with pytest.raises(TypeError, match="Algorithm"):
        register(get_algorithm("maml"))  # an instance, not a class


def test_register_rejects_duplicate_name():
    before = type(get_algorithm("maml"))

    class Impostor(UnrolledAlgorithm):
        name = "maml"

    with pytest.raises(ValueError, match="'maml'.*already registered"):
        register(Impostor)
    assert type(get_algorithm("maml")) is before
    assert register(before) is before  # re-registering the same class is a no-op
    assert metabench.available_algorithms() == ALGORITHMS

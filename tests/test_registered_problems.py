"""The conformance suite over every registered problem: built-in ones and every installed plugin's.

Each problem's small instance (``conformance_params``, else ``generate``'s defaults) must keep the contract
(``metabench.problems.contract``), be deterministic in its seed, and every algorithm that accepts it must return a
finite meta-gradient of theta's shape in float32 and float64 with its oracle calls counted; where the problem has a
truth, the float64 error of an algorithm to the derivative of what it ran (maml, itd_bio: back-prop through K GD
steps) must be at round-off. A plugin gets the same checks by being installed (CI installs ``examples/plugin``);
the example plugin's problem is checked here as if it were, through ``tests/plugin_env.py``.
"""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms import available_algorithms, get_algorithm
from metabench.evaluate import evaluate
from metabench.problems.contract import check_contract
from metabench.problems.registry import PROBLEMS
from tests import plugin_env

DTYPES = (torch.float64, torch.float32)
K, LR = 3, 0.05
EXAMPLE = "logistic_hyperparameters"


def _instance(name: str, dtype: torch.dtype, seed: int = 0):
    cls = PROBLEMS.get(name)
    return cls.generate(**dict(cls.conformance_params), seed=seed, dtype=dtype)


def _theta(problem) -> torch.Tensor:
    initial = getattr(problem, "initial_theta", None)
    if callable(initial):
        return initial()
    gen = torch.Generator().manual_seed(1)
    return (0.3 * torch.randn(problem.theta_shape, generator=gen, dtype=torch.float64)).to(problem.dtype)


def _options(name: str) -> dict:
    return {"inner_steps": K, "inner_lr": LR} | ({"truncate": 2} if name == "truncated" else {})


@pytest.fixture(params=[*PROBLEMS.names(), *([] if EXAMPLE in PROBLEMS.names() else [EXAMPLE])])
def problem_name(request, tmp_path):
    if request.param == EXAMPLE and EXAMPLE not in PROBLEMS.names():
        with plugin_env.installed(tmp_path):  # not installed here: check it as if it were
            yield request.param
    else:
        yield request.param


def test_every_registered_problem_keeps_the_contract_and_is_deterministic(problem_name):
    for dtype in DTYPES:
        problem = _instance(problem_name, dtype)
        check_contract(problem, problem_name)
        assert problem.dtype == dtype
        again, theta = _instance(problem_name, dtype), _theta(problem)
        index = problem.task_index(None)
        phi = problem.inner_init(theta, index)
        assert torch.equal(problem.inner_loss(theta, phi, index), again.inner_loss(theta, phi, index))
        assert isinstance(problem.describe(), dict) and problem.describe()


def test_every_algorithm_that_takes_a_registered_problem_gives_a_finite_counted_meta_gradient(problem_name):
    ran = 0
    for dtype in DTYPES:
        problem = _instance(problem_name, dtype)
        theta = _theta(problem)
        for name in available_algorithms():
            algorithm = get_algorithm(name, **_options(name))
            try:
                algorithm.check_problem(problem)
            except ValueError:
                continue  # refused by design, with its reason
            result = algorithm.hypergradient(problem, theta)
            assert result.grad.shape == theta.shape and bool(torch.isfinite(result.grad).all()), name
            assert result.counts.inner_grads >= problem.n_tasks * K, name  # every inner step of every task counted
            ran += 1
    assert ran >= 4  # at least two algorithms apply in both precisions


def test_where_a_registered_problem_has_a_truth_the_unrolled_algorithms_match_it_at_round_off(problem_name):
    problem = _instance(problem_name, torch.float64)
    if getattr(problem, "truth", "none") == "none":
        pytest.skip(f"{problem_name} has no truth to judge against")
    theta = _theta(problem)
    judged = 0
    for name in ("maml", "itd_bio"):
        algorithm = get_algorithm(name, **_options(name))
        try:
            algorithm.check_problem(problem)
        except ValueError:
            continue
        result = algorithm.hypergradient(problem, theta)
        judged_record = evaluate(problem, algorithm, theta, result.tasks, result.grad)
        error = judged_record.get("rel_error_algorithm")  # to the exact or float64 derivative of K GD steps
        assert error is not None and error < 1e-9, (name, judged_record.get("truth_status"))
        judged += 1
    assert judged >= 1

"""maml_checkpointed: maml's meta-gradient to rounding, O(sqrt(K)) memory, honest oracle counts."""

from __future__ import annotations

import gc
import math

import pytest
import torch

import metabench as mb
from metabench.errors import DivergenceError
from metabench.measure.memory import LiveTensorTracker
from metabench.problems import FewShotClassification
from tests.reference import rel_error

F64 = torch.float64
STEPS = [1, 2, 7, 20, 50]
EVERY = [None, 1, 3, "K"]


@pytest.fixture(scope="module")
def problems():
    return {
        "linear": mb.LinearMetaRegression.generate(n_tasks=3, dim=6, n_train=10, n_val=8, kappa=30.0, lam=0.2, seed=3),
        "bilevel": mb.QuadraticBilevel.generate(n_tasks=3, p=4, q=6, kappa=30.0, rho=0.1, seed=4),
    }


def theta_for(problem, dtype=F64, seed=0):
    return torch.randn(problem.theta_shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def lr_for(problem):
    return 1.0 / problem.inner_hessian_bounds()[1]


def both(problem, theta, **options):
    """(maml, maml_checkpointed) results with the same options."""
    every = options.pop("checkpoint_every", None)
    plain = mb.get_algorithm("maml", **options).hypergradient(problem, theta)
    ckpt = mb.get_algorithm("maml_checkpointed", checkpoint_every=every, **options).hypergradient(problem, theta)
    return plain, ckpt


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("every", EVERY)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("solver", ["gd", "nesterov"])
@pytest.mark.parametrize("name", ["linear", "bilevel"])
def test_equals_maml_to_float64_rounding(problems, name, solver, steps, every):
    problem = problems[name]
    theta, lr = theta_for(problem), lr_for(problem)
    every = steps if every == "K" else every
    plain, ckpt = both(problem, theta, inner_steps=steps, inner_lr=lr, inner_solver=solver, checkpoint_every=every)
    assert rel_error(ckpt.grad, plain.grad) < 1e-12
    assert rel_error(ckpt.phi, plain.phi) < 1e-12
    if solver == "gd":  # the closed form of what K GD steps + full back-prop compute
        assert rel_error(ckpt.grad, problem.exact_algorithm_gradient(theta, steps, lr)) < 1e-9


@pytest.mark.parametrize("name", ["linear", "bilevel"])
def test_nesterov_constant_momentum_and_long_segments(problems, name):
    problem = problems[name]
    theta, lr = theta_for(problem, seed=2), lr_for(problem)
    for every in (4, 13, 100):  # C does not divide K; C > K (one segment)
        plain, ckpt = both(
            problem, theta, inner_steps=13, inner_lr=lr, inner_solver="nesterov", momentum=0.7, checkpoint_every=every
        )
        assert rel_error(ckpt.grad, plain.grad) < 1e-12


def test_zero_steps_is_maml(problems):
    problem = problems["linear"]
    theta = theta_for(problem)
    plain, ckpt = both(problem, theta, inner_steps=0)
    assert torch.equal(ckpt.grad, plain.grad) and torch.equal(ckpt.phi, plain.phi)
    assert ckpt.counts == plain.counts
    theta.add_(1.0)  # phi does not alias theta
    assert torch.equal(ckpt.phi, plain.phi)


@pytest.mark.parametrize("name", ["linear", "bilevel"])
@pytest.mark.parametrize("solver", ["gd", "nesterov"])
def test_float32_runs_and_agrees_with_maml(problems, name, solver):
    problem = problems[name]
    theta, lr = theta_for(problem, torch.float32), lr_for(problem)
    plain, ckpt = both(problem, theta, inner_steps=9, inner_lr=lr, inner_solver=solver)
    assert ckpt.grad.dtype == torch.float32 and ckpt.phi.dtype == torch.float32
    assert rel_error(ckpt.grad.double(), plain.grad.double()) < 1e-5
    exact64 = mb.get_algorithm("maml", inner_steps=9, inner_lr=lr, inner_solver=solver).hypergradient(
        problem, theta.double()
    )
    assert rel_error(ckpt.grad.double(), exact64.grad) < 1e-4


# ---------------------------------------------------------------- counts and options
@pytest.mark.parametrize("name", ["linear", "bilevel"])
@pytest.mark.parametrize("tasks", [None, [0, 2]])
@pytest.mark.parametrize("solver", ["gd", "nesterov"])
def test_counts_are_the_oracle_calls_made(problems, name, tasks, solver, monkeypatch):
    problem = problems[name]
    n, K = (problem.n_tasks if tasks is None else len(tasks)), 7
    calls = []
    inner_loss = problem.inner_loss
    monkeypatch.setattr(problem, "inner_loss", lambda *a, **k: calls.append(1) or inner_loss(*a, **k))
    alg = mb.get_algorithm("maml_checkpointed", inner_steps=K, inner_lr=lr_for(problem), inner_solver=solver)
    hg = alg.hypergradient(problem, theta_for(problem), tasks=tasks)
    # forward K, then every segment but the last (run with its graph in the forward pass) recomputed: 3 + 3 of 3+3+1
    assert hg.counts == mb.OracleCounts(inner_grads=n * (K + 6), outer_grads=n, hvps=n * K, jvps=0)
    assert len(calls) * n == hg.counts.inner_grads
    assert hg.info == {
        "backprop_steps": K,
        "schedule": "sqrt",
        "checkpoint_every": 3,
        "segments": 3,
        "recompute_factor": 13 / 7,
        "stored_states": 2,
        "task_chunk": n,
        "features": None,
        "compile": "off",
        "compile_s": None,
    }


@pytest.mark.parametrize("steps,expected", [(0, 1), (1, 1), (2, 1), (3, 2), (7, 3), (20, 4), (50, 7), (100, 10)])
def test_default_segment_length_is_rounded_sqrt(steps, expected):
    assert mb.get_algorithm("maml_checkpointed", inner_steps=steps).segment_length() == expected
    assert mb.get_algorithm("maml_checkpointed", inner_steps=steps, checkpoint_every=5).segment_length() == 5


@pytest.mark.parametrize(
    "bad,error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("3", TypeError), (True, TypeError)]
)
def test_bad_checkpoint_every_is_refused_by_name(bad, error):
    with pytest.raises(error, match="checkpoint_every"):
        mb.get_algorithm("maml_checkpointed", checkpoint_every=bad)


def test_registered_and_differentiates_the_gd_objective():
    assert "maml_checkpointed" in mb.available_algorithms()
    alg = mb.get_algorithm("maml_checkpointed", inner_steps=6, inner_lr=0.1)
    assert alg.differentiated_objective() == {"inner_steps": 6, "inner_lr": 0.1, "truncate": 6}
    assert "checkpoint_every=None" in repr(alg)


def test_divergence_is_reported(problems):
    problem = problems["linear"]
    alg = mb.get_algorithm("maml_checkpointed", inner_steps=3000, inner_lr=3.0 * lr_for(problem))
    with pytest.raises(DivergenceError, match="diverged"):
        alg.hypergradient(problem, theta_for(problem))


# ---------------------------------------------------------------- memory
@pytest.fixture(scope="module")
def wide():
    """Per-step activations (residuals over n_train rows) dominate the state phi (dim entries)."""
    return mb.LinearMetaRegression.generate(n_tasks=4, dim=200, n_train=400, n_val=50, kappa=10.0, lam=1.0, seed=0)


def peak_bytes(problem, name, steps):
    alg = mb.get_algorithm(name, inner_steps=steps, inner_lr=lr_for(problem))
    theta = torch.zeros(problem.theta_shape, dtype=F64)
    alg.hypergradient(problem, theta)  # problem data converted and cached outside the measured block
    gc.collect()
    with LiveTensorTracker() as tracker:
        alg.hypergradient(problem, theta)
    return tracker.peak_bytes


def test_peak_memory_grows_sublinearly(wide):
    ratio = {k: peak_bytes(wide, "maml_checkpointed", k) / peak_bytes(wide, "maml", k) for k in (20, 50)}
    assert ratio[20] <= 0.5
    assert ratio[50] < ratio[20]
    assert peak_bytes(wide, "maml_checkpointed", 20) == peak_bytes(wide, "maml_checkpointed", 20)  # deterministic


# ---------------------------------------------------------------- checkpoint schedules
SCHEDULES = [
    {"schedule": "every_step"},
    {"schedule": "revolve"},
    {"schedule": "revolve", "snapshots": 1},
    {"schedule": "revolve", "snapshots": 3},
    {"schedule": "revolve", "snapshot_memory": 200.0},
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "-".join(f"{v}" for v in s.values()))
@pytest.mark.parametrize("steps", [1, 2, 5, 13])
@pytest.mark.parametrize("solver", ["gd", "nesterov"])
@pytest.mark.parametrize("name", ["linear", "bilevel"])
def test_every_schedule_equals_maml_to_float64_rounding(problems, name, solver, steps, schedule):
    problem = problems[name]
    theta, lr = theta_for(problem), lr_for(problem)
    plain = mb.get_algorithm("maml", inner_steps=steps, inner_lr=lr, inner_solver=solver).hypergradient(problem, theta)
    alg = mb.get_algorithm("maml_checkpointed", inner_steps=steps, inner_lr=lr, inner_solver=solver, **schedule)
    ckpt = alg.hypergradient(problem, theta)
    assert rel_error(ckpt.grad, plain.grad) < 1e-12
    assert rel_error(ckpt.phi, plain.phi) < 1e-13
    n = problem.n_tasks
    assert ckpt.counts.hvps == plain.counts.hvps == n * steps  # every step back-propagated once
    assert ckpt.counts.inner_grads == round(ckpt.info["recompute_factor"] * steps) * n
    assert ckpt.info["schedule"] == schedule["schedule"]


def test_revolve_stores_its_snapshots_and_recomputes_more_with_fewer():
    problem = mb.LinearMetaRegression.generate(n_tasks=1, dim=6, n_train=10, n_val=8, kappa=30.0, lam=0.2, seed=3)
    theta, lr = theta_for(problem), lr_for(problem)
    info = {}
    for s in (1, 2, 4):
        alg = mb.get_algorithm("maml_checkpointed", inner_steps=40, inner_lr=lr, schedule="revolve", snapshots=s)
        info[s] = alg.hypergradient(problem, theta).info
        assert info[s]["snapshots"] == s and info[s]["stored_states"] <= s
    assert info[1]["recompute_factor"] > info[2]["recompute_factor"] > info[4]["recompute_factor"] > 1.0
    # one state is 6 float64 = 48 bytes: a 100-byte budget holds 2
    budget = mb.get_algorithm(
        "maml_checkpointed", inner_steps=40, inner_lr=lr, schedule="revolve", snapshot_memory=100.0
    )
    assert budget.hypergradient(problem, theta).info["snapshots"] == 2


def _forward_steps(actions) -> int:
    from checkpoint_schedules import EndReverse, Forward

    steps = 0
    for action in actions:
        if isinstance(action, Forward):
            steps += action.n1 - action.n0
        if isinstance(action, EndReverse):
            return steps
    raise AssertionError("the schedule has no EndReverse")


def _binomial_optimum(K: int, s: int) -> int:
    """Griewank's fewest inner steps run (forward and recomputed) to reverse K steps with s snapshots:
    (t + 1) K - C(s + t, t - 1), t the least with C(s + t, s) >= K."""
    t = 0
    while math.comb(s + t, s) < K:
        t += 1
    return (t + 1) * K - math.comb(s + t, t - 1) if t else K


def test_revolve_schedule_runs_the_binomial_optimum_as_checkpoint_schedules_revolve_does():
    """The multistage generator (no disk) is binomial checkpointing: the same step count as the package's Revolve
    (which takes minutes to list its actions at K = 10,000) and Griewank's closed form, up to K = 10,000."""
    from checkpoint_schedules import Revolve

    from metabench.algorithms.checkpoint_schedule import build_schedule

    for K in range(1, 31):
        for s in range(1, 5):
            ours = _forward_steps(build_schedule("revolve", K, snapshots=s))
            assert ours == _forward_steps(Revolve(K, s)) == _binomial_optimum(K, s), (K, s)
    for K, s in ((1000, 10), (10_000, 10), (10_000, 100)):
        assert _forward_steps(build_schedule("revolve", K, snapshots=s)) == _binomial_optimum(K, s), (K, s)


def test_revolve_memory_stays_below_plain_maml_at_a_tenth_of_the_steps():
    """Live-tensor peaks (exact bytes): revolve at K = 100 below plain maml at K = 10, on a few-shot conv net."""
    problem = FewShotClassification.generate(
        dataset="digits", ways=3, shots=2, query=2, n_tasks=1, filters=4, lam=1.0, dtype=torch.float64
    )
    theta = problem.initial_theta()

    def peak(name, K, **options):
        alg = mb.get_algorithm(name, inner_steps=K, inner_lr=0.05, **options)
        with LiveTensorTracker() as tracker:
            alg.hypergradient(problem, theta)
        return tracker.peak_bytes

    assert peak("maml_checkpointed", 100, schedule="revolve", snapshots=5) < peak("maml", 10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": "revolve", "checkpoint_every": 3}, "checkpoint_every sets the sqrt schedule"),
        ({"schedule": "sqrt", "snapshots": 3}, "snapshots and snapshot_memory set the revolve schedule"),
        ({"schedule": "revolve", "snapshots": 3, "snapshot_memory": 1e6}, "not both"),
        ({"schedule": "binomial"}, "schedule must be one of"),
        ({"schedule": "revolve", "snapshots": 0}, "snapshots must be"),
    ],
)
def test_schedule_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        mb.get_algorithm("maml_checkpointed", inner_steps=5, **options)

"""Training cases (mode = "train") in sweeps, the meta-objective's Hessian, and Mem(grad)."""

from __future__ import annotations

import math

import pytest
import torch

import metabench as mb
from metabench.results import RECORD_FIELDS
from metabench.sweep import Sweep, get_preset, run_case
from metabench.sweep import case as case_module
from metabench.sweep.training import TRAIN_DIVERGENCE_FACTOR

F64 = torch.float64
BILEVEL = {"problem": "quadratic_bilevel", "n_tasks": 2, "p": 4, "q": 6, "kappa": 2.0, "rho": 0.1, "seed": 0}
LINEAR = {"problem": "linear_meta_regression", "n_tasks": 2, "dim": 5, "n_train": 8, "n_val": 6, "lam": 0.5}
LINEAR |= {"kappa": 20.0, "seed": 0}
TRAIN = {"mode": "train", "inner_lr": "auto", "threads": 1}
RM_METAL = {"algorithm": "rm_metal", "inner_steps": 5, "cg_iters": 5}


def one_case(**params) -> dict:
    (case,) = Sweep(name="t", defaults={}, grid=[{k: [v] for k, v in params.items()}]).cases()
    return case


def train_record(**params) -> dict:
    return run_case(one_case(**BILEVEL, **TRAIN, **(RM_METAL | {"outer_steps": 20} | params)))


def fd_meta_hessian(problem, theta: torch.Tensor, tasks=None, h: float = 1e-3) -> torch.Tensor:
    """The Hessian of F by central differences of ``exact_hypergradient`` (exact for quadratic F, up to rounding)."""
    columns = []
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = h
        plus, minus = problem.exact_hypergradient(theta + e, tasks=tasks), problem.exact_hypergradient(theta - e, tasks)
        columns.append((plus - minus) / (2 * h))
    hessian = torch.stack(columns, dim=1)
    return 0.5 * (hessian + hessian.T)


def lipschitz_of_F(problem) -> float:
    theta = torch.randn(problem.theta_shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    return float(torch.linalg.eigvalsh(fd_meta_hessian(problem, theta)).max())


@pytest.fixture(scope="module")
def bilevel():
    params = {k: v for k, v in BILEVEL.items() if k != "problem"}
    return mb.QuadraticBilevel.generate(**params)


@pytest.fixture(scope="module")
def rm_metal_run():
    return train_record()


@pytest.mark.parametrize("problem_name", ["linear_problem", "bilevel_problem"])
def test_meta_hessian_matches_finite_differences_of_the_exact_hypergradient(problem_name, request):
    problem = request.getfixturevalue(problem_name)
    theta = torch.randn(problem.theta_shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    hessian = problem.meta_hessian()
    assert hessian.dtype == F64 and hessian.shape == (theta.numel(), theta.numel())
    torch.testing.assert_close(hessian, fd_meta_hessian(problem, theta), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(problem.meta_hessian(tasks=[1]), fd_meta_hessian(problem, theta, tasks=[1]))


def test_training_case_records_a_converging_trajectory(rm_metal_run):
    record = rm_metal_run
    assert record["status"] == "ok", record["error"]
    assert record["mode"] == "train" and record["outer_steps"] == 20 and record["optimizer"] == "sgd"
    trajectory = record["trajectory"]
    assert set(trajectory) == {"objective_gap", "exact_grad_norm", "wall_time_s", "oracle_calls"}
    assert all(len(values) == 21 for values in trajectory.values())
    gap = trajectory["objective_gap"]
    assert gap[0] > 10 * gap[-1] > 0
    assert record["final_objective_gap"] == gap[-1]
    for name in ("wall_time_s", "oracle_calls"):
        values = trajectory[name]
        assert values[0] == 0 and all(b >= a for a, b in zip(values, values[1:])), name
    assert record["total_wall_time_s"] == trajectory["wall_time_s"][-1] > 0

    # oracle calls per task: the first outer step costs what one cold rm_metal call costs, over 2 tasks
    problem = case_module.build_problem(one_case(**BILEVEL, **RM_METAL))
    theta = case_module.prepare_case(one_case(**BILEVEL, **RM_METAL)).theta
    first = mb.get_algorithm("rm_metal", inner_steps=5, cg_iters=5, inner_lr=record["inner_lr"])
    counts = first.hypergradient(problem, theta).counts
    assert trajectory["oracle_calls"][1] == sum(counts.as_tuple()) / 2


def test_training_records_keep_to_the_schema_without_instrument_fields(rm_metal_run):
    assert set(rm_metal_run) <= set(RECORD_FIELDS)
    assert not {"time_median_s", "live_peak_bytes", "matmul_flops", "inner_grad_peak_bytes"} & set(rm_metal_run)


def test_auto_outer_lr_is_one_over_the_largest_eigenvalue_of_F_hessian(rm_metal_run, bilevel):
    assert rm_metal_run["outer_lr"] == pytest.approx(1.0 / lipschitz_of_F(bilevel), rel=1e-7)


@pytest.mark.parametrize(
    ("algorithm", "factor", "steps", "error"),
    [
        ("rm_metal", 100.0, 20, "objective gap grew"),  # finite, but by far more than TRAIN_DIVERGENCE_FACTOR
        # theta grows until F(theta_t) (quadratic in theta) overflows: train stops at that step
        ("itd_bio", 1e6, 30, "exact objective at outer step"),
        ("rm_metal", 1e12, 20, "at outer step"),
    ],
)
def test_a_diverging_outer_lr_is_a_diverged_record(bilevel, algorithm, factor, steps, error):
    record = train_record(outer_steps=steps, outer_lr=factor / lipschitz_of_F(bilevel), algorithm=algorithm)
    assert record["status"] == "diverged" and error in record["error"]
    gap = record["trajectory"]["objective_gap"]
    assert len({len(values) for values in record["trajectory"].values()}) == 1  # lists of one length
    if "objective gap grew" in error:
        assert len(gap) == steps + 1 and gap[-1] > TRAIN_DIVERGENCE_FACTOR * gap[0]
    else:  # stopped where it diverged, every value kept finite
        assert len(gap) <= steps and all(math.isfinite(g) for g in gap)


def test_adam_and_a_fixed_outer_lr(bilevel):
    record = train_record(outer_steps=5, optimizer="adam", outer_lr=0.01)
    assert record["status"] == "ok" and record["outer_lr"] == 0.01 and record["optimizer"] == "adam"
    assert len(record["trajectory"]["exact_grad_norm"]) == 6


@pytest.mark.parametrize(
    ("param", "value"), [("optimizer", "lbfgs"), ("outer_lr", -1.0), ("outer_lr", "big"), ("outer_steps", 2.5)]
)
def test_bad_training_parameters_are_invalid_records(param, value):
    record = train_record(**({"outer_steps": 3} | {param: value}))
    assert record["status"] == "invalid" and param in record["error"]


def test_training_parameters_belong_to_training_cases_only():
    hyper = one_case(**BILEVEL, **RM_METAL, outer_steps=7, optimizer="adam")
    assert hyper["mode"] == "hypergradient" and not {"outer_steps", "outer_lr", "optimizer"} & set(hyper)
    trains = [one_case(**BILEVEL, **TRAIN, **RM_METAL, outer_steps=n) for n in (7, 8)]
    assert trains[0]["outer_lr"] == "auto" and trains[0]["optimizer"] == "sgd"
    assert len({hyper["case_id"], *(c["case_id"] for c in trains)}) == 3
    with pytest.raises(ValueError, match="mode must be one of"):
        one_case(**BILEVEL, **RM_METAL, mode="fit")


def test_hypergradient_records_carry_null_training_fields():
    record = run_case(one_case(**LINEAR, algorithm="maml", inner_steps=2, inner_lr=0.05), instruments=())
    assert record["status"] == "ok" and record["mode"] == "hypergradient"
    assert all(record[k] is None for k in ("outer_steps", "outer_lr", "optimizer", "trajectory", "final_objective_gap"))
    assert "inner_grad_peak_bytes" not in record  # a memory measure: only with the memory instrument


def test_inner_grad_peak_is_the_same_for_every_algorithm_and_below_maml():
    records = {
        (alg, k): run_case(one_case(**LINEAR, algorithm=alg, inner_steps=k, cg_iters=5, inner_lr=0.05), ("memory",))
        for alg, k in (("maml", 20), ("maml", 2), ("imaml", 20))
    }
    peaks = {key: r["inner_grad_peak_bytes"] for key, r in records.items()}
    assert all(r["status"] == "ok" for r in records.values())
    assert len(set(peaks.values())) == 1 and peaks["maml", 20] > 0
    assert peaks["maml", 20] < records["maml", 20]["live_peak_bytes"]


def test_a_failing_inner_grad_measure_keeps_the_other_measures(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no memory for you")

    monkeypatch.setattr(case_module, "inner_grad_peak_bytes", broken)
    record = run_case(one_case(**LINEAR, algorithm="imaml", inner_steps=2, inner_lr=0.05), ("memory",))
    assert record["status"] == "ok" and record["inner_grad_peak_bytes"] is None and record["live_peak_bytes"] > 0


def test_training_preset_normalises():
    cases = get_preset("training").cases()
    assert len(cases) == 16 and len({c["case_id"] for c in cases}) == 16
    assert all(c["mode"] == "train" and c["outer_steps"] == 100 and c["outer_lr"] == "auto" for c in cases)
    bilevel = {c["algorithm"] for c in cases if c["problem"] == "quadratic_bilevel"}
    assert bilevel == {"itd_bio", "imaml", "rm_metal", "neumann"}
    linear = {c["algorithm"] for c in cases if c["problem"] == "linear_meta_regression"}
    assert linear == {"maml", "fomaml", "imaml", "rm_metal"}
    assert {c["options"]["inner_steps"] for c in cases} == {5, 20}

"""Plugins: problems, models and task sources from another package, by entry point (``examples/plugin``).

The example plugin is made visible as pip would install it (``tests/plugin_env.py``): its names appear in
``metabench list`` with where they come from, its sweep file runs (the plugin's problem with reference errors,
metabench's few-shot problem on the plugin's network and task source), a plugin whose import raises is listed with
its error while every other name works, and a problem that breaks the contract is a record naming the problem.
"""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms import get_algorithm
from metabench.cli import main
from metabench.problems import BilevelProblem
from metabench.problems.contract import ProblemContractError, check_contract
from metabench.problems.registry import DATASETS, MODELS, PROBLEMS
from metabench.registry import PluginError, Registry
from metabench.results import read_records
from metabench.sweep import Sweep, run_sweep
from metabench.sweep.case import run_case
from tests import plugin_env
from tests.test_sweep import TINY

BROKEN = {"metabench.problems": {"broken_problem": "metabench_no_such_module.problems:Broken"}}


def test_the_example_plugins_names_are_listed_with_where_they_come_from(tmp_path, capsys):
    with plugin_env.installed(tmp_path, extra=BROKEN):
        assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("logistic_hyperparameters", "resblocks", "gaussian_blobs"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert "entry point" in line and "metabench_example_plugin" in line, line
    broken = next(line for line in out.splitlines() if line.strip().startswith("broken_problem"))
    assert "FAILED TO LOAD" in broken and "metabench_no_such_module" in broken and "ModuleNotFoundError" in broken
    assert "linear_meta_regression" in out and "built-in" in out  # the rest is listed as before


def test_the_example_plugins_sweep_runs_its_problem_model_and_task_source(tmp_path):
    with plugin_env.installed(tmp_path):
        summary = run_sweep(Sweep.from_file(plugin_env.PLUGIN_SWEEP), tmp_path / "out", progress=False)
    records = read_records(summary.path)
    assert len(records) == 5 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    logistic = [r for r in records if r["problem"] == "logistic_hyperparameters"]
    assert len(logistic) == 3 and all(r["truth"] == "reference" for r in logistic)
    assert all(r["rel_error_reference"] is not None for r in logistic), [r["truth_status"] for r in logistic]
    assert all(r["rel_error_algorithm"] < 1e-10 for r in logistic if r["algorithm"] == "itd_bio")
    few_shot = [r for r in records if r["problem"] == "few_shot_classification"]
    assert {r["problem_params"]["model"] for r in few_shot} == {"resblocks"}
    assert {r["problem_params"]["dataset"] for r in few_shot} == {"gaussian_blobs"}


def test_a_plugin_whose_import_raises_is_reported_and_the_built_in_names_still_work(tmp_path):
    with plugin_env.installed(tmp_path, extra=BROKEN):
        assert "broken_problem" in PROBLEMS.broken() and "broken_problem" not in PROBLEMS.names()
        with pytest.raises(PluginError, match="broken_problem.*could not be loaded.*metabench_no_such_module"):
            PROBLEMS.get("broken_problem")
        record = run_case(Sweep(name="s", defaults=dict(TINY), grid=[{"algorithm": ["maml"]}]).cases()[0])
        assert record["status"] == "ok"
        assert "logistic_hyperparameters" in PROBLEMS.names()  # the good plugin's names are unaffected
        with pytest.raises(PluginError, match="broken_problem"):
            Sweep(name="s", defaults={"problem": "broken_problem"}, grid=[{"algorithm": ["maml"]}]).cases()


class _WrongShapes(BilevelProblem):
    """A problem whose inner loss is one number for all tasks (not one per task)."""

    family = "bilevel"
    theta_shape = phi_shape = (2,)
    n_tasks = 2

    def __init__(self):
        self._data = {"x": torch.zeros(2, 2, dtype=torch.float64)}

    @classmethod
    def generate(cls, seed=0, dtype=torch.float64):
        return cls()

    def inner_loss(self, theta, phi, tasks):
        return (phi**2).sum()  # a scalar: the contract wants shape (len(tasks),)

    def outer_loss(self, theta, phi, tasks):
        return (phi - theta).pow(2).sum(-1)

    def inner_init(self, theta, tasks):
        return theta.new_zeros(len(tasks), 2)

    @property
    def inner_strongly_convex(self):
        return True

    def describe(self):
        return {"problem": "wrong_shapes"}


def test_a_problem_that_breaks_the_contract_is_a_record_naming_the_problem():
    with pytest.raises(ProblemContractError, match=r"problem 'wrong_shapes' .*inner_loss.*shape \(2,\); got \(\)"):
        check_contract(_WrongShapes(), "wrong_shapes")
    PROBLEMS.register("wrong_shapes", _WrongShapes)
    try:
        case = Sweep(name="s", defaults={"problem": "wrong_shapes"}, grid=[{"algorithm": ["itd_bio"]}]).cases()[0]
        record = run_case(case)
    finally:
        del PROBLEMS._objects["wrong_shapes"], PROBLEMS._origins["wrong_shapes"]
    assert (
        record["status"] == "failed" and "problem 'wrong_shapes'" in record["error"] and "inner_loss" in record["error"]
    )


def test_a_registry_checks_names_kinds_and_duplicates():
    registry = Registry("widget", "metabench.test_widgets", lambda name, obj: None if callable(obj) else 1 / 0)
    registry.register("one", len)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("one", max)
    with pytest.raises(ValueError, match="identifier"):
        registry.register("two words", len)
    with pytest.raises(ValueError, match=r"unknown widget 'three'; available: \['one'\]"):
        registry.get("three")
    with pytest.raises(TypeError, match="must be a metabench BilevelProblem"):
        PROBLEMS.register("not_a_problem", dict)
    with pytest.raises(TypeError, match="callable"):
        MODELS.register("not_a_model", 3)
    assert DATASETS.origins()["digits"].startswith("built-in")


def test_an_algorithm_plugin_whose_import_raises_leaves_the_others_working(tmp_path):
    extra = {"metabench.algorithms": {"broken_algorithm": "metabench_no_such_module:Algo"}}
    with plugin_env.installed(tmp_path, extra=extra):
        from metabench.algorithms.registry import ALGORITHMS

        assert "broken_algorithm" in ALGORITHMS.broken() and "maml" in ALGORITHMS.names()
        assert get_algorithm("maml", inner_steps=1).name == "maml"
        with pytest.raises(PluginError, match="broken_algorithm"):
            get_algorithm("broken_algorithm")

"""Meta-training to accuracy (``metabench.meta_train``) and its sweep records and report.

Tiny digits episodes and nets (float64 where values are compared, float32 where only the run matters): the run
is deterministic in its seed, it measures what it says (accuracy from the network's logits, counts per step,
one step's live memory), meta-training lowers the query loss on fixed training episodes, a diverging or
breaking-down run keeps what it measured, and the report's time to 0.9 x best picks the first evaluation that
reaches the target.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch.func import functional_call

from metabench.algorithms import get_algorithm
from metabench.meta_train import adapted_accuracy, meta_train, time_to_fraction
from metabench.problems import FewShotClassification
from metabench.problems.datasets import omniglot_like_tasks
from metabench.problems.task_sources import OmniglotLikeSource, make_task_source
from metabench.report.accuracy import accuracy_rows, accuracy_section
from metabench.results import comparable, read_records
from metabench.sweep import Sweep
from metabench.sweep.case import run_case
from tests.test_sweep import TINY as SWEEP_TINY

SHORT = dict(outer_steps=3, outer_lr=1e-3, meta_batch=2, eval_every=2, eval_tasks=2, test_tasks=2, fine_tune_steps=2)


def template(shots=1, dtype=torch.float64, **kw):
    return FewShotClassification.digits(5, shots, 2, 1, filters=4, dtype=dtype, **kw)


def test_a_run_measures_every_step_and_evaluation_and_is_deterministic_in_its_seed():
    source, problem = make_task_source("digits"), template()
    algorithm = get_algorithm("maml", inner_steps=2, inner_lr=0.1)
    runs = [meta_train(problem, source, algorithm, problem.initial_theta(), **SHORT) for _ in range(2)]
    run = runs[0]
    assert run.status == "ok", run.error
    assert len(run.step_wall_time_s) == len(run.oracle_calls) == 3
    assert run.eval_steps == [0, 2, 3] and len(run.val_accuracy) == len(run.eval_wall_time_s) == 3
    assert all(0.0 <= a <= 1.0 for a in run.val_accuracy) and 0.0 <= run.test_accuracy <= 1.0
    assert run.step_live_peak_bytes > 0 and run.rss_peak_bytes > 0
    assert run.eval_wall_time_s[0] == 0.0 and run.eval_wall_time_s[-1] == run.step_wall_time_s[-1]
    # every maml step costs the same: K inner gradients and one outer gradient per task, plus the HVPs of back-prop
    steps = [b - a for a, b in zip([0.0, *run.oracle_calls], run.oracle_calls)]
    assert len(set(steps)) == 1 and steps[0] >= 3
    assert run.val_accuracy == runs[1].val_accuracy and torch.equal(run.theta, runs[1].theta)
    other = meta_train(problem, source, algorithm, problem.initial_theta(), **{**SHORT, "seed": 1})
    assert not torch.equal(other.theta, run.theta)  # other episodes


def test_accuracy_is_the_share_of_query_inputs_whose_largest_logit_is_the_label():
    problem = template(shots=2).with_tasks(*make_task_source("digits").tasks("val", 5, 2, 3, 3, dtype=torch.float64))
    algorithm = get_algorithm("maml", inner_steps=0, inner_lr=0.1)  # no adaptation: the logits of theta itself
    theta = problem.initial_theta()
    accuracy, loss = adapted_accuracy(problem, algorithm, theta, steps=0)
    params = {n: p for n, p in zip(problem.theta_names, theta.split([p.numel() for p in problem.model.parameters()]))}
    params = {n: v.view_as(p) for (n, v), p in zip(params.items(), problem.model.parameters())}
    shares = []
    for X, y in zip(problem.tasks["X_query"], problem.tasks["y_query"]):
        logits = functional_call(problem.model, params, (X,))
        shares.append(float((logits.argmax(-1) == y).double().mean()))
    assert accuracy == pytest.approx(sum(shares) / len(shares), abs=1e-12)
    index = problem.task_index(None)
    assert loss == pytest.approx(
        float(problem.outer_loss(theta, problem.inner_init(theta, index), index).mean()), 1e-12
    )


def test_meta_training_lowers_the_query_loss_on_fixed_training_episodes():
    source = make_task_source("digits")
    problem = FewShotClassification.digits(5, 5, 2, 1, filters=8, dtype=torch.float32)
    algorithm = get_algorithm("maml", inner_steps=2, inner_lr=0.3)
    fixed = problem.with_tasks(*source.tasks("train", 5, 5, 2, 8, seed=99))
    theta0 = problem.initial_theta()
    run = meta_train(problem, source, algorithm, theta0, **{**SHORT, "outer_steps": 30, "outer_lr": 1e-2})
    before = adapted_accuracy(fixed, algorithm, theta0, 2)[1]
    after = adapted_accuracy(fixed, algorithm, run.theta, 2)[1]
    assert run.status == "ok" and after < 0.9 * before, (before, after)


def test_a_diverging_run_stops_and_keeps_what_it_measured():
    source, problem = make_task_source("digits"), template()
    algorithm = get_algorithm("maml", inner_steps=1, inner_lr=0.1)
    run = meta_train(
        problem, source, algorithm, problem.initial_theta(), **{**SHORT, "outer_lr": 1e300}, optimizer="sgd"
    )
    assert run.status == "diverged" and "not finite" in run.error
    assert run.val_accuracy and run.step_wall_time_s  # the evaluation at t = 0 and the step that blew up


def test_a_solver_breakdown_is_a_failed_run_that_keeps_its_first_evaluation():
    # CG meets curvature below -lam on BatchNorm nets at lam = 2 (measured: -233 on a digits task)
    source = make_task_source("digits")
    problem = FewShotClassification.digits(5, 1, 5, 1, filters=32, lam=2.0, dtype=torch.float64)
    algorithm = get_algorithm("imaml", inner_steps=16, inner_lr=0.1, cg_iters=5)
    run = meta_train(problem, source, algorithm, problem.initial_theta(), **{**SHORT, "meta_batch": 4})
    if run.status == "ok":
        pytest.skip("no negative curvature met on this machine's episodes")
    assert run.status == "failed" and run.error.startswith("solver breakdown at outer step")
    assert len(run.val_accuracy) == 1


def test_meta_train_names_the_bad_parameter():
    source, problem = make_task_source("digits"), template()
    algorithm = get_algorithm("maml", inner_steps=1, inner_lr=0.1)
    for name, value in (("eval_every", 0), ("meta_batch", 0), ("outer_lr", 0.0), ("test_tasks", 0)):
        with pytest.raises(ValueError, match=name):
            meta_train(problem, source, algorithm, problem.initial_theta(), **{**SHORT, name: value})
    with pytest.raises(ValueError, match="optimizer"):
        meta_train(problem, source, algorithm, problem.initial_theta(), **SHORT, optimizer="lbfgs")


# ---------------------------------------------------------------------- task sources
def test_generated_omniglot_splits_share_no_character_and_restrict_the_draw():
    source = OmniglotLikeSource()
    ranges = [set(source._classes(s)) for s in ("train", "val", "test")]
    assert sum(len(r) for r in ranges) == 1623 and not (ranges[0] & ranges[1] or ranges[1] & ranges[2])
    a = omniglot_like_tasks(5, 1, 1, 2, image_size=8, classes=range(1300, 1310))
    b = omniglot_like_tasks(5, 1, 1, 2, image_size=8, classes=range(0, 10))
    assert not torch.equal(a.X_support, b.X_support)
    with pytest.raises(ValueError, match="classes"):
        omniglot_like_tasks(5, 1, 1, 1, image_size=8, classes=[1, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="ways"):
        source.tasks("val", 101, 1, 1, 1)
    with pytest.raises(ValueError, match="split"):
        source.tasks("dev", 5, 1, 1, 1)
    with pytest.raises(ValueError, match="no data_root"):
        make_task_source("digits", data_root="/tmp")


# ---------------------------------------------------------------------- sweep records
TRAIN = {
    "problem": "few_shot_classification",
    "dataset": "digits",
    "ways": 5,
    "shots": 1,
    "query": 2,
    "n_tasks": 1,
    "filters": 4,
    "mode": "train",
    "outer_steps": 2,
    "outer_lr": 1e-3,
    "optimizer": "adam",
    "task_batch": 2,
    "eval_every": 1,
    "eval_tasks": 2,
    "test_tasks": 2,
    "fine_tune_steps": 2,
    "inner_lr": 0.1,
    "inner_steps": 1,
    "threads": 1,
}


def _case(**changes):
    return Sweep(name="acc", defaults={**TRAIN, **changes}, grid=[{"algorithm": ["maml"]}]).cases()[0]


def test_a_few_shot_training_case_is_a_record_with_accuracies_and_memory_and_repeats_exactly():
    case = _case()
    records = [run_case(case) for _ in range(2)]
    record = records[0]
    assert record["status"] == "ok", record["error"]
    assert record["task_source"]["task_source"] == "digits" and record["task_batch"] == 2
    assert set(record["trajectory"]) == {
        "wall_time_s",
        "oracle_calls",
        "eval_step",
        "eval_wall_time_s",
        "val_accuracy",
        "val_loss",
    }
    assert record["trajectory"]["eval_step"] == [0, 1, 2]
    assert record["val_accuracy_best"] == max(record["trajectory"]["val_accuracy"])
    assert 0 <= record["test_accuracy"] <= 1 and record["live_peak_bytes"] > 0
    assert comparable(records[0]) == comparable(records[1])


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"outer_lr": "auto"}, "outer_lr = 'auto'"),
        ({"dataset": "sinusoid"}, "sinusoid"),
        ({"eval_every": 0}, "eval_every must be an integer >= 1"),
    ],
)
def test_a_bad_few_shot_training_case_is_an_invalid_record_that_says_why(changes, text):
    record = run_case(_case(**changes))
    assert record["status"] == "invalid" and text in record["error"]


def test_accuracy_training_parameters_leave_other_cases_and_their_ids_alone():
    defaults = {**SWEEP_TINY, "mode": "train", "eval_every": 3}
    closed = Sweep(name="s", defaults=defaults, grid=[{"algorithm": ["maml"]}]).cases()[0]
    assert "eval_every" not in closed  # the closed-form problem trains without it


# ---------------------------------------------------------------------- report
def _record(algorithm, accuracies, times, **extra):
    return {
        "sweep": "acc",
        "algorithm": algorithm,
        "status": "ok",
        "mode": "train",
        "inner_steps": 5,
        "outer_steps": 4,
        "problem_params": {"dataset": "omniglot_like", "ways": 5, "shots": 1, "formulation": "maml", "lam": 0.0},
        "task_source": {"task_source": "omniglot_like"},
        "trajectory": {
            "eval_step": list(range(len(accuracies))),
            "eval_wall_time_s": times,
            "val_accuracy": accuracies,
            "oracle_calls": [0.0, 8.0, 16.0, 24.0, 32.0],
        },
        "val_accuracy_best": max(accuracies),
        "val_accuracy_final": accuracies[-1],
        "test_accuracy": 0.5,
        "total_wall_time_s": times[-1],
        "live_peak_bytes": 2**20,
        "rss_peak_bytes": 2**30,
        "fine_tune_steps": 20,
        **extra,
    }


def test_time_to_0_9_of_the_best_is_the_first_evaluation_at_the_target_across_the_compared_runs():
    assert time_to_fraction([0.0, 1.0, 2.0], [0.2, 0.5, 0.7], 0.45) == 1.0
    assert time_to_fraction([0.0, 1.0], [0.2, None], 0.45) is None
    records = pd.DataFrame(
        [_record("maml", [0.2, 0.6, 0.8], [0.0, 10.0, 20.0]), _record("fomaml", [0.2, 0.75, 0.76], [0.0, 4.0, 8.0])]
    )
    (rows,) = accuracy_rows(records).values()
    by = {r["method"]: r for r in rows}
    assert math.isclose(by["maml"]["time_to_target"], 20.0)  # 0.9 x 0.8 = 0.72: maml reaches it at its last
    assert math.isclose(by["fomaml"]["time_to_target"], 4.0)
    assert by["maml"]["paper"] == 98.7 and by["fomaml"]["paper"] == 98.3  # iMAML Table 2, 5-way 1-shot
    assert by["maml"]["calls_per_step"] == 8.0 and by["maml"]["live_mib"] == 1.0
    section = accuracy_section(records)
    text = "\n".join(str(getattr(b, "rows", b)) for b in section.blocks)
    assert "98.7" in text


# ---------------------------------------------------------------------- a folder on disk, through the CLI
def test_a_sweep_reads_a_folder_given_by_data_root_for_hypergradients_and_training(tmp_path, capsys):
    from metabench.cli import main
    from tests.test_data_folders import make_image_folders

    layout = make_image_folders(tmp_path)  # 3 train, 2 val, 2 test classes of 6 RGB images
    config = tmp_path / "folder.toml"
    config.write_text(
        'name = "folder"\n[defaults]\nproblem = "few_shot_classification"\ndataset = "image_folders"\n'
        "ways = 2\nshots = 1\nquery = 2\nn_tasks = 2\nimage_size = 8\nfilters = 4\ninner_lr = 0.1\n"
        'inner_steps = 1\nthreads = 1\nmin_run_time = 0.001\ninstruments = []\ndtype = "float64"\n'
        'outer_steps = 2\nouter_lr = 0.001\noptimizer = "adam"\ntask_batch = 2\neval_every = 1\neval_tasks = 2\n'
        'test_tasks = 2\nfine_tune_steps = 1\n[[grid]]\nalgorithm = ["maml"]\nmode = ["hypergradient", "train"]\n'
    )
    out = tmp_path / "out"
    argv = ["run", "--config", str(config), "--out", str(out), "--no-progress"]
    assert main([*argv, "--data-root", str(layout.root)]) == 0
    records = {r["mode"]: r for r in read_records(out / "folder.jsonl")}
    assert records["hypergradient"]["status"] == records["train"]["status"] == "ok"
    assert records["train"]["task_source"]["task_source"] == "image_folders"
    assert records["train"]["problem_params"]["data_root"] == str(layout.root.resolve())
    capsys.readouterr()
    assert main([*argv, "--data-root", str(tmp_path / "missing")]) != 0
    assert "no such folder" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "none")]) == 1  # no --data-root: invalid records that say why
    errors = [r["error"] for r in read_records(tmp_path / "none" / "folder.jsonl")]
    assert all("data_root" in e for e in errors), errors


def test_problem_parameters_added_later_keep_the_committed_few_shot_case_ids():
    from pathlib import Path

    from metabench.sweep import get_preset

    root = Path(__file__).resolve().parents[1] / "reports" / "conv_checkpointed" / "results"
    committed = {r["case_id"] for f in sorted(root.glob("*.jsonl*")) for r in read_records(f)}
    assert committed and committed == {c["case_id"] for c in get_preset("conv_checkpointed").cases()}
    with_root = Sweep(name="acc", defaults={**TRAIN, "data_root": "/data"}, grid=[{"algorithm": ["maml"]}]).cases()
    assert with_root[0]["case_id"] != _case()["case_id"]  # a given data_root is part of the case

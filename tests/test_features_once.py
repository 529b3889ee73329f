"""features='once': the bilevel formulation's inner loop and linear solve on fixed backbone features.

The meta-gradient must be the recompute form's (the chain rule, exactly: float64 to round-off), with the same
oracle counts, on conv nets with every normalisation and on an MLP; its memory must not grow with K."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metabench.algorithms import get_algorithm
from metabench.measure.memory import LiveTensorTracker
from metabench.problems import FewShotClassification

ALGORITHMS = [
    ("itd_bio", {}),
    ("maml", {}),
    ("truncated", {"truncate": 2}),
    ("maml_checkpointed", {}),
    ("imaml", {"cg_iters": 4}),
    ("rm_metal", {"cg_iters": 4}),
    ("neumann", {"neumann_iters": 4}),
]


def bilevel(norm: str = "batch", dataset: str = "omniglot_like", n_tasks: int = 2) -> FewShotClassification:
    if dataset == "sinusoid":
        return FewShotClassification.generate(
            dataset="sinusoid", n_tasks=n_tasks, formulation="bilevel", dtype=torch.float64
        )
    return FewShotClassification.generate(
        dataset=dataset,
        ways=3,
        shots=2,
        query=3,
        n_tasks=n_tasks,
        formulation="bilevel",
        norm=norm,
        filters=4,
        image_size=8,
        dtype=torch.float64,
    )


@pytest.mark.parametrize(("algorithm", "options"), ALGORITHMS, ids=[a for a, _ in ALGORITHMS])
@pytest.mark.parametrize("setting", ["batch", "group", "none", "sinusoid"])
def test_features_once_is_the_recompute_meta_gradient(algorithm, options, setting):
    problem = bilevel("batch", "sinusoid") if setting == "sinusoid" else bilevel(setting)
    assert problem.has_feature_head
    theta = problem.initial_theta()
    once = get_algorithm(algorithm, inner_steps=4, inner_lr=0.05, features="once", **options)
    again = get_algorithm(algorithm, inner_steps=4, inner_lr=0.05, features="recompute", **options)
    a, b = once.hypergradient(problem, theta), again.hypergradient(problem, theta)
    assert float((a.grad - b.grad).norm()) <= 1e-12 * float(b.grad.norm())
    assert float((a.phi - b.phi).norm()) <= 1e-12 * (1.0 + float(b.phi.norm()))
    assert a.counts == b.counts
    assert (a.info["features"], b.info["features"]) == ("once", "recompute")
    if once.stateful:  # the warm starts index the parent's tasks: a second call agrees too
        a2, b2 = once.hypergradient(problem, theta, state=a.state), again.hypergradient(problem, theta, state=b.state)
        assert float((a2.grad - b2.grad).norm()) <= 1e-12 * float(b2.grad.norm())


def test_auto_is_once_on_a_feature_head_and_none_without_one():
    problem = bilevel()
    theta = problem.initial_theta()
    assert get_algorithm("itd_bio", inner_steps=2).hypergradient(problem, theta).info["features"] == "once"
    maml_form = FewShotClassification.generate(
        dataset="digits", ways=3, shots=2, query=2, n_tasks=1, filters=4, dtype=torch.float64
    )
    assert not maml_form.has_feature_head
    assert (
        get_algorithm("maml", inner_steps=2).hypergradient(maml_form, maml_form.initial_theta()).info["features"]
        is None
    )
    with pytest.raises(ValueError, match="features='once' needs a problem whose phi is a head"):
        get_algorithm("maml", inner_steps=2, features="once").hypergradient(maml_form, maml_form.initial_theta())
    with pytest.raises(ValueError, match="features must be one of"):
        get_algorithm("maml", features="twice")


class Scaled(nn.Module):
    """A head followed by another operation: the loss is not a function of head(features) alone."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return 2.0 * self.head(self.body(x))


def test_a_head_that_is_not_the_last_operation_falls_back_to_recompute():
    torch.manual_seed(0)
    X = torch.randn(1, 6, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 0, 1, 2]])
    problem = FewShotClassification(Scaled().double(), X, y, X, y, formulation="bilevel", head="head")
    assert not problem.has_feature_head
    theta = problem.initial_theta()
    assert get_algorithm("itd_bio", inner_steps=2).hypergradient(problem, theta).info["features"] is None
    with pytest.raises(ValueError, match="features='once'"):
        get_algorithm("itd_bio", inner_steps=2, features="once").hypergradient(problem, theta)


@pytest.mark.parametrize("algorithm", ["itd_bio", "imaml"])
def test_features_once_memory_is_flat_in_K(algorithm):
    """Peak live-tensor bytes (exact, deterministic) at K = 20 within 10% of K = 1; recompute itd_bio grows."""
    problem = bilevel(n_tasks=1)
    theta = problem.initial_theta()

    def peak(K, features):
        alg = get_algorithm(algorithm, inner_steps=K, inner_lr=0.05, features=features)
        with LiveTensorTracker() as tracker:
            alg.hypergradient(problem, theta)
        return tracker.peak_bytes

    assert peak(20, "once") <= 1.1 * peak(1, "once")
    if algorithm == "itd_bio":
        assert peak(20, "recompute") >= 3 * peak(1, "recompute")

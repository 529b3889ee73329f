"""compile='on': untracked inner gradients under torch.compile, checked against eager before they are trusted.

The default suite compiles with the "aot_eager" backend (dynamo tracing and AOTAutograd's compiled backward,
without C++ code generation: seconds, not minutes); ``-m slow`` runs the real "inductor" backend on the MLP and
conv nets. Every check is float64 against eager, with the same oracle counts; a compiled gradient that
disagrees, or a compile that raises, must fall back to eager and say so."""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms import compiled_step, get_algorithm
from metabench.problems import FewShotClassification, LinearMetaRegression
from metabench.sweep import Sweep, run_case

F64 = torch.float64


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled_step, "BACKEND", "aot_eager")


def few_shot(model: str = "conv", norm: str = "batch", dtype=F64) -> FewShotClassification:
    if model == "mlp":
        return FewShotClassification.generate(dataset="sinusoid", n_tasks=2, lam=50.0, dtype=dtype)
    return FewShotClassification.generate(
        ways=3, shots=2, query=2, n_tasks=2, filters=4, image_size=8, norm=norm, lam=50.0, dtype=dtype
    )


FIRST_ORDER = [("fomaml", {}), ("imaml", {"cg_iters": 4, "damping": 1e3}), ("truncated", {"truncate": 2})]


def _pair(problem, name, options, theta=None):
    theta = problem.initial_theta() if theta is None else theta
    eager = get_algorithm(name, inner_steps=4, inner_lr=0.02, **options).hypergradient(problem, theta)
    compiled = get_algorithm(name, inner_steps=4, inner_lr=0.02, compile="on", **options)
    first = compiled.hypergradient(problem, theta)  # compiles and checks
    return eager, first, compiled.hypergradient(problem, theta)


@pytest.mark.usefixtures("aot_eager")
@pytest.mark.parametrize(("name", "options"), FIRST_ORDER, ids=[n for n, _ in FIRST_ORDER])
def test_compiled_first_order_steps_give_the_eager_meta_gradient(name, options):
    problem = few_shot()
    eager, first, again = _pair(problem, name, options)
    for result in (first, again):
        assert result.info["compile"] == "compiled"
        assert float((result.grad - eager.grad).norm()) <= 1e-12 * float(eager.grad.norm())
        assert result.counts == eager.counts
    assert first.info["compile_s"] > 0
    assert eager.info["compile"] == "off" and eager.info["compile_s"] is None


@pytest.mark.usefixtures("aot_eager")
def test_compiled_steps_on_the_bilevel_formulation_with_features_recomputed():
    problem = FewShotClassification.generate(
        ways=3, shots=2, query=2, n_tasks=2, filters=4, image_size=8, formulation="bilevel", dtype=F64
    )
    eager, first, again = _pair(problem, "rm_metal", {"cg_iters": 4, "features": "recompute"})
    assert (first.info["compile"], first.info["features"]) == ("compiled", "recompute")
    assert float((first.grad - eager.grad).norm()) <= 1e-12 * float(eager.grad.norm())
    once = get_algorithm("rm_metal", inner_steps=4, inner_lr=0.02, cg_iters=4, compile="on")
    assert once.hypergradient(problem, problem.initial_theta()).info["compile"] == "unused"  # the head runs eager


@pytest.mark.usefixtures("aot_eager")
def test_compile_on_the_closed_form_problem_and_where_nothing_is_untracked():
    problem = LinearMetaRegression.generate(n_tasks=3, dim=6, n_train=8, n_val=8, kappa=10.0, lam=1.0, seed=0)
    theta = torch.zeros(6, dtype=F64)
    eager, first, _ = _pair(problem, "fomaml", {}, theta)
    assert first.info["compile"] == "compiled"
    assert float((first.grad - eager.grad).norm()) <= 1e-12 * float(eager.grad.norm())
    maml = get_algorithm("maml", inner_steps=3, inner_lr=0.1, compile="on").hypergradient(problem, theta)
    assert maml.info["compile"] == "unused"  # every maml step is differentiated: nothing compiled


def test_a_compiled_gradient_that_disagrees_is_not_used(monkeypatch):
    def miscompiling_backend(graph, example_inputs):  # every output 1e-6 too large: so is the gradient
        return lambda *args: [out * (1 + 1e-6) for out in graph(*args)]

    monkeypatch.setattr(compiled_step, "BACKEND", miscompiling_backend)
    problem = few_shot("mlp")
    eager, first, again = _pair(problem, "fomaml", {})
    for result in (first, again):
        assert result.info["compile"].startswith("eager: compiled gradient differs from eager by 1.0e-06")
        assert torch.equal(result.grad, eager.grad)


def test_a_compile_that_raises_runs_eager_and_says_why(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("backend compiler failed\nsecond line")

    monkeypatch.setattr(compiled_step, "BACKEND", broken_backend)
    problem = few_shot("mlp")
    eager, first, _ = _pair(problem, "fomaml", {})
    assert first.info["compile"] == (
        "eager: torch.compile raised BackendCompilerFailed: RuntimeError: backend compiler failed"
    )
    assert torch.equal(first.grad, eager.grad)


@pytest.mark.usefixtures("aot_eager")
def test_records_say_whether_compile_ran():
    grid = {
        "problem": ["few_shot_classification"],
        "dataset": ["sinusoid"],
        "n_tasks": [2],
        "lam": [50.0],
        "algorithm": ["fomaml"],
        "inner_steps": [2],
        "inner_lr": [0.02],
        "compile": ["on", "off"],
        "dtype": ["float64"],
        "instruments": [[]],
    }
    on, off = (run_case(case) for case in Sweep(name="compile", grid=[grid]).cases())
    assert on["status"] == "ok", on["error"]
    assert on["compile"] == "compiled" and on["compile_s"] > 0
    assert (off["compile"], off["compile_s"]) == ("off", None)


def test_compile_is_an_option_with_a_clear_error():
    with pytest.raises(ValueError, match="compile"):
        get_algorithm("fomaml", compile="yes")


@pytest.mark.usefixtures("aot_eager")
def test_compiled_code_that_dynamo_skips_is_not_called_compiled(monkeypatch):
    """A frame once met under a dispatch mode (the live-tensor tracker) is skipped by dynamo for good: such a
    problem must say eager (here planted: a compile that returns the function itself), and the tracker must not
    poison the compile of a later call."""
    from metabench.measure.memory import LiveTensorTracker

    problem = few_shot("mlp")
    theta = problem.initial_theta()
    alg = get_algorithm("fomaml", inner_steps=2, inner_lr=0.02, compile="on")
    with LiveTensorTracker():
        tracked = alg.hypergradient(problem, theta)
    assert tracked.info["compile"] == "eager: ran under a TorchDispatchMode (e.g. the memory tracker)"
    assert alg.hypergradient(problem, theta).info["compile"] == "compiled"
    skipped = few_shot("mlp")
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # runs eagerly, as dynamo does skipped code
    result = alg.hypergradient(skipped, skipped.initial_theta())
    assert (
        result.info["compile"]
        == "eager: torch.compile raised RuntimeError: no compiled graph ran: dynamo skipped the inner loss"
    )


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["mlp", "batch", "group", "none"])
def test_inductor_compiled_steps_equal_eager_in_float64(setting):
    problem = few_shot("mlp") if setting == "mlp" else few_shot("conv", setting)
    for name, options in FIRST_ORDER[:2]:
        eager, first, again = _pair(problem, name, options)
        assert first.info["compile"] == "compiled", first.info["compile"]
        assert float((again.grad - eager.grad).norm()) <= 1e-12 * float(eager.grad.norm())

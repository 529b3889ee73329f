"""metabench.certify: outside meta-gradient functions judged against the closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metabench.certify import Case, certify, load_function
from metabench.certify.candidates import candidate_gradients
from metabench.certify.cases import PLAIN_CASES, PROXIMAL_CASES
from metabench.certify.classify import tolerance
from metabench.certify.profile import memory_growth
from metabench.cli import main
from metabench.testing import assert_computes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "certify"


def example(spec: str):
    return load_function(f"{EXAMPLES / spec.split(':')[0]}:{spec.split(':')[1]}")


# ------------------------------------------------------------------ the candidates themselves
@pytest.mark.parametrize("case", PROXIMAL_CASES[:3], ids=lambda c: f"K{c.inner_steps}")
def test_candidates_agree_with_the_problems_own_closed_forms_and_a_direct_solve(case):
    problem, theta = case.problem(), case.theta()
    lr, K = case.inner_lr(problem), case.inner_steps
    cands, exact, _ = candidate_gradients(problem, theta, K, lr)
    by = {c.label: c.grad for c in cands}
    maml = problem.exact_algorithm_gradient(theta, K, lr)
    assert (by["maml"] - maml).norm() <= 1e-12 * maml.norm()
    for T in range(1, K):
        held = problem.exact_algorithm_gradient(theta, K, lr, truncate=T)
        assert (by[f"truncated (T = {T})"] - held).norm() <= 1e-12 * held.norm()
    # implicit: lam A^-1 grad L(phi_K), with phi_K from K explicit GD steps and a dense solve
    H, b, Hv, bv, A = (m[0] for m in problem.quadratics())
    phi = theta.double()
    for _ in range(K):
        phi = phi - lr * (A @ phi - b - problem.lam * theta.double())
    implicit = problem.lam * torch.linalg.solve(A, Hv @ phi - bv)
    assert (by["implicit"] - implicit).norm() <= 1e-10 * implicit.norm()
    assert (by["fomaml"] - (Hv @ phi - bv)).norm() <= 1e-10 * implicit.norm()
    assert (exact - problem.exact_hypergradient(theta)).norm() == 0


def test_first_order_head_truncation_matches_autograd_in_float64():
    case = PROXIMAL_CASES[0]
    problem, theta = case.problem(), case.theta()
    lr, K, T = case.inner_lr(problem), case.inner_steps, 2
    tasks = problem.task_index()
    t = theta.clone().requires_grad_(True)
    phi = t
    for k in range(K):
        (g,) = torch.autograd.grad(problem.inner_loss(t, phi[None], tasks)[0], phi, create_graph=k >= K - T)
        phi = phi - lr * g
    (grad,) = torch.autograd.grad(problem.outer_loss(t, phi[None], tasks)[0], t)
    cands, _, _ = candidate_gradients(problem, theta, K, lr)
    fo = next(c.grad for c in cands if c.label == f"truncated (T = {T}), first-order head")
    assert (grad - fo).norm() <= 1e-12 * fo.norm()


@pytest.mark.parametrize("cases", [PROXIMAL_CASES, PLAIN_CASES], ids=["proximal", "plain"])
def test_default_cases_keep_every_pair_of_candidates_far_apart(cases):
    """An implementation can match at most one candidate: every pair is >= 1e-2 apart and 10 x the tolerance."""
    for case in cases:
        problem, theta = case.problem(), case.theta()
        cands, _, terms = candidate_gradients(problem, theta, case.inner_steps, case.inner_lr(problem))
        tol = tolerance(theta.dtype, case.inner_steps, float(problem.condition_numbers().max()))
        for i, a in enumerate(cands):
            for b in cands[i + 1 :]:
                scale = float(max(a.grad.norm(), b.grad.norm()))
                gap = float((a.grad - b.grad).norm())
                assert gap >= max(1e-2 * scale, 10 * tol * max(scale, terms)), (case, a.label, b.label)


# ------------------------------------------------------------------ every example's verdict
@pytest.mark.parametrize(
    ("spec", "computes", "claim"),
    [
        ("maml.py:meta_grad", "maml", "maml"),
        ("first_order_maml.py:meta_grad", "fomaml", "fomaml"),
        ("truncated_maml.py:meta_grad", "truncated", "truncated"),
        ("cg_imaml.py:meta_grad", "implicit", "implicit"),
        ("module_maml.py:meta_grad", "maml", "maml"),
    ],
)
def test_correct_examples_are_certified(spec, computes, claim):
    verdict = certify(example(spec), claim, measure_profile=False)
    assert verdict.computes == computes and verdict.passed, verdict.sentence
    assert all(claim in c.families for c in verdict.cases)


def test_truncated_example_is_found_with_its_T():
    verdict = certify(example("truncated_maml.py:meta_grad"), "truncated", measure_profile=False)
    assert verdict.truncate == 2 and "T = 2, phi_{K-T} held constant" in verdict.sentence


def test_correct_cg_imaml_converges_to_the_exact_solve_as_iterations_grow():
    verdict = certify(example("cg_imaml.py:meta_grad"), "implicit", measure_profile=False)
    for c in verdict.cases:
        assert c.implicit in ("converges", "exact"), c.iterations
        assert c.iterations[-1][1] <= c.tolerance


@pytest.mark.parametrize(
    ("spec", "claim", "computes", "first"),
    [
        ("first_order_maml.py:meta_grad", "maml", "fomaml", "fomaml"),
        ("cg_imaml_buggy.py:meta_grad", "implicit", "none", "none"),
    ],
)
def test_buggy_examples_are_flagged_on_the_first_problem(spec, claim, computes, first):
    verdict = certify(example(spec), claim, measure_profile=False)
    assert not verdict.passed and verdict.computes == computes
    assert claim not in verdict.cases[0].families and verdict.cases[0].label == first
    assert verdict.sentence.startswith(
        f"claims {claim}; computes {'none of the candidates' if computes == 'none' else computes}"
    )
    assert verdict.notes[0].startswith("first case flagged: case 0")


def test_the_buggy_cg_error_does_not_fall_with_iterations():
    verdict = certify(example("cg_imaml_buggy.py:meta_grad"), "implicit", measure_profile=False)
    sweep = verdict.cases[0].iterations
    assert sweep[-1][1] > 0.5 * sweep[0][1]
    assert "does not fall as cg_iters grows" in verdict.notes[1]


def test_higher_peer_with_copy_initial_weights_false_is_maml_and_with_true_is_zero():
    pytest.importorskip("higher")
    assert certify(example("higher_maml.py:meta_grad"), "maml", measure_profile=False).passed
    copied = certify(example("higher_maml.py:meta_grad_copied"), "maml", measure_profile=False)
    assert not copied.passed and copied.computes == "zero" and copied.cases[0].label == "zero"


def test_torchopt_peer_is_maml():
    pytest.importorskip("torchopt")
    verdict = certify(example("torchopt_maml.py:meta_grad"), "maml", measure_profile=False)
    assert verdict.passed, verdict.sentence


# ------------------------------------------------------------------ no false alarm
def _maml(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
    phi = phi0(theta)
    for _ in range(inner_steps):
        (g,) = torch.autograd.grad(inner_loss(theta, phi), phi, create_graph=True)
        phi = phi - inner_lr * g
    return torch.autograd.grad(outer_loss(theta, phi), theta)[0]


def _fomaml(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
    phi = phi0(theta).detach().requires_grad_(True)
    for _ in range(inner_steps):
        (g,) = torch.autograd.grad(inner_loss(theta, phi), phi)
        phi = (phi - inner_lr * g).detach().requires_grad_(True)
    return torch.autograd.grad(outer_loss(theta, phi), phi)[0]


cases = st.builds(
    Case,
    dim=st.integers(2, 12),
    n_train=st.integers(2, 24),
    n_val=st.integers(1, 12),
    kappa=st.floats(1.5, 1000.0),
    lam=st.floats(0.01, 1.0),
    inner_steps=st.integers(1, 30),
    lr_scale=st.floats(0.1, 1.9),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from(["float64", "float32"]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases, truncate=st.integers(1, 30))
def test_a_correct_implementation_is_never_flagged(case, truncate):
    """maml, fomaml and truncated written correctly match their claim on every case of any shape, kappa, K, step
    size and dtype (the candidates may coincide on some: that is no flag)."""
    truncated = example("truncated_maml.py:meta_grad")
    for fn, claim, hyper in (
        (_maml, "maml", None),
        (_fomaml, "fomaml", None),
        (truncated, "truncated", {"truncate": truncate}),
    ):
        verdict = certify(fn, claim, cases=[case], hyper=hyper, measure_profile=False)
        assert claim in verdict.cases[0].families, (claim, case, verdict.cases[0].errors)
    plain = Case(**{**case.to_dict(), "lam": 0.0, "n_train": max(case.n_train, case.dim)})
    verdict = certify(example("module_maml.py:meta_grad"), "maml", cases=[plain], measure_profile=False)
    assert "maml" in verdict.cases[0].families, (plain, verdict.cases[0].errors)


# ------------------------------------------------------------------ what is wrong, said clearly
def test_a_scaled_gradient_matches_nothing_and_says_by_what_factor():
    verdict = certify(
        lambda theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr: (
            2 * _maml(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr)
        ),
        "maml",
        measure_profile=False,
    )
    assert verdict.computes == "none" and verdict.cases[0].closest == "maml"
    assert math.isclose(verdict.cases[0].scale, 2.0, rel_tol=1e-9) and "2 x that" in verdict.notes[0]


def test_different_answers_on_different_cases_are_mixed_and_fail():
    def half(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
        fn = _maml if theta.dtype == torch.float64 else _fomaml
        return fn(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr)

    verdict = certify(half, "maml", measure_profile=False)
    assert verdict.computes == "mixed" and not verdict.passed
    assert "maml on 6 of 8" in verdict.sentence and "fomaml on 2 of 8" in verdict.sentence


def test_a_function_that_raises_or_returns_nan_is_a_case_status_not_a_crash():
    def raises(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
        raise RuntimeError("boom")

    def nan(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
        return torch.full_like(theta, float("nan"))

    bad = certify(raises, "maml", measure_profile=False)
    assert not bad.passed and bad.cases[0].status == "raised" and "boom" in bad.notes[0]
    assert certify(nan, measure_profile=False).cases[0].status == "non-finite"


def test_unfillable_parameters_and_unknown_shapes_are_clear_errors():
    def needs(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, momentum):
        return theta

    with pytest.raises(ValueError, match=r"required parameters \['momentum'\].*--hyper"):
        certify(needs)
    assert certify(needs, hyper={"momentum": 0.9}, measure_profile=False).computes == "none"

    def odd(a, b, c, d, e, f):
        return a

    with pytest.raises(TypeError, match="cannot tell the shape"):
        certify(odd)
    with pytest.raises(ValueError, match="claim must be one of"):
        certify(_maml, "reptile")
    with pytest.raises(TypeError, match="takes 2 positional parameters"):
        certify(lambda theta, inner_loss: theta, shape="functional")


def test_module_shape_without_a_proximal_weight_runs_plain_maml_problems():
    verdict = certify(example("module_maml.py:meta_grad"), "maml", measure_profile=False)
    assert all(c.case.lam == 0.0 for c in verdict.cases)
    with pytest.raises(ValueError, match="every case needs lam = 0"):
        certify(example("module_maml.py:meta_grad"), cases=PROXIMAL_CASES[:1])


# ------------------------------------------------------------------ memory profile
def test_memory_growth_reads_flat_sqrt_and_linear():
    steps = [1, 2, 4, 8, 16, 32]
    assert memory_growth(steps, [10_000_000 + 100 * k for k in steps])[0] == "flat"
    assert memory_growth(steps, [1_000_000 + 200_000 * math.sqrt(k) for k in steps])[0] == "sqrt"
    growth, slope = memory_growth(steps, [1_000_000 + 50_000 * k for k in steps])
    assert growth == "linear" and abs(slope - 50_000) <= 1


def test_profile_sees_maml_memory_grow_with_K_and_cg_imaml_flat():
    maml = certify(example("maml.py:meta_grad"), "maml", memory="linear")
    assert maml.passed and maml.profile["memory_growth"] == "linear"
    assert maml.profile["inner_loss_calls"] == [k for k in maml.profile["inner_steps"]]
    imaml = certify(example("cg_imaml.py:meta_grad"), "implicit", memory="linear")
    assert imaml.profile["memory_growth"] == "flat" and not imaml.passed
    assert "claims linear memory in K, measured flat" in imaml.sentence


# ------------------------------------------------------------------ the command, JSON and the pytest helper
def test_cli_exits_1_naming_what_a_first_order_maml_computes(capsys):
    code = main(["certify", f"{EXAMPLES / 'first_order_maml.py'}:meta_grad", "--claim", "maml", "--no-profile"])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("FAIL: claims maml; computes fomaml on every case (8 of 8)")


def test_cli_json_and_report(tmp_path, capsys):
    code = main(
        [
            "certify",
            f"{EXAMPLES / 'maml.py'}:meta_grad",
            "--claim",
            "maml",
            "--no-profile",
            "--json",
            "-",
            "--report",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    verdict = json.loads(out[out.index("{") :])
    assert code == 0 and verdict["passed"] and verdict["computes"] == "maml" and len(verdict["cases"]) == 8
    assert json.loads((tmp_path / "verdict.json").read_text())["sentence"] == verdict["sentence"]
    assert "| case | problem |" in (tmp_path / "verdict.md").read_text()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nofile.py:meta_grad", "no such file"),
        ("examples/certify/maml.py", "expected MODULE:FUNCTION"),
        ("examples/certify/maml.py:nope", "has no function 'nope'"),
        ("not_a_module_xyz:fn", "cannot import"),
        ("{tmp}/needs.py:meta_grad", "cannot import {tmp}/needs.py: No module named 'not_installed_xyz'"),
    ],
)
def test_cli_bad_targets_exit_2(target, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(EXAMPLES.parents[1])
    (tmp_path / "needs.py").write_text("import not_installed_xyz\n")
    target, message = target.format(tmp=tmp_path), message.format(tmp=tmp_path)
    assert main(["certify", target]) == 2
    assert message in capsys.readouterr().err


def test_assert_computes_passes_and_fails_with_the_sentence():
    assert assert_computes(_maml, "maml").passed
    with pytest.raises(AssertionError, match="claims maml; computes fomaml on every case"):
        assert_computes(_fomaml, "maml")


def test_metabench_certify_stays_the_function_after_its_modules_are_imported():
    import metabench.certify.cases  # noqa: F401 - binds the package on metabench, which must keep the function

    assert metabench.certify is certify and callable(metabench.certify)


def test_a_first_order_head_truncation_is_found_with_its_head_and_worst_error_at_round_off():
    def last_step_only(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr):
        phi = phi0(theta)
        for k in range(inner_steps):
            (g,) = torch.autograd.grad(inner_loss(theta, phi), phi, create_graph=k >= inner_steps - 1)
            phi = phi - inner_lr * g
        return torch.autograd.grad(outer_loss(theta, phi), theta)[0]

    verdict = certify(last_step_only, "truncated", measure_profile=False)
    assert verdict.passed and verdict.truncate == 1
    assert "the first K - T steps first-order" in verdict.sentence
    assert max(c.error_to("truncated") for c in verdict.cases) < 1e-6  # the K = 1 case is full back-prop

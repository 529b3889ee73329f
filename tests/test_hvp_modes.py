"""Hessian-vector products in every mode (metabench.oracle.HVP_MODES) against reverse mode, in float64."""

from __future__ import annotations

import pytest
import torch

import metabench as mb
from metabench.hvp_check import time_hvp_modes
from metabench.oracle import HVP_MODES, HVP_TOL, Oracle, check_hvp_modes
from metabench.problems import FewShotClassification


def nets():
    out = {"mlp": FewShotClassification.generate(dataset="sinusoid", n_tasks=1, lam=1.0, dtype=torch.float64)}
    for norm in ("batch", "group", "none"):
        out[f"conv-{norm}"] = FewShotClassification.generate(
            dataset="digits", ways=3, shots=2, query=2, n_tasks=2, filters=4, norm=norm, lam=1.0, dtype=torch.float64
        )
    out["linear"] = mb.LinearMetaRegression.generate(n_tasks=2, dim=5, n_train=8, n_val=4, kappa=10.0, lam=0.5, seed=0)
    return out


NETS = nets()


#: (model, mode) pairs torch 2.13 gets wrong or cannot run: the check must say so (and the rest must agree)
KNOWN_BAD = {("conv-batch", "reverse_over_forward"): "wrong", ("mlp", "forward_over_reverse"): "raises"}


@pytest.mark.parametrize("name", list(NETS))
def test_every_offered_mode_equals_reverse_mode_in_float64(name):
    problem = NETS[name]
    theta = problem.initial_theta() if hasattr(problem, "initial_theta") else torch.zeros(5, dtype=torch.float64)
    check = check_hvp_modes(problem, theta)
    for mode in HVP_MODES:
        bad = KNOWN_BAD.get((name, mode))
        if bad is None:
            assert check[mode]["agree"] and check[mode]["rel_error"] <= HVP_TOL, (name, mode, check[mode])
        elif bad == "wrong":
            assert not check[mode]["agree"] and check[mode]["rel_error"] > 1e-2, (name, mode, check[mode])
        else:
            assert not check[mode]["agree"] and "ZeroTensors" in check[mode]["error"], (name, mode, check[mode])


def test_batch_norm_reverse_over_forward_is_wrong_in_torch_itself():
    """The finding behind KNOWN_BAD: through F.batch_norm with batch statistics, the reverse derivative of the
    forward-mode tangent disagrees with finite differences of that tangent; the same normalisation written
    out by hand (mean, var, divide) is right, and so is group_norm."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x, w, p, u = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((6, 3), (6, 3), (3,), (3,)))

    def native(q):
        return (w * F.batch_norm(x * q, None, None, training=True).tanh()).sum()

    def by_hand(q):
        z = x * q
        return (w * ((z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)).tanh()).sum()

    for f, right in ((native, False), (by_hand, True)):
        tangent = lambda q, f=f: torch.func.jvp(f, (q,), (u,))[1]  # noqa: E731
        reverse = torch.func.grad(tangent)(p)
        fd = torch.stack(
            [(tangent(p + 1e-6 * e) - tangent(p - 1e-6 * e)) / 2e-6 for e in torch.eye(3, dtype=torch.float64)]
        )
        assert (float((reverse - fd).norm() / fd.norm()) < 1e-5) == right


def test_a_mode_that_is_wrong_on_the_model_is_refused():
    problem = NETS["conv-batch"]
    with pytest.raises(ValueError, match="hvp='reverse_over_forward' does not compute the Hessian-vector product"):
        mb.get_algorithm("imaml", inner_steps=1, hvp="reverse_over_forward").hypergradient(
            problem, problem.initial_theta()
        )


def test_linear_problem_hvp_is_the_closed_form_hessian_product():
    problem = NETS["linear"]
    theta = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tasks = problem.task_index()
    phi = problem.inner_init(theta, tasks).clone()
    u = torch.randn(phi.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    A = problem.quadratics()[4]
    for mode in HVP_MODES:
        product = Oracle(problem, tasks).linearize(theta, phi, hvp=mode).hvp(u)
        assert float((product - torch.einsum("tde,te->td", A, u)).norm()) <= 1e-12 * float(u.norm() * A.norm())


def test_imaml_with_each_mode_gives_the_same_meta_gradient():
    problem = NETS["conv-group"]
    theta = problem.initial_theta()
    grads = {
        mode: mb.get_algorithm("imaml", inner_steps=3, inner_lr=0.05, cg_iters=3, damping=50.0, hvp=mode)
        .hypergradient(problem, theta)
        .grad
        for mode in HVP_MODES
    }
    for mode, grad in grads.items():
        assert float((grad - grads["reverse"]).norm()) <= 1e-10 * float(grads["reverse"].norm()), mode
    with pytest.raises(ValueError, match="hvp must be one of"):
        mb.get_algorithm("imaml", hvp="finite_difference")


def test_timing_reports_ratios_to_one_gradient():
    problem = NETS["conv-group"]
    timing = time_hvp_modes(problem, problem.initial_theta(), rounds=1)
    assert set(timing) == {"gradient", *HVP_MODES, "reverse_build"}
    assert timing["gradient"]["time_ratio"] == 1.0 and timing["gradient"]["memory_ratio"] == 1.0
    assert all(t["time_s"] > 0 for t in timing.values())


def test_run_forked_returns_the_value_or_why_the_child_gave_none():
    import os
    import signal
    import time

    from metabench.measure.forked import run_forked

    assert run_forked(lambda: torch.ones(3).sum().item()) == (True, 3.0)
    ran, why = run_forked(lambda: os.kill(os.getpid(), signal.SIGSEGV))
    assert not ran and "SIGSEGV" in why
    ran, why = run_forked(lambda: 1 / 0)
    assert not ran and "ZeroDivisionError" in why
    ran, why = run_forked(lambda: time.sleep(30), timeout_s=0.5)
    assert not ran and "did not finish within 0.5 s" in why


def test_a_mode_that_dies_under_a_dispatch_mode_is_refused(monkeypatch):
    """The memory and FLOP instruments are dispatch modes: a torch.func mode that takes the process down under one
    (reverse_over_forward on the ReLU MLP, torch 2.13) is refused before it runs, with the reason."""
    from metabench import oracle

    calls = []

    def dies(*args):
        calls.append(args[-1])
        return "one product under a TorchDispatchMode: the child process died (exit code -11, SIGSEGV)"

    monkeypatch.setattr(oracle, "_dispatch_probe", dies)
    problem = FewShotClassification.generate(
        dataset="digits", ways=3, shots=2, query=2, n_tasks=1, filters=4, norm="none", lam=1.0, dtype=torch.float64
    )
    with pytest.raises(ValueError, match="cannot run it under a dispatch mode here .*SIGSEGV"):
        oracle.require_hvp_mode(problem, "forward_over_reverse")
    assert sorted(calls) == sorted(oracle.TORCH_FUNC_MODES)  # only the torch.func modes are probed
    oracle.require_hvp_mode(problem, "reverse_rebuild")  # not a torch.func mode: not probed, allowed


def test_the_probe_finds_what_runs_under_a_dispatch_mode():
    """On the conv net without normalisation both torch.func modes run under a dispatch mode; where one does not
    (torch 2.13: reverse_over_forward on the ReLU MLP segfaults), the check says how the child died."""
    check = check_hvp_modes(NETS["conv-none"], NETS["conv-none"].initial_theta())
    assert all(check[m]["dispatch_error"] is None for m in ("forward_over_reverse", "reverse_over_forward"))
    mlp = check_hvp_modes(NETS["mlp"], NETS["mlp"].initial_theta())["reverse_over_forward"]
    assert mlp["agree"]
    assert mlp["dispatch_error"] is None or "died" in mlp["dispatch_error"]

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

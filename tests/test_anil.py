"""anil and the few-shot "anil" formulation: ANIL's meta-gradient (MAML on the head alone) exactly, in float64.

On linear meta-regression (no backbone: every weight is the head) anil is maml and equals the closed form. On a
tiny few-shot net (a 3-4-3 tanh MLP, 2 tasks of 6 support and 6 query points, float64) in the anil formulation it
is checked against the K-step objective F(theta) = mean_i f_i(theta, phi_{i,K}(theta)) written out here from
scratch (plain tensors, no metabench and no functional_call): central differences along random directions, and
torch.autograd of that explicit loop. Then the layout of the formulation, what other algorithms do on it, the
refusals and the oracle's counts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metabench as mb
from metabench import OracleCounts, QuadraticBilevel
from metabench.evaluate import UNROLLED_REFERENCE, evaluate
from metabench.problems import FewShotClassification
from metabench.vmap_check import verify_vmap

F64 = torch.float64
D, H, C, N_TASKS, N = 3, 4, 3, 2, 6  # inputs, hidden units, classes, tasks, points per set
K, LR = 3, 0.5
HEAD = slice(D * H + H, D * H + H + C * H + C)  # "2.weight", "2.bias" come last in named_parameters


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, C)).double()


def tiny_tasks():
    gen = torch.Generator().manual_seed(1)
    X_s, X_q = (torch.randn(N_TASKS, N, D, generator=gen, dtype=F64) for _ in range(2))
    labels = (torch.arange(N) % C).expand(N_TASKS, N).clone()
    return X_s, labels, X_q, labels.flip(-1).clone()


def tiny_problem(formulation: str = "anil", **kwargs) -> FewShotClassification:
    return FewShotClassification(tiny_model(), *tiny_tasks(), formulation=formulation, **kwargs)


# ---------------------------------------------------------------------- the K-step objective, from scratch
def unpack(theta):
    """(W1, b1, W2, b2) from theta in named_parameters order (Linear weights are (out, in))."""
    sizes = (H * D, H, C * H, C)
    W1, b1, W2, b2 = torch.split(theta, sizes)
    return W1.reshape(H, D), b1, W2.reshape(C, H), b2


def head_loss(theta, head, X, y):
    W1, b1, _, _ = unpack(theta)
    W2, b2 = head[: C * H].reshape(C, H), head[C * H :]
    return F.cross_entropy(torch.tanh(X @ W1.T + b1) @ W2.T + b2, y)


def adapted_heads(theta, steps, lr, lam, create_graph):
    """phi_{i,K}: K GD steps on g_i = loss(support; backbone, phi) + lam/2 ||phi - head0||^2 from theta[HEAD]."""
    X_s, y_s, _, _ = tiny_tasks()
    head0, heads = theta[HEAD], []
    for i in range(N_TASKS):
        phi = head0 if create_graph else head0.detach().requires_grad_(True)
        for _ in range(steps):
            g = head_loss(theta, phi, X_s[i], y_s[i]) + 0.5 * lam * (phi - head0).pow(2).sum()
            (step,) = torch.autograd.grad(g, phi, create_graph=create_graph)
            phi = phi - lr * step
            if not create_graph:
                phi = phi.detach().requires_grad_(True)
        heads.append(phi)
    return heads


def k_step_objective(theta, steps=K, lr=LR, lam=0.0, create_graph=False):
    """F(theta) = mean_i loss(query_i; backbone(theta), phi_{i,K}(theta))."""
    _, _, X_q, y_q = tiny_tasks()
    with torch.enable_grad():
        heads = adapted_heads(theta, steps, lr, lam, create_graph)
        total = sum(head_loss(theta, phi, X_q[i], y_q[i]) for i, phi in enumerate(heads)) / N_TASKS
    return total if create_graph else float(total.detach())


def autograd_of_the_loop(theta, lam=0.0, steps=K, lr=LR):
    at = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(k_step_objective(at, steps, lr, lam, create_graph=True), at)
    return grad


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def directions(n: int, count: int = 3, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return [(lambda d: d / d.norm())(torch.randn(n, generator=gen, dtype=F64)) for _ in range(count)]


# ---------------------------------------------------------------------- closed forms: ANIL is MAML without a backbone
@pytest.mark.parametrize("steps", [1, 5])
def test_anil_on_linear_meta_regression_is_the_closed_form_and_maml(linear_problem, linear_theta, steps):
    anil = mb.get_algorithm("anil", inner_steps=steps, inner_lr=0.1)
    result = anil.hypergradient(linear_problem, linear_theta)
    assert anil.differentiated_objective() == {"inner_steps": steps, "inner_lr": 0.1, "truncate": steps}
    exact = linear_problem.exact_algorithm_gradient(linear_theta, **anil.differentiated_objective())
    assert rel(result.grad, exact) < 1e-10
    maml = mb.get_algorithm("maml", inner_steps=steps, inner_lr=0.1).hypergradient(linear_problem, linear_theta)
    torch.testing.assert_close(result.grad, maml.grad, rtol=1e-14, atol=0)
    assert result.counts == maml.counts == OracleCounts(inner_grads=3 * steps, outer_grads=3, hvps=3 * steps)


# ---------------------------------------------------------------------- the formulation
def test_anil_formulation_layout():
    anil, maml = tiny_problem(), tiny_problem("maml")
    theta = anil.initial_theta()
    assert torch.equal(theta, maml.initial_theta()) and anil.theta_names == maml.theta_names
    assert anil.family == "anil" and anil.phi0_depends_on_theta and anil.phi_names == ["2.weight", "2.bias"]
    assert anil.phi_shape == (C * H + C,) and anil.theta_shape == maml.theta_shape
    # phi0 is the head's slice of theta, expanded over tasks, and differentiable in theta
    at = theta.clone().requires_grad_(True)
    phi0 = anil.inner_init(at, [0, 1])
    assert phi0.shape == (2, C * H + C) and torch.equal(phi0[1], theta[HEAD])
    (back,) = torch.autograd.grad(phi0.sum(), at)
    assert (
        torch.equal(back[HEAD], torch.full((C * H + C,), 2.0, dtype=F64)) and float(back[: HEAD.start].abs().sum()) == 0
    )
    # the weights of a task: the backbone from theta, the head from phi (phi=None: phi0, the model's own weights)
    phi = torch.randn(anil.phi_shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    weights = anil.named_weights(theta, phi)
    assert list(weights) == maml.theta_names
    assert torch.equal(weights["0.weight"], theta[: D * H].view(H, D)) and torch.equal(weights["2.bias"], phi[C * H :])
    assert all(
        torch.equal(a, b) for a, b in zip(anil.named_weights(theta).values(), maml.named_weights(theta).values())
    )
    # the losses are the ones written out above
    X_s, y_s, X_q, y_q = tiny_tasks()
    lam = 0.5
    prox = tiny_problem(lam=lam)
    expected = head_loss(theta, phi, X_s[1], y_s[1]) + 0.5 * lam * (phi - theta[HEAD]).pow(2).sum()
    assert float(prox.inner_loss(theta, phi[None], [1])[0]) == pytest.approx(float(expected), rel=1e-14)
    assert float(anil.outer_loss(theta, phi[None], [1])[0]) == pytest.approx(
        float(head_loss(theta, phi, X_q[1], y_q[1])), rel=1e-14
    )
    # a linear head on fixed features: convex, lam-strongly convex for lam > 0; no features-once
    assert (anil.inner_convexity, anil.inner_strongly_convex) == ("convex", False)
    assert (prox.inner_convexity, prox.inner_strongly_convex) == ("strong", True)
    assert not anil.has_feature_head and not prox.has_feature_head
    hess = torch.autograd.functional.hessian(lambda p: prox.inner_loss(theta, p[None], [0]).sum(), phi)
    assert float(torch.linalg.eigvalsh(hess)[0]) >= lam * (1 - 1e-9)
    described = prox.describe()
    assert described["formulation"] == "anil" and described["lam"] == lam and described["reg"] is None
    assert described["theta_params"] == theta.numel() and described["phi_params"] == C * H + C


def test_anil_formulation_takes_lam_not_reg_and_the_factories_take_it():
    with pytest.raises(ValueError, match="anil formulation takes lam"):
        tiny_problem(reg=0.5)
    with pytest.raises(ValueError, match="lam"):
        tiny_problem(lam=-1.0)
    with pytest.raises(ValueError, match="formulation must be one of"):
        tiny_problem("ANIL")
    tiny = {"ways": 2, "shots": 1, "query": 1, "n_tasks": 2, "seed": 0, "dtype": F64}
    conv = FewShotClassification.omniglot_like(**tiny, filters=2, image_size=8, norm="none", formulation="anil")
    assert conv.formulation == "anil" and conv.phi_names == ["head.weight", "head.bias"]
    assert torch.equal(
        conv.initial_theta(),
        FewShotClassification.omniglot_like(**tiny, filters=2, image_size=8, norm="none").initial_theta(),
    )
    sine = FewShotClassification.generate(dataset="sinusoid", shots=2, query=2, n_tasks=2, formulation="anil", lam=1.0)
    assert sine.describe()["formulation"] == "anil" and sine.phi_shape == (41,)
    with pytest.raises(ValueError, match="anil formulation takes lam"):
        FewShotClassification.generate(dataset="sinusoid", shots=2, query=2, n_tasks=2, formulation="anil", reg=0.1)


# ---------------------------------------------------------------------- ANIL's meta-gradient on a network
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_anil_matches_finite_differences_and_autograd_of_the_explicit_loop(lam):
    problem = tiny_problem(lam=lam)
    theta = problem.initial_theta()
    result = mb.get_algorithm("anil", inner_steps=K, inner_lr=LR).hypergradient(problem, theta)
    assert result.grad.dtype == F64 and result.grad.shape == theta.shape
    # central differences, eps 1e-5, of O(1) losses: truncation ~1e-10, rounding ~1e-11; 1e-6 relative leaves margin
    eps = 1e-5
    for d in directions(theta.numel()):
        fd = (k_step_objective(theta + eps * d, lam=lam) - k_step_objective(theta - eps * d, lam=lam)) / (2 * eps)
        assert float(result.grad @ d) == pytest.approx(fd, rel=1e-6, abs=1e-10)
    # the same derivative by torch.autograd of the hand-written loop: the same arithmetic, to rounding
    assert rel(result.grad, autograd_of_the_loop(theta, lam)) < 1e-12
    # ... and the problem's own float64 reference of the K-step objective
    assert rel(result.grad, problem.reference_algorithm_gradient(theta, K, LR)) < 1e-12
    # the meta-gradient reaches the head's initialisation and the backbone
    assert float(result.grad[HEAD].norm()) > 1e-3 and float(result.grad[: HEAD.start].norm()) > 1e-3
    torch.testing.assert_close(result.phi, torch.stack(adapted_heads(theta, K, LR, lam, False)), rtol=0, atol=1e-13)


def test_the_other_unrolled_algorithms_on_the_anil_formulation():
    """maml, itd_bio and maml_checkpointed run the same back-prop (they equal anil); truncated cuts at phi_{K-T}
    (the head's initialisation then gets nothing at lam = 0); fomaml is first-order ANIL."""
    problem = tiny_problem()
    theta = problem.initial_theta()
    anil = mb.get_algorithm("anil", inner_steps=K, inner_lr=LR).hypergradient(problem, theta).grad
    for name in ("maml", "itd_bio", "maml_checkpointed"):
        other = mb.get_algorithm(name, inner_steps=K, inner_lr=LR).hypergradient(problem, theta).grad
        assert rel(other, anil) < 1e-12, name
    # (MAML proper, every weight adapted, is another meta-gradient: the comparisons above can tell them apart)
    maml = mb.get_algorithm("maml", inner_steps=K, inner_lr=LR).hypergradient(tiny_problem("maml"), theta).grad
    assert rel(maml, anil) > 1e-2
    truncated = mb.get_algorithm("truncated", inner_steps=K, inner_lr=LR, truncate=1).hypergradient(problem, theta)
    assert rel(truncated.grad, problem.reference_algorithm_gradient(theta, K, LR, truncate=1)) < 1e-12
    assert float(truncated.grad[HEAD].abs().max()) == 0 and float(truncated.grad[: HEAD.start].norm()) > 1e-3
    # fomaml: grad_theta f at phi_K (the backbone) plus grad_phi f placed on the head's initialisation
    fomaml = mb.get_algorithm("fomaml", inner_steps=K, inner_lr=LR).hypergradient(problem, theta).grad
    _, _, X_q, y_q = tiny_tasks()
    expected = torch.zeros_like(theta)
    for i, phi in enumerate(adapted_heads(theta, K, LR, 0.0, False)):
        at, head = theta.clone().requires_grad_(True), phi.detach().requires_grad_(True)
        g_theta, g_head = torch.autograd.grad(head_loss(at, head, X_q[i], y_q[i]), (at, head))
        expected += g_theta / N_TASKS
        expected[HEAD] += g_head / N_TASKS
    assert rel(fomaml, expected) < 1e-12


def test_the_vmap_path_computes_the_loop_path_meta_gradient():
    problem = tiny_problem(path="vmap")
    verdict = verify_vmap(problem, problem.initial_theta(), algorithm="anil")
    assert verdict["agree"] and verdict["rel_diff"] < 1e-12 and verdict["algorithm"] == "anil"


def test_anil_is_judged_against_the_k_step_reference():
    problem = tiny_problem()
    theta = problem.initial_theta()
    algorithm = mb.get_algorithm("anil", inner_steps=K, inner_lr=LR)
    out = evaluate(problem, algorithm, theta, None, algorithm.hypergradient(problem, theta).grad)
    assert out["truth_status"] == "ok" and out["reference_kind"] == UNROLLED_REFERENCE
    assert out["rel_error_reference"] < 1e-12 and out["rel_error_algorithm"] < 1e-12
    with pytest.raises(ValueError, match="not 'anil'"):
        tiny_problem(lam=1.0).reference_hypergradient(theta)


# ---------------------------------------------------------------------- refusals
def test_anil_refuses_problems_without_a_head_initialisation_in_theta():
    theta = tiny_problem().initial_theta()
    anil = mb.get_algorithm("anil", inner_steps=K, inner_lr=LR)
    with pytest.raises(ValueError, match="'maml' formulation adapts every weight.*use formulation='anil'"):
        anil.hypergradient(tiny_problem("maml"), theta)
    bilevel = tiny_problem("bilevel")
    with pytest.raises(ValueError, match="'bilevel' formulation.*use formulation='anil'"):
        anil.hypergradient(bilevel, bilevel.initial_theta())
    quadratic = QuadraticBilevel.generate(n_tasks=2, p=3, q=4, kappa=5.0, rho=0.5, seed=0)
    with pytest.raises(ValueError, match="no head initialisation"):
        anil.hypergradient(quadratic, torch.zeros(quadratic.theta_shape, dtype=F64))
    with pytest.raises(ValueError, match="features='once'"):
        mb.get_algorithm("anil", features="once").hypergradient(tiny_problem(), theta)


@pytest.mark.parametrize("name", ["imaml", "rm_metal", "neumann", "reptile"])
def test_algorithms_whose_math_assumes_phi_is_theta_refuse_the_anil_formulation(name):
    problem = tiny_problem(lam=1.0)  # strongly convex: the refusal is the formulation's, not lam's
    with pytest.raises(ValueError, match="anil formulation"):
        mb.get_algorithm(name).hypergradient(problem, problem.initial_theta())


# ---------------------------------------------------------------------- counts
@pytest.mark.parametrize("tasks, chunk", [(None, None), (None, 2), ([1], None)])
def test_counts_are_the_oracle_calls(tasks, chunk):
    problem = tiny_problem()
    result = mb.get_algorithm("anil", inner_steps=K, inner_lr=LR, task_chunk=chunk).hypergradient(
        problem, problem.initial_theta(), tasks=tasks
    )
    n = N_TASKS if tasks is None else len(tasks)
    assert result.counts == OracleCounts(inner_grads=n * K, outer_grads=n, hvps=n * K)
    assert result.info["task_chunk"] == (1 if chunk is None else min(chunk, n))

"""The least compute that reaches a target error on linear meta-regression, found by search (iMAML Table 1).

For a variant (maml with GD or Nesterov's inner solver, imaml with either), a problem, theta and a target
relative error delta, the search finds the cheapest inner steps K (and, for imaml, CG iterations m) whose
meta-gradient is within delta of the exact hypergradient::

    maml:   least K with ||g_K - grad F|| <= delta ||grad F||            cost 2K + 1 oracle calls per task
    imaml:  least K + m over (K, m) with ||g_{K,m} - grad F|| <= ...     cost K + m + 3 oracle calls per task

(maml: K inner gradients, K back-propagated steps, one outer gradient; imaml: K + 1 inner gradients, m
Hessian-vector products, one outer gradient, one cross product: what the oracle counts.) The errors the search
reads are *predicted*, exactly, in float64, from the problem's matrices: the K-step iterate and its Jacobian in
the eigenbasis of A_i = H_i + lam I (closed form for GD, the scalar recurrence of Nesterov's method per
eigenvalue), then m CG iterations on the assembled A_i. The sweep then *measures* the point found and its
neighbours (K - 1; for imaml also m - 1), so the report's least compute comes from records alone and the
neighbours show it is least. The predicted errors are those of exactly the iterations metabench's algorithms
run (inner_lr = 1/L, momentum (sqrt(kappa) - 1)/(sqrt(kappa) + 1), v0 = 0), so prediction and measurement agree
to rounding.

maml's search scans every K from 1 (the first K whose error is within the target). imaml's finds K0, the least K
that any CG count reaches the target from (bisection), then tries every K from K0 to K0 + m_max with the least m
for each (one CG run records the error of every m), stopping once K alone exceeds the best cost found.
The prediction is exact up to rounding; the sweep measures the neighbours on both sides of the point, so the
least measured compute is read from records even where rounding moves the point by one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SearchResult", "least_compute_search", "predicted_maml_errors"]

#: the search aims for a predicted error within (1 - SEARCH_MARGIN) x the target (0: the target itself). The
#: measured error differs from the prediction by rounding: ~1e-9 relative for maml, up to ~2% for imaml at
#: kappa = 1e4 (CG in finite precision, autograd products against the assembled matrix), which the sweep
#: covers by measuring the point's neighbours (one more inner step, one more CG iteration) too
SEARCH_MARGIN = 0.0
#: the largest K the search considers (K = kappa ln(1/delta) GD steps at kappa = 1e4, delta = 1e-2 is ~5e4)
MAX_STEPS = 400_000
_CHUNK = 4096


@dataclass(frozen=True)
class SearchResult:
    """The least-compute point of a variant: K, m (imaml; None for maml), its predicted error and cost."""

    inner_steps: int | None
    cg_iters: int | None
    predicted_error: float
    cost: float
    reachable: bool
    note: str = ""


class _Quadratic:
    """The problem's per-task matrices in float64 and the eigenbasis of A_i = H_i + lam I."""

    def __init__(self, problem, theta: torch.Tensor):
        H, b, Hv, bv, A = problem._quadratics()
        self.lam = float(problem.lam)
        self.A, self.Hv, self.bv, self.b = A, Hv, bv, b
        self.a, self.Q = torch.linalg.eigh(A)
        self.theta = theta.detach().to(torch.float64)
        self.exact = problem.exact_hypergradient(theta)
        self.scale = float(self.exact.norm())
        self.z0 = torch.einsum("tde,d->te", self.Q, self.theta)  # Q'theta
        self.r = torch.einsum("tde,td->te", self.Q, b + self.lam * self.theta)  # Q'(b + lam theta)

    def outer_grad(self, phi: torch.Tensor) -> torch.Tensor:
        """grad L_i(phi) = Hv_i phi - bv_i for phi of shape (..., tasks, d)."""
        return torch.einsum("tde,...te->...td", self.Hv, phi) - self.bv

    def unrot(self, z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tde,...te->...td", self.Q, z)

    def rot(self, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tde,...td->...te", self.Q, v)

    def errors(self, grads: torch.Tensor) -> torch.Tensor:
        """Relative errors of meta-gradients (..., d) to the exact hypergradient."""
        return (grads - self.exact).norm(dim=-1) / self.scale


def _gd_iterates(q: _Quadratic, lr: float, steps: torch.Tensor):
    """(z_K, jacobian eigenvalues j_K) of K GD steps for each K in ``steps`` (shape (n, tasks, d))."""
    m = 1.0 - lr * q.a  # (tasks, d)
    k = steps.to(torch.float64).reshape(-1, 1, 1)
    power = m.unsqueeze(0) ** k
    with torch.no_grad():
        lam_a = lr * q.a
        geometric = torch.where(lam_a > 0, (1.0 - power) / torch.where(lam_a > 0, lam_a, 1.0), k.expand_as(power))
    z = power * q.z0 + geometric * lr * q.r  # sum_{j<K} m^j lr r = lr r (1 - m^K) / (lr a)
    jac = power + lr * q.lam * geometric
    return z, jac


def predicted_maml_errors(problem, theta, inner_lr: float, steps, momentum: float | None = None) -> torch.Tensor:
    """Exact relative errors of maml's meta-gradient after each K in ``steps`` (GD; Nesterov with ``momentum``)."""
    q = _Quadratic(problem, theta)
    steps = torch.as_tensor(list(steps), dtype=torch.long)
    if momentum is None:
        z, jac = _gd_iterates(q, inner_lr, steps)
        return _maml_errors(q, z, jac)
    out = torch.empty(len(steps), dtype=torch.float64)
    wanted = {int(k): i for i, k in enumerate(steps)}
    for k, z, jac in _nesterov_run(q, inner_lr, momentum, int(steps.max())):
        if k in wanted:
            out[wanted[k]] = _maml_errors(q, z.unsqueeze(0), jac.unsqueeze(0))[0]
    return out


def _maml_errors(q: _Quadratic, z: torch.Tensor, jac: torch.Tensor) -> torch.Tensor:
    """Errors of mean_i Q diag(jac) Q' grad L_i(phi_K) for stacked (n, tasks, d) iterates z = Q'phi_K."""
    grad_outer = q.outer_grad(q.unrot(z))
    grads = q.unrot(jac * q.rot(grad_outer)).mean(-2)
    return q.errors(grads)


def _nesterov_run(q: _Quadratic, lr: float, beta: float, steps: int):
    """Yield (K, z_K, j_K) for K = 0..steps: Nesterov's method per eigenvalue, with its Jacobian in theta.

    z: phi_{k+1} = (1 - lr a) y_k + lr r, y_{k+1} = phi_{k+1} + beta (phi_{k+1} - phi_k), y_0 = phi_0 = Q'theta;
    j (d phi/d theta): the same recurrence with input lr lam and start 1.
    """
    m = 1.0 - lr * q.a
    phi, y = q.z0.clone(), q.z0.clone()
    jp, jy = torch.ones_like(m), torch.ones_like(m)
    yield 0, phi, jp
    for k in range(1, steps + 1):
        phi_next = m * y + lr * q.r
        y = phi_next + beta * (phi_next - phi)
        phi = phi_next
        jp_next = m * jy + lr * q.lam
        jy = jp_next + beta * (jp_next - jp)
        jp = jp_next
        yield k, phi, jp


def _least_maml_steps(q: _Quadratic, lr: float, momentum: float | None, target: float) -> tuple[int | None, float]:
    """The first K whose predicted maml error is within ``target`` (None if none up to MAX_STEPS)."""
    if momentum is None:
        for start in range(1, MAX_STEPS + 1, _CHUNK):
            steps = torch.arange(start, min(start + _CHUNK, MAX_STEPS + 1))
            z, jac = _gd_iterates(q, lr, steps)
            errors = _maml_errors(q, z, jac)
            hit = (errors <= target).nonzero()
            if len(hit):
                i = int(hit[0, 0])
                return int(steps[i]), float(errors[i])
        return None, float(errors.min())
    best = math.inf
    for k, z, jac in _nesterov_run(q, lr, momentum, MAX_STEPS):
        if k == 0:
            continue
        error = float(_maml_errors(q, z.unsqueeze(0), jac.unsqueeze(0))[0])
        best = min(best, error)
        if error <= target:
            return k, error
    return None, best


class _Iterates:
    """phi_K (rotated) for any K, by the closed form (GD) or a cached recurrence (Nesterov)."""

    def __init__(self, q: _Quadratic, lr: float, momentum: float | None):
        self.q, self.lr, self.momentum = q, lr, momentum
        self._cache: list[torch.Tensor] = []
        self._run = None if momentum is None else _nesterov_run(q, lr, momentum, MAX_STEPS)

    def __call__(self, steps: int) -> torch.Tensor:
        if self.momentum is None:
            return _gd_iterates(self.q, self.lr, torch.tensor([steps]))[0][0]
        while len(self._cache) <= steps:
            self._cache.append(next(self._run)[1])
        return self._cache[steps]


def _cg_errors(q: _Quadratic, phi_rot: torch.Tensor, iters: int) -> torch.Tensor:
    """Errors of imaml's meta-gradient after each of m = 1..iters CG iterations (one run; CG iterates are nested).

    The same Hestenes-Stiefel recurrence from v0 = 0 as ``metabench.solvers.conjugate_gradient``, on the assembled
    A_i, recording every iterate; a task whose residual is exactly zero stops moving."""
    b = q.outer_grad(q.unrot(phi_rot))
    x, r = torch.zeros_like(b), b.clone()
    p = r.clone()
    rr = (r * r).sum(-1, keepdim=True)
    errors = torch.empty(iters, dtype=torch.float64)
    for m in range(iters):
        Ap = torch.einsum("tde,te->td", q.A, p)
        pAp = (p * Ap).sum(-1, keepdim=True)
        alpha = torch.where(rr > 0, rr / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Ap
        rr_next = (r * r).sum(-1, keepdim=True)
        p = r + torch.where(rr > 0, rr_next / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr)) * p
        rr = rr_next
        errors[m] = q.errors((q.lam * x).mean(0))
    return errors


def _least_imaml(q: _Quadratic, lr: float, momentum: float | None, target: float, max_cg: int) -> SearchResult:
    """min over (K, m) of K + m + 3 with error(K, m) <= target.

    K0, the least K reachable with the best CG count (all max_cg iterations; bisection), bounds the search: m*(K)
    <= max_cg, so no K beyond K0 + max_cg can cost less than K0 does. Every K in [K0, K0 + max_cg] is tried (one
    CG run gives the errors of every m at once) until K itself exceeds the best cost found."""
    iterates = _Iterates(q, lr, momentum)

    def best_error(k: int) -> float:
        return float(_cg_errors(q, iterates(k), max_cg).min())

    high = 1
    while best_error(high) > target:
        if high >= MAX_STEPS:
            return SearchResult(None, None, math.nan, math.nan, False, f"not within the target by K = {MAX_STEPS}")
        high = min(2 * high, MAX_STEPS)
    low = high // 2 if high > 1 else 0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if best_error(mid) <= target else (mid, high)
    best: SearchResult | None = None
    for k in range(high, high + max_cg + 1):
        if best is not None and k + 1 + 3 > best.cost:
            break
        errors = _cg_errors(q, iterates(k), max_cg)
        hit = (errors <= target).nonzero()
        if not len(hit):
            continue
        m = int(hit[0, 0]) + 1
        cost = k + m + 3
        if best is None or cost < best.cost:
            best = SearchResult(k, m, float(errors[m - 1]), float(cost), True)
    return best


def least_compute_search(
    problem, theta, algorithm: str, inner_lr: float, target: float, momentum: float | None = None
) -> SearchResult:
    """The least-compute point of ``algorithm`` ("maml" or "imaml"; GD, or Nesterov with ``momentum``)."""
    q = _Quadratic(problem, theta)
    target = target * (1.0 - SEARCH_MARGIN)
    if algorithm == "maml":
        k, error = _least_maml_steps(q, inner_lr, momentum, target)
        if k is None:
            return SearchResult(None, None, error, math.nan, False, f"not within the target by K = {MAX_STEPS}")
        return SearchResult(k, None, error, float(2 * k + 1), True)
    if algorithm == "imaml":
        return _least_imaml(q, inner_lr, momentum, target, max_cg=problem.dim)
    raise ValueError(f"least_compute_search handles maml and imaml, got {algorithm!r}")

"""Independent reference computations for the tests: assembled matrices and plain loops.

Nothing here calls metabench's algorithms, solvers or closed forms: it reads the problems' raw
tensors and recomputes every quantity the long way (explicit iteration, torch.linalg.solve).
"""

from __future__ import annotations

import torch


def linear_matrices(problem):
    """Per task float64 (A = H + lam I, b, Hv, bv, lam) of a LinearMetaRegression."""
    d = problem._data
    X, y, Xv, yv = (d[k].double() for k in ("X_tr", "y_tr", "X_val", "y_val"))
    n, m = X.shape[1], Xv.shape[1]
    H = X.transpose(1, 2) @ X / n
    A = H + problem.lam * torch.eye(X.shape[2], dtype=torch.float64)
    return (
        A,
        (X.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1) / n,
        Xv.transpose(1, 2) @ Xv / m,
        (Xv.transpose(1, 2) @ yv.unsqueeze(-1)).squeeze(-1) / m,
    )


def linear_gd_iterate(problem, theta, steps, lr):
    """phi_K per task by explicit GD on g_i = 1/2 phi'A phi - phi'(b + lam theta), from phi0 = theta."""
    A, b, _, _ = linear_matrices(problem)
    phi = theta.expand_as(b).clone()
    for _ in range(steps):
        phi = phi - lr * ((A @ phi.unsqueeze(-1)).squeeze(-1) - b - problem.lam * theta)
    return phi


def linear_outer_grad(problem, phi):
    """grad L_i(phi_i) = Hv_i phi_i - bv_i per task."""
    _, _, Hv, bv = linear_matrices(problem)
    return (Hv @ phi.unsqueeze(-1)).squeeze(-1) - bv


def linear_meta_loss_after(problem, theta, phi_fn):
    """mean_i L_i(phi_fn(theta)_i), with L_i evaluated from the raw validation data."""
    d = problem._data
    Xv, yv = d["X_val"].double(), d["y_val"].double()
    phi = phi_fn(theta)
    r = (Xv @ phi.unsqueeze(-1)).squeeze(-1) - yv
    return (r.pow(2).sum(-1) / (2 * Xv.shape[1])).mean()


def central_difference(fn, theta, h=1e-5):
    """Central finite-difference gradient of a scalar function of a 1-D float64 theta."""
    grad = torch.zeros_like(theta)
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = h
        grad[j] = (fn(theta + e) - fn(theta - e)) / (2 * h)
    return grad


def cg_reference(matrix, rhs, iters):
    """Textbook CG for one SPD system, from x0 = 0, exactly ``iters`` iterations (float64)."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    for _ in range(iters):
        rr = r @ r
        if rr == 0:
            break
        Ap = matrix @ p
        alpha = rr / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        p = r + (r @ r) / rr * p
    return x


def rel_error(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def solve_each(A, b):
    """x_i = A_i^-1 b_i, one matrix at a time (b of shape (..., n) or (..., n, k)).

    Not batched ``torch.linalg.solve``: with two or more intra-op threads, torch 2.13's batched LU returns
    garbage, raises or hangs on matrices of ~150 x 150 and up on some CPUs (see ``metabench/_linalg.py``)."""
    if A.dim() == 2:
        return torch.linalg.solve(A, b)
    return torch.stack([solve_each(a, bb) for a, bb in zip(A, b)])

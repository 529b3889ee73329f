"""``logistic_hyperparameters``: learning per-feature l2 weights of logistic regression (no closed form).

Task i has training data (X_i, y_i) and validation data (Xv_i, yv_i), labels in {-1, +1}. With
theta in R^d (log l2 weights) and phi = w in R^d (the task's weights)::

    g_i(theta, w) = mean_j log(1 + exp(-y_ij x_ij'w)) + 1/2 sum_k exp(theta_k) w_k^2    (strongly convex in w)
    f_i(theta, w) = mean_j log(1 + exp(-yv_ij xv_ij'w))                                (validation loss)
    phi0 = 0                                                                            (bilevel family)

There is no closed form, so the records carry reference errors: ``reference_hypergradient`` solves the inner
problem by Newton's method in float64 to ||grad|| <= 1e-12 and applies the implicit function theorem exactly,
grad F = mean_i -(exp(theta) * w_i*) * H_i^{-1} grad_w f_i (H_i the inner Hessian, assembled: d is small);
``reference_algorithm_gradient`` differentiates K plain GD steps in float64 with autograd.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from metabench.problems import BilevelProblem

__all__ = ["LogisticHyperparameters"]


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class LogisticHyperparameters(BilevelProblem):
    """Per-feature l2 weights of logistic regression, learned on validation loss (module docstring)."""

    family = "bilevel"
    truth = "reference"
    #: a small instance for metabench's conformance suite (which runs over every registered problem)
    conformance_params: ClassVar[dict] = {"n_tasks": 2, "dim": 3, "n_train": 8, "n_val": 8}

    def __init__(self, X, y, X_val, y_val, meta: dict | None = None):
        self._data = {"X": X, "y": y, "X_val": X_val, "y_val": y_val}
        self.n_tasks, self.n_train, dim = X.shape
        self.n_val = X_val.shape[1]
        self.theta_shape = self.phi_shape = (dim,)
        self._meta = dict(meta or {})

    @classmethod
    def generate(
        cls,
        n_tasks: int = 4,
        dim: int = 10,
        n_train: int = 20,
        n_val: int = 40,
        noise: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> LogisticHyperparameters:
        """Tasks around a shared weight vector: w_i = w + 0.5 N(0, I), x ~ N(0, I), y = sign(x'w_i + noise N(0, 1))."""
        for name, value, low in (
            ("n_tasks", n_tasks, 1),
            ("dim", dim, 1),
            ("n_train", n_train, 1),
            ("n_val", n_val, 1),
        ):
            _check_int(name, value, low)
        _check_int("seed", seed, 0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"noise must be a number >= 0, got {noise!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        gen = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        shared = torch.randn(dim, generator=gen, dtype=f64)
        w = shared + 0.5 * torch.randn(n_tasks, dim, generator=gen, dtype=f64)

        def draw(n):
            X = torch.randn(n_tasks, n, dim, generator=gen, dtype=f64)
            margin = torch.einsum("tnd,td->tn", X, w) + noise * torch.randn(n_tasks, n, generator=gen, dtype=f64)
            return X.to(dtype), torch.where(margin >= 0, 1.0, -1.0).to(dtype)

        X, y = draw(n_train)
        X_val, y_val = draw(n_val)
        meta = {"n_tasks": n_tasks, "dim": dim, "n_train": n_train, "n_val": n_val, "noise": noise, "seed": seed}
        return cls(X, y, X_val, y_val, meta=meta)

    # ------------------------------------------------------------------ the bilevel shape
    @staticmethod
    def _logistic(X, y, w):
        return F.softplus(-y * torch.einsum("tnd,td->tn", X, w)).mean(-1)

    def inner_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        return self._logistic(d["X"], d["y"], phi) + 0.5 * (theta.exp() * phi.pow(2)).sum(-1)

    def outer_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        return self._logistic(d["X_val"], d["y_val"], phi)

    def inner_init(self, theta, tasks):
        return theta.new_zeros(len(tasks), *self.phi_shape)

    @property
    def inner_strongly_convex(self) -> bool:
        return True  # exp(theta) > 0

    def describe(self) -> dict:
        return {"problem": "logistic_hyperparameters", **self._meta}

    # ------------------------------------------------------------------ float64 references
    def _hessian(self, theta, w, X):
        s = torch.sigmoid(torch.einsum("tnd,td->tn", X, w))
        curvature = s * (1 - s) / X.shape[1]  # d2/dm2 softplus(-y m) = s(1 - s), with y^2 = 1
        return torch.einsum("tnd,tn,tne->tde", X, curvature, X) + torch.diag_embed(theta.exp().expand_as(w))

    def reference_hypergradient(self, theta, tasks=None, *, damping: float = 0.0, **_budget) -> torch.Tensor:
        """The implicit hypergradient in float64 (module docstring); ``damping`` adds damping * I to H."""
        index = self.task_index(tasks)
        theta = theta.detach().to(torch.float64)
        d = {k: v.to(torch.float64) for k, v in self.batch_data(theta, index).items()}
        w = theta.new_zeros(len(index), *self.phi_shape)
        for _ in range(100):  # Newton on a strongly convex, smooth g: quadratic convergence
            w.requires_grad_(True)
            with torch.enable_grad():
                g = (self._logistic(d["X"], d["y"], w) + 0.5 * (theta.exp() * w.pow(2)).sum(-1)).sum()
                (grad,) = torch.autograd.grad(g, w)
            w = w.detach()
            if float(grad.abs().max()) <= 1e-12:
                break
            w = w - torch.linalg.solve(self._hessian(theta, w, d["X"]), grad.unsqueeze(-1)).squeeze(-1)
        else:
            raise RuntimeError("the reference Newton solve did not converge in 100 steps")
        w.requires_grad_(True)
        with torch.enable_grad():
            (grad_f,) = torch.autograd.grad(self._logistic(d["X_val"], d["y_val"], w).sum(), w)
        H = self._hessian(theta, w.detach(), d["X"]) + damping * torch.eye(self.phi_shape[0], dtype=torch.float64)
        v = torch.linalg.solve(H, grad_f.unsqueeze(-1)).squeeze(-1)
        return (-(theta.exp() * w.detach()) * v).mean(0)

    def reference_algorithm_gradient(self, theta, inner_steps, inner_lr, truncate=None, tasks=None) -> torch.Tensor:
        """d/dtheta mean_i f_i(theta, w_K,i(theta)) through K GD steps from 0 (the last ``truncate``), float64."""
        index = self.task_index(tasks)
        theta = theta.detach().to(torch.float64).requires_grad_(True)
        start = inner_steps - (inner_steps if truncate is None else truncate)
        with torch.enable_grad():
            w = self.inner_init(theta, index).requires_grad_(True)
            for k in range(inner_steps):
                if k == start and start > 0:
                    w = w.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.inner_loss(theta, w, index).sum(), w, create_graph=k >= start)
                w = w - inner_lr * grad
            (out,) = torch.autograd.grad(self.outer_loss(theta, w, index).mean(), theta, allow_unused=True)
        return torch.zeros_like(theta) if out is None else out.detach()

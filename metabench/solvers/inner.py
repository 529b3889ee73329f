"""Inner solvers: K steps on g(theta, .) from phi0, differentiable through the last T steps.

Both solvers take ``grad_fn(phi, track)``, the batched inner gradient grad_phi g(theta, phi):
with ``track=True`` it must build a graph (create_graph) so the step can be back-propagated,
with ``track=False`` it returns a detached gradient. Steps before K - T run untracked and
their output is detached, so phi_{K-T} is held constant (truncated back-prop); T = K keeps
the dependence of phi0 on theta, T = 0 runs the whole loop without a graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metabench.errors import DivergenceError

__all__ = ["INNER_SOLVERS", "gradient_descent", "nesterov", "run_inner_solver"]

GradFn = Callable[[torch.Tensor, bool], torch.Tensor]


def gradient_descent(
    grad_fn: GradFn, phi0: torch.Tensor, steps: int, lr: float, backprop_steps: int, **_
) -> torch.Tensor:
    """phi_{k+1} = phi_k - lr grad_phi g(theta, phi_k), k = 0..K-1; returns phi_K."""
    start = steps - backprop_steps
    phi = phi0 if start == 0 else phi0.detach()
    for k in range(steps):
        if k == start and start > 0:
            phi = phi.detach()
        phi = phi - lr * grad_fn(phi, k >= start)
    return phi


def nesterov(
    grad_fn: GradFn, phi0: torch.Tensor, steps: int, lr: float, backprop_steps: int, momentum: float | None = None
) -> torch.Tensor:
    """Nesterov's accelerated gradient (iMAML Table 1, row 2); returns phi_K.

    y_0 = phi_0;  phi_{k+1} = y_k - lr grad_phi g(theta, y_k);  y_{k+1} = phi_{k+1} + beta_k (phi_{k+1} - phi_k),
    with beta_k = ``momentum`` when given (for a mu-strongly convex, L-smooth g the optimal
    constant is (sqrt(kappa) - 1)/(sqrt(kappa) + 1) with lr = 1/L) and beta_k = k/(k+3) otherwise.
    """
    start = steps - backprop_steps
    phi = y = phi0 if start == 0 else phi0.detach()
    for k in range(steps):
        if k == start and start > 0:
            phi, y = phi.detach(), y.detach()
        phi_next = y - lr * grad_fn(y, k >= start)
        beta = momentum if momentum is not None else k / (k + 3)
        y = phi_next + beta * (phi_next - phi)
        phi = phi_next
    return phi


INNER_SOLVERS = {"gd": gradient_descent, "nesterov": nesterov}


def run_inner_solver(
    solver: str,
    grad_fn: GradFn,
    phi0: torch.Tensor,
    steps: int,
    lr: float,
    backprop_steps: int,
    momentum: float | None = None,
) -> torch.Tensor:
    """Run the named inner solver; raise ``DivergenceError`` if phi_K is not finite."""
    if not isinstance(solver, str) or solver not in INNER_SOLVERS:
        raise ValueError(f"inner_solver must be one of {sorted(INNER_SOLVERS)}, got {solver!r}")
    if steps == 0:  # phi_K = phi0, as a tensor of its own (phi0 may be a view of theta)
        return phi0.clone()
    phi = INNER_SOLVERS[solver](grad_fn, phi0, steps, lr, backprop_steps, momentum=momentum)
    if not bool(torch.isfinite(phi).all()):
        raise DivergenceError(
            f"inner solver {solver!r} diverged: phi is not finite after {steps} steps with inner_lr={lr} "
            "(GD on an L-smooth inner problem needs inner_lr < 2/L)"
        )
    return phi

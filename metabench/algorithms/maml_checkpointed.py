"""MAML with gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").

Computes MAML's meta-gradient exactly, grad = d/dtheta mean_i f_i(theta, phi_K,i(theta)) with
back-prop through all K inner steps (``gd`` or ``nesterov``), but keeps only the solver state
(phi, or (phi, y) for Nesterov) at the boundaries of segments of C = ``checkpoint_every`` steps
(None: C = max(1, round(sqrt(K)))). Forward runs each segment without a graph; backward re-runs
one segment at a time with differentiable steps (inner gradient with create_graph=True) and
back-propagates through it, so memory is O(K/C + C) steps' worth, O(sqrt(K)) at the default C,
instead of maml's O(K).

The price is one extra forward pass: inner_grads = 2 n K (n K forward + n K recomputed during
backward), outer_grads = n, hvps = n K (one per back-propagated step), as for maml otherwise.

Why not ``torch.utils.checkpoint``: the reentrant variant refuses ``torch.autograd.grad``, and the
non-reentrant one, when the checkpointed function itself calls ``autograd.grad`` (each inner step
does), recomputes the segment prefix during the forward at every step (documented, "Rule 6" in
torch/utils/checkpoint.py) and keeps those recomputed tensors alive: O(C^2) inner gradients per
segment and more memory than plain maml. Each segment here is a small ``autograd.Function`` instead.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from metabench._checks import check_int
from metabench.algorithms.base import INNER_OPTIONS, Option
from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm
from metabench.errors import DivergenceError

__all__ = ["MAMLCheckpointed"]


class _Segment(torch.autograd.Function):
    """state -> run(theta, state): forward without a graph, backward by recomputation."""

    @staticmethod
    def forward(ctx, run, theta, *state):
        ctx.run = run
        ctx.save_for_backward(theta, *state)
        with torch.enable_grad():  # the inner gradients themselves need autograd (not create_graph)
            out = run(theta.detach(), *(s.detach() for s in state), track=False)
        return tuple(o.detach() for o in out)

    @staticmethod
    def backward(ctx, *grad_out):
        wanted = ctx.needs_input_grad[1:]
        inputs = [x.detach().requires_grad_(need) for x, need in zip(ctx.saved_tensors, wanted)]
        with torch.enable_grad():
            out = ctx.run(*inputs, track=True)
            targets = [x for x in inputs if x.requires_grad]
            grads = iter(torch.autograd.grad(out, targets, grad_out, allow_unused=True)) if targets else iter(())
        return (None, *(next(grads) if need else None for need in wanted))


def _checkpoint_every(name, value):
    return None if value is None else check_int(name, value, low=1)


@register
class MAMLCheckpointed(UnrolledAlgorithm):
    name = "maml_checkpointed"
    options_spec = INNER_OPTIONS | {
        "checkpoint_every": Option(None, _checkpoint_every, "C, inner steps per recomputed segment; None: sqrt(K)"),
    }

    def segment_length(self) -> int:
        """C, the inner steps per recomputed segment (the last one may be shorter)."""
        c = self.checkpoint_every
        return max(1, round(math.sqrt(self.inner_steps))) if c is None else c

    def _compute(self, problem, theta, tasks, state):
        result = super()._compute(problem, theta, tasks, state)  # maml's engine, with _run_inner below
        result.counts = replace(result.counts, inner_grads=2 * len(tasks) * self.inner_steps)
        c = self.segment_length()
        result.info.update(checkpoint_every=c, segments=-(-self.inner_steps // c))
        return result

    def _run_inner(self, problem, theta, phi0, tasks, backprop_steps):
        """phi_K, differentiable through all K steps, from recomputed segments."""
        K, lr, momentum, nesterov = self.inner_steps, self.inner_lr, self.momentum, self.inner_solver == "nesterov"
        if K == 0:
            return phi0.clone()

        def inner_grad(theta, phi, track):  # as Algorithm._run_inner's grad_fn
            phi_in = phi if track and phi.requires_grad else phi.detach().requires_grad_()
            loss = problem.inner_loss(theta, phi_in, tasks).sum()
            return torch.autograd.grad(loss, phi_in, create_graph=track)[0]

        def segment(start, stop):
            def run(theta, phi, *y, track):  # the steps of metabench.solvers.inner; state (phi,) or (phi, y)
                for k in range(start, stop):
                    if not nesterov:
                        phi = phi - lr * inner_grad(theta, phi, track)
                        continue
                    phi_next = y[0] - lr * inner_grad(theta, y[0], track)
                    beta = momentum if momentum is not None else k / (k + 3)
                    phi, y = phi_next, (phi_next + beta * (phi_next - phi),)
                return (phi, *y)

            return run

        c = self.segment_length()
        state = (phi0, phi0) if nesterov else (phi0,)
        for start in range(0, K, c):
            state = _Segment.apply(segment(start, min(start + c, K)), theta, *state)
        phi = state[0]
        if not bool(torch.isfinite(phi).all()):
            raise DivergenceError(
                f"inner solver {self.inner_solver!r} diverged: phi is not finite after {K} steps with "
                f"inner_lr={lr} (GD on an L-smooth inner problem needs inner_lr < 2/L)"
            )
        return phi

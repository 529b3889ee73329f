"""MAML with gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").

Computes MAML's meta-gradient exactly, grad = d/dtheta mean_i f_i(theta, phi_K,i(theta)) with
back-prop through all K inner steps of the inner solver it is given, but keeps only the solver's state
(phi for GD, (phi, y) for Nesterov, whatever tuple another solver steps on) at the boundaries of
segments of C = ``checkpoint_every`` steps (None: C = max(1, round(sqrt(K)))). Forward runs each
segment without a graph; backward re-runs one segment at a time with differentiable steps (inner
gradient with create_graph=True) and back-propagates through it, so memory is O(K/C + C) steps' worth,
O(sqrt(K)) at the default C, instead of maml's O(K). Any solver whose step depends on (theta, k, state)
alone (``InnerSolver.checkpointable``) can be recomputed this way; another is refused.

The price is one extra forward pass, and the oracle counts it: inner_grads = 2 n K (n K forward + n K
recomputed during backward), outer_grads = n, hvps = n K (one per back-propagated step).

Why not ``torch.utils.checkpoint``: the reentrant variant refuses ``torch.autograd.grad``, and the
non-reentrant one, when the checkpointed function itself calls ``autograd.grad`` (each inner step
does), recomputes the segment prefix during the forward at every step (documented, "Rule 6" in
torch/utils/checkpoint.py) and keeps those recomputed tensors alive: O(C^2) inner gradients per
segment and more memory than plain maml. Each segment here is a small ``autograd.Function`` instead.
"""

from __future__ import annotations

import math

import torch

from metabench.algorithms.base import INNER_OPTIONS
from metabench.algorithms.inner_loop import InnerRun
from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm
from metabench.options import pick

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


@register
class MAMLCheckpointed(UnrolledAlgorithm):
    name = "maml_checkpointed"
    options_spec = INNER_OPTIONS | pick("checkpoint_every")

    def __init__(self, **options):
        super().__init__(**options)
        if not self.inner.checkpointable:
            raise ValueError(
                f"maml_checkpointed recomputes inner steps from stored solver states, and inner solver "
                f"{self.inner!r} says its step is not a function of its state alone (checkpointable = False)"
            )

    def graph_depth(self) -> int:
        """One recomputed segment at a time, plus one node per segment boundary."""
        return self.segment_length() + -(-self.inner_steps // self.segment_length())

    def segment_length(self) -> int:
        """C, the inner steps per recomputed segment (the last one may be shorter)."""
        c = self.checkpoint_every
        return max(1, round(math.sqrt(self.inner_steps))) if c is None else c

    def _compute(self, oracle, theta, state):
        result = super()._compute(oracle, theta, state)  # maml's engine, with _run_inner below
        c = self.segment_length()
        result.info.update(checkpoint_every=c, segments=-(-self.inner_steps // c))
        return result

    def _run_inner(self, oracle, theta, phi0, backprop_steps):
        """phi_K, differentiable through all K steps, from recomputed segments."""
        K, solver = self.inner_steps, self.inner
        if K == 0:
            return phi0.clone()
        watch = InnerRun(oracle, theta, solver)  # sees the forward pass: first and last inner objective

        def segment(start, stop):
            def run(theta, *state, track):
                inner = InnerRun(oracle, theta, solver) if track else watch
                inner.theta, inner.track = theta, track
                for k in range(start, stop):
                    state = solver.step(inner, k, state)
                return state

            return run

        c = self.segment_length()
        state = solver.init(phi0)
        for start in range(0, K, c):
            state = _Segment.apply(segment(start, min(start + c, K)), theta, *state)
        watch.check(state[0], K)
        return state[0]

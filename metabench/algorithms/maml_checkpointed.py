"""MAML with gradient checkpointing (Chen et al. 2016; Griewank & Walther's Revolve): exact, in less memory.

Computes MAML's meta-gradient exactly, grad = d/dtheta mean_i f_i(theta, phi_K,i(theta)) with
back-prop through all K inner steps of the inner solver it is given, but keeps only some of the solver's
states (phi for GD, (phi, y) for Nesterov, whatever tuple another solver steps on) and re-runs steps
from them during the backward pass, following a checkpoint ``schedule``
(:mod:`metabench.algorithms.checkpoint_schedule`):

- ``"sqrt"`` (default): segments of C = ``checkpoint_every`` steps (None: C = max(1, round(sqrt(K)))), memory
  O(K/C + C) steps' worth, O(sqrt(K)) at the default C, instead of maml's O(K);
- ``"every_step"``: every state stored, one step's graph at a time;
- ``"revolve"``: binomial checkpointing with ``snapshots`` stored states (or as many as ``snapshot_memory``
  bytes hold; default ceil(log2 K)), one step's graph at a time, memory O(s) at a recompute factor that
  grows like K^(1/s).

Any solver whose step depends on (theta, k, state) alone (``InnerSolver.checkpointable``) can be recomputed
this way; another is refused. The oracle counts what is recomputed: for "sqrt" and "every_step"
inner_grads = n (2K - L), n K forward and every step but the L of the last segment (kept with its graph
from the forward pass) recomputed in the backward; for "revolve" more (``info["recompute_factor"]`` = inner
steps run / K); always outer_grads = n, hvps = n K (one per back-propagated step).

Why not ``torch.utils.checkpoint``: the reentrant variant refuses ``torch.autograd.grad``, and the
non-reentrant one, when the checkpointed function itself calls ``autograd.grad`` (each inner step
does), recomputes the segment prefix during the forward at every step (documented, "Rule 6" in
torch/utils/checkpoint.py) and keeps those recomputed tensors alive: O(C^2) inner gradients per
segment and more memory than plain maml. Each segment here is a small ``autograd.Function`` instead.
"""

from __future__ import annotations

import math

from metabench.algorithms.base import INNER_OPTIONS
from metabench.algorithms.checkpoint_schedule import ScheduledInnerLoop, build_schedule
from metabench.algorithms.inner_loop import InnerRun
from metabench.algorithms.registry import register
from metabench.algorithms.unrolled import UnrolledAlgorithm
from metabench.options import pick

__all__ = ["MAMLCheckpointed"]


@register
class MAMLCheckpointed(UnrolledAlgorithm):
    name = "maml_checkpointed"
    options_spec = INNER_OPTIONS | pick("checkpoint_every", "schedule", "snapshots", "snapshot_memory")

    def __init__(self, **options):
        super().__init__(**options)
        if not self.inner.checkpointable:
            raise ValueError(
                f"maml_checkpointed recomputes inner steps from stored solver states, and inner solver "
                f"{self.inner!r} says its step is not a function of its state alone (checkpointable = False)"
            )

    def _check_options(self) -> None:
        if self.schedule != "sqrt" and self.checkpoint_every is not None:
            raise ValueError(
                f"checkpoint_every sets the sqrt schedule's segments; schedule={self.schedule!r} takes none"
            )
        if self.schedule != "revolve" and (self.snapshots is not None or self.snapshot_memory is not None):
            raise ValueError(f"snapshots and snapshot_memory set the revolve schedule; schedule={self.schedule!r}")
        if self.snapshots is not None and self.snapshot_memory is not None:
            raise ValueError("give snapshots or snapshot_memory, not both")

    def graph_depth(self) -> int:
        """The steps of one autograd graph held at once: one recomputed segment (sqrt), one step otherwise."""
        return self.segment_length() if self.schedule == "sqrt" else 1

    def segment_length(self) -> int:
        """C, the inner steps per recomputed segment of the sqrt schedule (the last one may be shorter)."""
        c = self.checkpoint_every
        return max(1, round(math.sqrt(self.inner_steps))) if c is None else c

    def snapshot_count(self, state_bytes: int) -> int:
        """s, the states the revolve schedule stores: ``snapshots``, or as many as ``snapshot_memory`` bytes hold
        (at least 1), or ceil(log2 K) by default."""
        if self.snapshots is not None:
            return self.snapshots
        if self.snapshot_memory is not None:
            return max(1, int(self.snapshot_memory // max(1, state_bytes)))
        return max(1, math.ceil(math.log2(max(2, self.inner_steps))))

    def _compute(self, oracle, theta, state):
        self._stats = {}
        result = super()._compute(oracle, theta, state)  # maml's engine, with _run_inner below
        K = self.inner_steps
        info = {"schedule": self.schedule}
        if self.schedule == "sqrt":
            c = self.segment_length()
            info.update(checkpoint_every=c, segments=-(-K // c))
        elif self.schedule == "revolve":
            info["snapshots"] = self._stats.get("snapshots")
        if K:
            info["recompute_factor"] = self._stats["steps_run"] / K
            info["stored_states"] = self._stats["max_stored"]
        result.info.update(info)
        return result

    def _run_inner(self, oracle, theta, phi0, backprop_steps):
        """phi_K, differentiable through all K steps, by the checkpoint schedule."""
        K, solver = self.inner_steps, self.inner
        if K == 0:
            self._stats.update(steps_run=0, max_stored=0)
            return phi0.clone()
        watch = InnerRun(oracle, theta, solver)  # sees the forward pass: first and last inner objective

        def step(theta, k, state, track, first):
            inner = watch if first else InnerRun(oracle, theta, solver)
            inner.theta, inner.track = theta, track
            return solver.step(inner, k, state)

        start = solver.init(phi0)
        snapshots = None
        if self.schedule == "revolve":
            snapshots = self.snapshot_count(sum(s.numel() * s.element_size() for s in start))
            self._stats["snapshots"] = snapshots
        actions = build_schedule(self.schedule, K, every=self.checkpoint_every, snapshots=snapshots)
        out = ScheduledInnerLoop.apply(step, actions, self._stats, theta, *start)
        watch.check(out[0], K)
        return out[0]

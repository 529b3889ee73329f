"""Checkpoint schedules for exact MAML: which inner states to keep, and a reverse pass that follows them.

A schedule is a list of the ``checkpoint_schedules`` package's actions (Maddison, Ham et al.; the Revolve
family of Griewank & Walther): ``Forward(n0, n1, write_ics, write_adj_deps, storage)`` advances the inner loop
from step n0 to n1, first storing the state at n0 (``write_ics``) and keeping each step's graph for the reverse
pass (``write_adj_deps``); ``Reverse(n1, n0)`` back-propagates the adjoint over steps n1-1 .. n0;
``Copy``/``Move(n, from, to)`` bring a stored state back to work on. Three schedules (``SCHEDULES``):

``"sqrt"``
    segments of C steps (C = ``checkpoint_every``, default round(sqrt K)): the state at each segment's start is
    stored, each segment is re-run with its graph and back-propagated, last segment first. K/C states and C
    steps' graphs: memory O(sqrt K), each step run twice.
``"every_step"``
    every inner state stored, each step re-run with its graph once in reverse: K states (phi, a weight vector:
    small beside a step's activations) and one step's graph; each step run twice.
``"revolve"``
    binomial checkpointing (``checkpoint_schedules.Revolve``) with s = ``snapshots`` stored states (or as many
    as ``snapshot_memory`` bytes hold): one step's graph at a time and s states, at the fewest recomputed steps
    any s-snapshot schedule needs (about t K forward steps where C(s + t, s) >= K: t = 4 for K = 1000, s = 10).

:class:`ScheduledInnerLoop` runs one: an ``autograd.Function`` whose forward performs the actions up to
``EndForward`` (returning phi_K) and whose backward performs the rest, so the meta-gradient is exactly the
back-propagation through all K steps, whatever the schedule (what is recomputed is the same arithmetic).
"""

from __future__ import annotations

import math

import torch
from checkpoint_schedules import (
    Copy,
    EndForward,
    EndReverse,
    Forward,
    Move,
    Reverse,
    Revolve,
    StorageType,
)

__all__ = ["SCHEDULES", "ScheduledInnerLoop", "build_schedule"]

SCHEDULES = ("sqrt", "revolve", "every_step")


def _segments(K: int, C: int) -> list:
    """Segments of C steps: store each start, then re-run and reverse them last first."""
    starts = list(range(0, K, C))
    actions = [Forward(s, min(s + C, K), True, False, StorageType.RAM) for s in starts[:-1]]
    actions += [Forward(starts[-1], K, False, True, StorageType.WORK), EndForward(), Reverse(K, starts[-1], True)]
    for s in reversed(starts[:-1]):
        stop = min(s + C, K)
        actions += [Move(s, StorageType.RAM, StorageType.WORK), Forward(s, stop, False, True, StorageType.WORK)]
        actions.append(Reverse(stop, s, True))
    return [*actions, EndReverse()]


def build_schedule(name: str, K: int, *, every: int | None = None, snapshots: int | None = None) -> list:
    """The actions of schedule ``name`` for K >= 1 inner steps (module docstring)."""
    if name == "sqrt":
        return _segments(K, max(1, round(math.sqrt(K))) if every is None else every)
    if name == "every_step":
        return _segments(K, 1)
    if name == "revolve":
        if snapshots is None or snapshots < 1:
            raise ValueError(f"the revolve schedule needs snapshots >= 1, got {snapshots!r}")
        actions = []
        for action in Revolve(K, snapshots):
            actions.append(action)
            if isinstance(action, EndReverse):
                return actions
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {name!r}")


class ScheduledInnerLoop(torch.autograd.Function):
    """``state_K = apply(step, actions, stats, theta, *state_0)``: the inner loop run by a checkpoint schedule.

    ``step(theta, k, state, track, first)`` performs inner step k (``track``: with its graph, for the reverse
    pass; ``first``: in the forward pass, not a recomputation, so a divergence watch may look at it);
    ``stats`` (a dict) receives ``steps_run`` (inner steps performed, forward and recomputed) and
    ``max_stored`` (the most states held at once)."""

    @staticmethod
    def forward(ctx, step, actions, stats, theta, *state):
        ctx.step, ctx.stats = step, stats
        ctx.theta = theta.detach().requires_grad_(True)
        ctx.stored, ctx.graphs = {}, {}
        ctx.work = tuple(s.detach() for s in state)
        ctx.actions = iter(actions)
        stats.update(steps_run=0, max_stored=0)
        ctx.first = True
        for action in ctx.actions:
            if isinstance(action, EndForward):
                break
            _perform(ctx, action)
        ctx.work_at_end = ctx.work
        return tuple(s.detach() for s in ctx.work)

    @staticmethod
    def backward(ctx, *adjoint):
        ctx.adjoint = [a if a is not None else torch.zeros_like(s) for a, s in zip(adjoint, ctx.work_at_end)]
        ctx.theta_grad = torch.zeros_like(ctx.theta)
        ctx.first = False
        for action in ctx.actions:
            if isinstance(action, EndReverse):
                break
            _perform(ctx, action)
        if ctx.graphs:
            raise RuntimeError(f"the checkpoint schedule left the graphs of steps {sorted(ctx.graphs)} unreversed")
        return (None, None, None, ctx.theta_grad, *ctx.adjoint)


def _perform(ctx, action) -> None:
    if isinstance(action, Forward):
        _forward(ctx, action)
    elif isinstance(action, Reverse):
        for k in range(action.n1 - 1, action.n0 - 1, -1):
            inputs, outputs = ctx.graphs.pop(k)
            with torch.enable_grad():
                grads = torch.autograd.grad(outputs, (ctx.theta, *inputs), ctx.adjoint, allow_unused=True)
            if grads[0] is not None:
                ctx.theta_grad = ctx.theta_grad + grads[0]
            ctx.adjoint = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads[1:], inputs)]
    elif isinstance(action, (Copy, Move)):
        if action.to_storage == StorageType.WORK:
            ctx.work = ctx.stored[action.n] if isinstance(action, Copy) else ctx.stored.pop(action.n)
        else:  # to RAM or disk (kept in memory: the states are small)
            ctx.stored[action.n] = ctx.stored[action.n] if action.from_storage != StorageType.WORK else ctx.work
            if isinstance(action, Move) and action.from_storage != StorageType.WORK:
                ctx.stored.pop(action.n)
    else:
        raise TypeError(f"unexpected checkpoint action {action!r}")


def _forward(ctx, action) -> None:
    if action.write_ics:
        ctx.stored[action.n0] = ctx.work
        ctx.stats["max_stored"] = max(ctx.stats["max_stored"], len(ctx.stored))
    state = ctx.work
    for k in range(action.n0, action.n1):
        ctx.stats["steps_run"] += 1
        if action.write_adj_deps:
            inputs = tuple(s.detach().requires_grad_(True) for s in state)
            with torch.enable_grad():
                outputs = ctx.step(ctx.theta, k, inputs, track=True, first=ctx.first)
            ctx.graphs[k] = (inputs, outputs)
            state = tuple(o.detach() for o in outputs)
        else:
            with torch.enable_grad():  # the inner gradient itself needs autograd (not create_graph)
                state = tuple(s.detach() for s in ctx.step(ctx.theta.detach(), k, state, track=False, first=ctx.first))
    ctx.work = state

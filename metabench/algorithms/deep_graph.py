"""Run a computation whose autograd graph is very deep on a thread with a stack to match.

Back-propagating through K inner steps builds a chain of K x (a few) autograd nodes. The backward pass walks it
iteratively, but freeing the chain afterwards recurses node by node in C++, on the thread that drops the last
reference: measured here (torch 2.13, the default 8 MiB stack), maml with K = 29191 steps on a 200-dimensional
problem crashes the whole process with a segmentation fault when its graph is freed, while K = 14000 passes.
``call_with_stack(fn, depth)`` runs ``fn`` (which must return only detached results, so the graph dies inside)
on a new thread whose stack grows with ``depth``; shallow calls run inline, at no cost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DEEP_STEPS", "call_with_stack"]

T = TypeVar("T")

#: graphs of more tracked inner steps than this are built and freed on a thread with a larger stack
DEEP_STEPS = 5000
#: stack bytes per tracked inner step (the freeing recursion needs a few hundred; a margin of 4x), at least 64 MiB
_BYTES_PER_STEP = 2048
_MIN_STACK = 64 * 2**20


def call_with_stack(fn: Callable[[], T], depth: int) -> T:
    """``fn()``, on a thread with a stack of max(64 MiB, 2 KiB x depth) when ``depth`` > DEEP_STEPS."""
    if depth <= DEEP_STEPS:
        return fn()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # re-raised on the caller's thread
            outcome["error"] = err

    size = max(_MIN_STACK, _BYTES_PER_STEP * depth)
    previous = threading.stack_size(size)
    try:
        worker = threading.Thread(target=target, name=f"metabench-deep-graph-{depth}", daemon=True)
        worker.start()
    finally:
        threading.stack_size(previous)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

"""Matmul-class floating-point operations of one call, with ``torch.utils.flop_counter``.

What is measured: the FLOPs that ``FlopCounterMode`` attributes to the ATen ops run by ``fn()``.
FlopCounterMode only has formulas for matmul/convolution/attention-class ops (``mm``, ``bmm``,
``addmm``, ``matmul`` via those, ``convolution``, SDPA, ...): elementwise ops, reductions and
solves count zero, so the figure is reported as *matmul FLOPs* (one multiply-add = 2 FLOPs).
It is a dispatch mode, so it sees every op actually executed, including autograd's backward
pass, double backward (Hessian-vector products) and ops under ``torch.func`` transforms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops"]


def count_flops(fn: Callable[[], Any]) -> dict:
    """Run ``fn()`` once under ``FlopCounterMode``: ``{"matmul_flops": int}``."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return {"matmul_flops": int(counter.get_total_flops())}

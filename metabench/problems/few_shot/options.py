"""The choices a few-shot problem takes (formulations, losses, task-batching paths, data sets) and their checks."""

from __future__ import annotations

import torch

__all__ = ["DATASETS", "DEFAULT_REG", "FORMULATIONS", "LOSSES", "PATHS", "check_choice", "check_dtype"]

FORMULATIONS = ("maml", "bilevel", "anil")
PATHS = ("auto", "loop", "vmap")
LOSSES = ("cross_entropy", "mse")
DATASETS = ("omniglot_like", "digits", "sinusoid")
#: The bilevel formulation's l2 weight on the head when none is given.
DEFAULT_REG = 0.1


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_dtype(dtype) -> torch.dtype:
    """``dtype`` if it is a floating-point torch.dtype, else a TypeError."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype

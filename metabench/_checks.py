"""Argument checks that name the parameter and the accepted range in their error."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = ["check_finite_tensor", "check_int", "check_real", "check_shape"]


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name`` and the range [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in {_range(low, high)}, got {value}")
    return value


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Return ``value`` as a finite float in [low, high] (or (low, high] if ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value <= low if low_open else value < low)
    if high is not None:
        bad = bad or value > high
    if bad:
        raise ValueError(f"{name} must be a finite number in {_range(low, high, low_open)}, got {value}")
    return value


def check_finite_tensor(name: str, value) -> torch.Tensor:
    """Raise unless ``value`` is a floating-point tensor with finite entries."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return value


def check_shape(name: str, value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Raise unless ``value.shape == shape``."""
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


def _range(low, high, low_open: bool = False) -> str:
    left = "(" if low_open else "["
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    right = ")" if high is None else "]"
    left = "(" if low is None else left
    return f"{left}{lo}, {hi}{right}"

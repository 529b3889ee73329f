"""Exceptions that name what went wrong in a hypergradient computation.

A sweep turns each of these into a record status instead of a crash:
``DivergenceError`` -> ``diverged``, ``SolverBreakdown`` -> ``failed`` with its text.
"""

from __future__ import annotations

__all__ = ["DivergenceError", "MetabenchError", "SolverBreakdown"]


class MetabenchError(RuntimeError):
    """Base class of metabench's run-time failures (not of bad input, which is ValueError)."""


class DivergenceError(MetabenchError):
    """An iterate or a result became non-finite (NaN or inf)."""


class SolverBreakdown(MetabenchError):
    """A linear solver met a direction of non-positive curvature (the system is not SPD)."""

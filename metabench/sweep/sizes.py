"""Named problem sizes: what the presets, ``metabench profile`` and the asv suites build, read from each problem.

A problem declares its standard instance once, as ``standard_params`` (``generate`` parameters; the closed-form
problems small enough that a sweep of hundreds of cases takes minutes on 2 cores, the few-shot problem 5-way
5-shot / 15-query tasks on metabench's conv4-64 with max-pooling, 4 tasks), and what ``metabench profile`` adds as
``profile_params``; a plugin's problem does the same. ``problem_case(name, **overrides)`` gives a flat sweep case.
"""

from __future__ import annotations

from typing import Any

from metabench.problems.registry import PROBLEMS

__all__ = ["problem_case", "profile_case", "standard_params"]


def standard_params(problem: str) -> dict[str, Any]:
    """The problem's standard instance (its ``standard_params``; a ValueError for an unknown problem)."""
    return dict(PROBLEMS.get(problem).standard_params)


def problem_case(problem: str, **overrides: Any) -> dict[str, Any]:
    """``{"problem": problem, **standard_params(problem), **overrides}``: a flat case on the standard instance."""
    return {"problem": problem, **standard_params(problem), **overrides}


def profile_case(problem: str) -> dict[str, Any]:
    """The flat case ``metabench profile`` starts from: the standard instance and the problem's ``profile_params``."""
    return problem_case(problem, **PROBLEMS.get(problem).profile_params)

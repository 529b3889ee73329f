"""Named problem sizes, typed once: what the presets, ``metabench profile`` and the asv suites build.

``STANDARD[problem]`` holds the generator parameters of the standard instance of each problem (the
closed-form problems small enough that a sweep of hundreds of cases takes minutes on 2 cores; for the
few-shot problem 5-way 5-shot / 15-query tasks on metabench's conv4-64 with max-pooling, 4 tasks).
``problem_case(name, **overrides)`` gives a flat sweep case on it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STANDARD", "problem_case"]

STANDARD: dict[str, dict[str, Any]] = {
    "linear_meta_regression": {"n_tasks": 4, "dim": 20, "n_train": 40, "n_val": 40, "lam": 1.0},
    "quadratic_bilevel": {"n_tasks": 4, "p": 10, "q": 20, "rho": 0.1},
    "few_shot_classification": {"dataset": "omniglot_like", "n_tasks": 4},
}


def problem_case(problem: str, **overrides: Any) -> dict[str, Any]:
    """``{"problem": problem, **STANDARD[problem], **overrides}``: a flat case on the standard instance."""
    if problem not in STANDARD:
        raise ValueError(f"no standard size for problem {problem!r}; known: {sorted(STANDARD)}")
    return {"problem": problem, **STANDARD[problem], **overrides}

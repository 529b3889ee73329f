"""Bilevel meta-learning problems: one shape (see ``base``), closed forms where they exist."""

from metabench.problems.base import BilevelProblem
from metabench.problems.few_shot import FewShotClassification
from metabench.problems.linear_regression import LinearMetaRegression
from metabench.problems.quadratic_bilevel import QuadraticBilevel

__all__ = ["BilevelProblem", "FewShotClassification", "LinearMetaRegression", "QuadraticBilevel", "available_problems"]


def available_problems() -> dict[str, type[BilevelProblem]]:
    """Problem classes by the name their records use."""
    return {
        "linear_meta_regression": LinearMetaRegression,
        "quadratic_bilevel": QuadraticBilevel,
        "few_shot_classification": FewShotClassification,
    }

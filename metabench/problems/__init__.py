"""Bilevel meta-learning problems: one shape (see ``base``), closed forms where they exist; the registries of
problems, models and task sources (``registry``)."""

from metabench.problems.base import BilevelProblem
from metabench.problems.few_shot import FewShotClassification
from metabench.problems.linear_regression import LinearMetaRegression
from metabench.problems.quadratic_bilevel import QuadraticBilevel
from metabench.problems.registry import DATASETS, MODELS, PROBLEMS, problem_params

__all__ = [
    "DATASETS",
    "MODELS",
    "PROBLEMS",
    "BilevelProblem",
    "FewShotClassification",
    "LinearMetaRegression",
    "QuadraticBilevel",
    "available_problems",
    "problem_params",
]


def available_problems() -> dict[str, type[BilevelProblem]]:
    """Problem classes by the name their records use: the built-in ones and every plugin's that loads
    (``PROBLEMS``, :mod:`metabench.problems.registry`)."""
    return PROBLEMS.items()

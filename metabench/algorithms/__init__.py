"""Hypergradient algorithms behind one interface: ``get_algorithm(name, **options).hypergradient(...)``.

Each algorithm module is imported here, explicitly, so that it registers itself.
"""

from metabench.algorithms import (  # noqa: F401
    anil,
    fomaml,
    imaml,
    itd_bio,
    maml,
    maml_checkpointed,
    neumann,
    reptile,
    rm_metal,
    truncated,
)
from metabench.algorithms.base import Algorithm, Option
from metabench.algorithms.implicit import ImplicitAlgorithm
from metabench.algorithms.registry import available_algorithms, get_algorithm, register
from metabench.algorithms.result import Hypergradient, OracleCounts
from metabench.algorithms.rm_metal import WarmStartState
from metabench.algorithms.unrolled import UnrolledAlgorithm

__all__ = [
    "Algorithm",
    "Hypergradient",
    "ImplicitAlgorithm",
    "Option",
    "OracleCounts",
    "UnrolledAlgorithm",
    "WarmStartState",
    "available_algorithms",
    "get_algorithm",
    "register",
]

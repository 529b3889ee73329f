"""Algorithms by name: an explicit registry, plus the ``metabench.algorithms`` entry-point group.

A new algorithm is one file: a subclass of ``UnrolledAlgorithm`` or ``ImplicitAlgorithm``
decorated with ``@register``, imported in ``metabench/algorithms/__init__.py``. Another
package registers by exposing the class under the entry-point group ``metabench.algorithms`` (the entry
point's name is the class's ``name``); see :mod:`metabench.registry` (lazy, a failing plugin is reported).
"""

from __future__ import annotations

from metabench.algorithms.base import Algorithm
from metabench.registry import Registry

__all__ = ["ALGORITHMS", "algorithm_class", "available_algorithms", "get_algorithm", "register"]


def _check(name: str, cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"algorithm {name!r} must be an Algorithm subclass, got {cls!r}")
    if cls.name != name:
        raise ValueError(f"algorithm {cls.__qualname__} is named {cls.name!r}, not {name!r} (its entry point's name)")


#: the algorithms by name (built-in ones register on import; plugins' load lazily and never break the rest)
ALGORITHMS = Registry("algorithm", "metabench.algorithms", _check)


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` available as ``get_algorithm(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"register expects an Algorithm subclass, got {cls!r}")
    return ALGORITHMS.register(cls.name, cls)


def available_algorithms() -> list[str]:
    """Names accepted by ``get_algorithm``, sorted (a plugin that failed to load is in ``ALGORITHMS.broken()``)."""
    return ALGORITHMS.names()


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered class of ``name``; an unknown name raises a ValueError listing the available ones, a plugin
    that failed to load a ``PluginError`` saying why."""
    return ALGORITHMS.get(name)


def get_algorithm(name: str, **options) -> Algorithm:
    """An algorithm instance by name; unknown names or options raise a clear error listing the accepted ones."""
    return algorithm_class(name)(**options)

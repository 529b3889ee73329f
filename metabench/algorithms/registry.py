"""Algorithms by name: an explicit registry, plus the ``metabench.algorithms`` entry-point group.

A new algorithm is one file: a subclass of ``UnrolledAlgorithm`` or ``ImplicitAlgorithm``
decorated with ``@register``, imported in ``metabench/algorithms/__init__.py``. Another
package registers by exposing the class under the entry-point group ``metabench.algorithms``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from metabench.algorithms.base import Algorithm

__all__ = ["algorithm_class", "available_algorithms", "get_algorithm", "register"]

_REGISTRY: dict[str, type[Algorithm]] = {}
_ENTRY_POINT_GROUP = "metabench.algorithms"


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` available as ``get_algorithm(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"register expects an Algorithm subclass, got {cls!r}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"an algorithm named {cls.name!r} is already registered ({existing.__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


_entry_points_loaded = False


def _load_entry_points() -> None:
    """Register the classes other packages expose under the entry-point group (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=_ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            register(ep.load())


def available_algorithms() -> list[str]:
    """Names accepted by ``get_algorithm``, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered class of ``name``; an unknown name raises a ValueError listing the available ones."""
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def get_algorithm(name: str, **options) -> Algorithm:
    """An algorithm instance by name; unknown names or options raise a clear error listing the accepted ones."""
    return algorithm_class(name)(**options)

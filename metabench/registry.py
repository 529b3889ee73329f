"""Named things that plugins can add: a registry per kind, with a decorator and an entry-point group.

``Registry(kind, group)`` holds objects by name. Built-in ones register with ``@REGISTRY.register("name")`` (or
``REGISTRY.register("name", obj)``) where they are defined; another package adds its own by declaring an entry
point in the group (``[project.entry-points."metabench.problems"] my_problem = "my_pkg.problems:MyProblem"``).
Entry points are read **lazily**: their names are known from package metadata without importing anything, and
one is imported the first time its name is asked for (or the whole kind is listed). A plugin whose import raises
is kept aside with its error (``broken()``, shown by ``metabench list``) and never breaks the rest: asking for
*that* name raises a :class:`PluginError` that quotes the error, every other name works as before.
``origins()`` says where each name comes from: ``built-in (module)`` or ``entry point NAME = VALUE (dist)``.

The kinds: ``metabench.algorithms`` (its own registry, :mod:`metabench.algorithms.registry`),
``metabench.problems``, ``metabench.models`` and ``metabench.datasets`` (task sources).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

__all__ = ["PluginError", "Registry"]


class PluginError(ValueError):
    """A name a plugin registers could not be loaded (its import raised): the message quotes why."""


class Registry:
    """Objects of one kind by name, built-in or from the entry-point group ``group`` (module docstring).

    ``check(name, obj)`` (optional) raises TypeError/ValueError for an object that is not of the kind.
    """

    def __init__(self, kind: str, group: str, check: Callable[[str, Any], None] | None = None):
        self.kind, self.group, self._check = kind, group, check
        self._objects: dict[str, Any] = {}
        self._origins: dict[str, str] = {}
        self._pending: dict[str, Any] | None = None  # entry points not imported yet, by name
        self._broken: dict[str, str] = {}

    # ------------------------------------------------------------------ registering
    def register(self, name: str, obj: Any = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers what it decorates."""

        def add(target):
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"a {self.kind} name must be an identifier (letters, digits, _), got {name!r}")
            if self._check is not None:
                self._check(name, target)
            existing = self._objects.get(name)
            if existing is not None and existing is not target:
                raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._origins[name]})")
            self._objects[name] = target
            module = getattr(target, "__module__", None) or "?"
            self._origins[name] = origin or f"built-in ({module})"
            return target

        return add if obj is None else add(obj)

    # ------------------------------------------------------------------ entry points, lazily
    def _entry_points(self) -> dict[str, Any]:
        if self._pending is None:
            self._pending = {}
            for ep in entry_points(group=self.group):
                if ep.name not in self._objects:
                    self._pending.setdefault(ep.name, ep)
        return self._pending

    def _load(self, name: str) -> None:
        ep = self._entry_points().pop(name, None)
        if ep is None:
            return
        dist = getattr(getattr(ep, "dist", None), "name", None)
        where = f"entry point {ep.name} = {ep.value}" + (f" ({dist})" if dist else "")
        try:
            self.register(name, ep.load(), origin=where)
        except Exception as err:  # noqa: BLE001 - any failure of a plugin is reported, never raised here
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            self._broken[name] = f"{where}: {last}"

    def _load_all(self) -> None:
        for name in list(self._entry_points()):
            self._load(name)

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        """Every name that loads, sorted (entry points imported; broken ones left out: see ``broken``)."""
        self._load_all()
        return sorted(self._objects)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a ValueError naming the available ones, a PluginError for a plugin
        whose import failed."""
        if name not in self._objects:
            self._load(name)
        if name in self._broken:
            raise PluginError(f"{self.kind} {name!r} could not be loaded: {self._broken[name]}")
        if name not in self._objects:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._objects[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def items(self) -> dict[str, Any]:
        """Name -> object for every name that loads."""
        return {name: self._objects[name] for name in self.names()}

    def origins(self) -> dict[str, str]:
        """Where each name comes from (broken plugins included, as ``failed: ...``)."""
        self._load_all()
        out = {name: self._origins[name] for name in self._objects}
        out.update({name: f"failed: {why}" for name, why in self._broken.items()})
        return dict(sorted(out.items()))

    def broken(self) -> dict[str, str]:
        """Plugins whose import raised: name -> where it came from and the error."""
        self._load_all()
        return dict(self._broken)

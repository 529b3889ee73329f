"""Task sources: where the N-way K-shot episodes of a split come from (generated, shipped, or read from disk).

A :class:`TaskSource` draws episodes from the classes of one split, ``"train"``, ``"val"`` or ``"test"``::

    source.tasks(split, ways, shots, query, n_tasks, seed=0, dtype=torch.float32) -> TaskBatch

(shapes as in :mod:`metabench.problems.datasets`), deterministically in ``seed``. Meta-training draws its
outer batches from ``"train"``, validation accuracy from ``"val"`` and the final fine-tuning accuracy from
``"test"``; a source says in :meth:`TaskSource.describe` how its splits are made, and splits share no class
unless the source says so (the 8x8 digits have ten classes, too few for three disjoint 5-way splits).

Built in: ``omniglot_like`` (generated characters; classes 0-1199 train, 1200-1299 val, 1300-1622 test, the
usual 1200-class meta-training split of Omniglot's 1623 characters) and ``digits`` (scikit-learn's shipped
digits; classes 0-4 train, 5-9 val and test, drawn with different seeds). Sources that read a folder take
``data_root`` (:func:`make_task_source`). Every source is registered in ``DATASETS`` (:func:`register_task_source`;
another package adds its own under the entry-point group ``metabench.datasets``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from metabench._checks import check_int
from metabench.problems import datasets
from metabench.problems.datasets import TaskBatch
from metabench.problems.registry import DATASETS

__all__ = [
    "SPLITS",
    "DigitsSource",
    "OmniglotLikeSource",
    "TaskSource",
    "check_split",
    "make_task_source",
    "register_task_source",
    "task_source_names",
]

SPLITS = ("train", "val", "test")


def check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


class TaskSource(ABC):
    """Episodes of one split (module docstring). Subclasses set ``name``, ``channels`` and ``image_size``."""

    name: ClassVar[str]
    channels: int = 1
    image_size: int = 28
    #: True where the source reads a folder (it then takes ``data_root``)
    needs_data_root: ClassVar[bool] = False

    @abstractmethod
    def n_classes(self, split: str) -> int:
        """How many classes ``split`` holds."""

    @abstractmethod
    def tasks(
        self,
        split: str,
        ways: int,
        shots: int,
        query: int,
        n_tasks: int,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> TaskBatch:
        """``n_tasks`` episodes of ``split``: ``ways`` distinct classes each, ``shots + query`` images a class."""

    def describe(self) -> dict:
        """JSON-friendly facts for records: name, image shape, classes per split, how the splits are made."""
        return {
            "task_source": self.name,
            "channels": self.channels,
            "image_size": self.image_size,
            **{f"{split}_classes": self.n_classes(split) for split in SPLITS},
        }

    def _check(self, split, ways, shots, query, n_tasks, seed) -> None:
        check_split(split)
        for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("query", query, 1), ("n_tasks", n_tasks, 1)):
            check_int(name, value, low=low)
        check_int("seed", seed, low=0)
        if ways > self.n_classes(split):
            raise ValueError(
                f"ways ({ways}) must be <= the {self.n_classes(split)} classes of {self.name}'s {split} split"
            )


class OmniglotLikeSource(TaskSource):
    """Generated Omniglot-shaped characters (:func:`~metabench.problems.datasets.omniglot_like_tasks`), split by
    character index: the first 1200 train, the next 100 val, the rest (323 of 1623) test."""

    name = "omniglot_like"
    BOUNDS = (0, 1200, 1300, datasets.OMNIGLOT_CLASSES)

    def __init__(self, image_size: int = 28):
        self.image_size = check_int("image_size", image_size, low=4)

    def _classes(self, split: str) -> range:
        i = SPLITS.index(check_split(split))
        return range(self.BOUNDS[i], self.BOUNDS[i + 1])

    def n_classes(self, split: str) -> int:
        return len(self._classes(split))

    def tasks(self, split, ways, shots, query, n_tasks, seed=0, dtype=torch.float32) -> TaskBatch:
        self._check(split, ways, shots, query, n_tasks, seed)
        return datasets.omniglot_like_tasks(
            ways,
            shots,
            query,
            n_tasks,
            image_size=self.image_size,
            seed=seed,
            dtype=dtype,
            classes=self._classes(split),
        )

    def describe(self) -> dict:
        return super().describe() | {"splits": "characters 0-1199 train, 1200-1299 val, 1300-1622 test"}


class DigitsSource(TaskSource):
    """scikit-learn's 8x8 digits (:func:`~metabench.problems.datasets.digits_tasks`): digits 0-4 train, 5-9 val and
    test. Ten classes cannot make three disjoint 5-way splits: val and test share their classes (not a seed)."""

    name = "digits"
    image_size = 8
    _SPLIT_CLASSES = {"train": (0, 1, 2, 3, 4), "val": (5, 6, 7, 8, 9), "test": (5, 6, 7, 8, 9)}
    _SPLIT_SEED = {"train": 0, "val": 1_000_003, "test": 2_000_006}  # val and test episodes never share a seed

    def n_classes(self, split: str) -> int:
        return len(self._SPLIT_CLASSES[check_split(split)])

    def tasks(self, split, ways, shots, query, n_tasks, seed=0, dtype=torch.float32) -> TaskBatch:
        self._check(split, ways, shots, query, n_tasks, seed)
        seed = seed + self._SPLIT_SEED[split]
        return datasets.digits_tasks(
            ways, shots, query, n_tasks, seed=seed, dtype=dtype, classes=self._SPLIT_CLASSES[split]
        )

    def describe(self) -> dict:
        return super().describe() | {"splits": "digits 0-4 train, 5-9 val and test (shared classes, other draws)"}


def register_task_source(name: str, factory: Callable[..., TaskSource] | None = None):
    """Register ``factory(**params) -> TaskSource`` under ``name`` in ``DATASETS`` (usable as a decorator); a
    factory with ``needs_data_root = True`` is called as ``factory(data_root, **params)``."""
    return DATASETS.register(name) if factory is None else DATASETS.register(name, factory)


register_task_source("omniglot_like", OmniglotLikeSource)
register_task_source("digits", DigitsSource)


def task_source_names() -> list[str]:
    """Every registered task source: built in, the folder layouts, and the plugins' (``metabench.datasets``)."""
    _load_folder_sources()
    return DATASETS.names()


def _load_folder_sources() -> None:
    """The sources that read folders register themselves on import."""
    import metabench.problems.data_folders  # noqa: F401


def make_task_source(name: str, data_root=None, **params) -> TaskSource:
    """The task source ``name`` built with ``params`` (``data_root``: the folder a folder source reads)."""
    _load_folder_sources()
    factory = DATASETS.get(name)  # a ValueError listing the names, or a PluginError saying why a plugin failed
    if getattr(factory, "needs_data_root", False):
        if data_root is None:
            raise ValueError(f"task source {name!r} reads a folder: give data_root (--data-root)")
        source = factory(data_root, **params)
    else:
        if data_root is not None:
            raise ValueError(f"task source {name!r} is generated and takes no data_root (got {data_root!r})")
        source = factory(**params)
    if not isinstance(source, TaskSource):
        raise TypeError(f"dataset {name!r} must build a metabench TaskSource, got {type(source).__name__}")
    return source

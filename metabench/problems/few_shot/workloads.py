"""The named few-shot workloads: factories that build a ``FewShotClassification`` from generated tasks.

A mixin of classmethods (``cls`` is the problem class): :meth:`~FewShotWorkloads.omniglot_like` (the
maml_omniglot workload), :meth:`~FewShotWorkloads.imaml_omniglot`, :meth:`~FewShotWorkloads.digits`,
:meth:`~FewShotWorkloads.sinusoid` and :meth:`~FewShotWorkloads.generate` (the sweep's entry point). Each
draws its tasks from :mod:`metabench.problems.datasets` and its network from :mod:`metabench.problems.models`,
deterministically in ``seed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from metabench._checks import check_real
from metabench.problems import datasets
from metabench.problems.few_shot.options import DATASETS, FORMULATIONS, check_choice, check_dtype
from metabench.problems.models import NORMS, conv4, mlp

if TYPE_CHECKING:
    from metabench.problems.few_shot.problem import FewShotClassification

__all__ = ["FewShotWorkloads"]


class FewShotWorkloads:
    """Factories of :class:`~metabench.problems.few_shot.problem.FewShotClassification` (module docstring)."""

    @classmethod
    def omniglot_like(
        cls,
        ways: int = 5,
        shots: int = 5,
        query: int = 15,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        filters: int = 64,
        norm: str = "batch",
        *,
        image_size: int = 28,
        reg: float | None = None,
        path: str = "auto",
        activation: str = "relu",
        pool: str = "max",
    ) -> FewShotClassification:
        """The maml_omniglot workload of TorchBench, learn2learn and higher (defaults): 5-way 5-shot,
        15 query images per class, 32 tasks, the 4-block conv net with 64 filters on 1x28x28
        Omniglot-shaped images (:func:`~metabench.problems.datasets.omniglot_like_tasks`). The inner
        loop (SGD, lr 0.1, 5 steps) is the algorithm's business. Data and weights are deterministic in ``seed``.
        """
        dtype = check_dtype(dtype)
        check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        check_choice("norm", norm, NORMS)
        tasks = datasets.omniglot_like_tasks(ways, shots, query, n_tasks, image_size=image_size, seed=seed, dtype=dtype)
        model = conv4(
            1, ways, filters=filters, image_size=image_size, norm=norm, seed=seed, activation=activation, pool=pool
        )
        meta = {"dataset": "omniglot_like", "seed": seed, "filters": filters, "image_size": image_size, "norm": norm}
        meta.update(activation=activation, pool=pool)
        return cls(model, *tasks, formulation=formulation, lam=lam, reg=reg, path=path, meta=meta)

    @classmethod
    def imaml_omniglot(
        cls,
        ways: int = 20,
        shots: int = 5,
        query: int = 5,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 2.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        filters: int = 64,
        norm: str = "batch",
        **kwargs,
    ) -> FewShotClassification:
        """iMAML's Omniglot workload (its Figure 2b): 20-way 5-shot, as many query images as shots per
        class, task meta-batch 32, lam = 2 (the values of iMAML's released Omniglot script); the conv net
        is metabench's max-pool conv4 (iMAML's code uses stride-2 convolutions). See :meth:`omniglot_like`."""
        return cls.omniglot_like(ways, shots, query, n_tasks, formulation, lam, seed, dtype, filters, norm, **kwargs)

    @classmethod
    def digits(
        cls,
        ways: int = 5,
        shots: int = 5,
        query: int = 15,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        filters: int = 32,
        norm: str = "batch",
        *,
        classes=None,
        reg: float | None = None,
        path: str = "auto",
        activation: str = "relu",
        pool: str = "max",
    ) -> FewShotClassification:
        """N-way K-shot tasks from scikit-learn's shipped 8x8 digits (a real data set, no download; needs
        scikit-learn) with the conv4 net on 1x8x8 images (:func:`~metabench.problems.datasets.digits_tasks`)."""
        dtype = check_dtype(dtype)
        check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        check_choice("norm", norm, NORMS)
        tasks = datasets.digits_tasks(ways, shots, query, n_tasks, seed=seed, dtype=dtype, classes=classes)
        model = conv4(1, ways, filters=filters, image_size=8, norm=norm, seed=seed, activation=activation, pool=pool)
        meta = {"dataset": "digits", "seed": seed, "filters": filters, "image_size": 8, "norm": norm}
        meta.update(activation=activation, pool=pool)
        return cls(model, *tasks, formulation=formulation, lam=lam, reg=reg, path=path, meta=meta)

    @classmethod
    def sinusoid(
        cls,
        shots: int = 10,
        query: int = 10,
        n_tasks: int = 25,
        formulation: str = "maml",
        lam: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        hidden: tuple[int, ...] = (40, 40),
        *,
        reg: float | None = None,
        path: str = "auto",
    ) -> FewShotClassification:
        """MAML's sinusoid regression (``loss="mse"``): K support and Q query points per task, the
        1-40-40-1 ReLU MLP (:func:`~metabench.problems.datasets.sinusoid_tasks`)."""
        dtype = check_dtype(dtype)
        check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        tasks = datasets.sinusoid_tasks(n_tasks, shots, query, seed=seed, dtype=dtype)
        model = mlp(1, 1, hidden=hidden, seed=seed)
        meta = {"dataset": "sinusoid", "seed": seed, "hidden": "x".join(str(h) for h in hidden)}
        return cls(model, *tasks, formulation=formulation, lam=lam, reg=reg, loss="mse", path=path, meta=meta)

    @classmethod
    def generate(
        cls,
        dataset: str = "omniglot_like",
        ways: int = 5,
        shots: int = 5,
        query: int = 15,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 0.0,
        reg: float | None = None,
        norm: str = "batch",
        filters: int = 64,
        image_size: int | None = None,
        path: str = "auto",
        activation: str = "relu",
        pool: str = "max",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> FewShotClassification:
        """One entry point with JSON-friendly parameters (what a sweep case passes).

        ``dataset``: ``"omniglot_like"`` (``image_size`` default 28), ``"digits"`` (8x8; ``image_size``
        must be None or 8) or ``"sinusoid"`` (MLP regression; ``ways``, ``norm``, ``filters``,
        ``image_size``, ``activation`` and ``pool`` do not apply and are not recorded). ``activation``
        (relu, silu, tanh) and ``pool`` (max, avg) shape the conv net (``models.conv4``).
        """
        dataset = check_choice("dataset", dataset, DATASETS)
        common = {"formulation": formulation, "lam": lam, "seed": seed, "dtype": dtype, "reg": reg, "path": path}
        net = {"filters": filters, "norm": norm, "activation": activation, "pool": pool}
        if dataset == "omniglot_like":
            size = 28 if image_size is None else image_size
            return cls.omniglot_like(ways, shots, query, n_tasks, image_size=size, **net, **common)
        if dataset == "digits":
            if image_size not in (None, 8):
                raise ValueError(f"image_size must be None or 8 for the 8x8 digits, got {image_size!r}")
            return cls.digits(ways, shots, query, n_tasks, **net, **common)
        return cls.sinusoid(shots, query, n_tasks, **common)

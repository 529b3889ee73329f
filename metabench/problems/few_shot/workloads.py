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
from metabench.problems.models import DOWNSAMPLES, NORMS, conv4, mlp

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
        downsample: str = "maxpool",
        model: str = "conv4",
    ) -> FewShotClassification:
        """The task shapes of TorchBench's maml_omniglot (adapted from higher's maml-omniglot example): 5-way
        5-shot, 15 query images per class, 32 tasks, on 1x28x28 Omniglot-shaped images
        (:func:`~metabench.problems.datasets.omniglot_like_tasks`), with :func:`~metabench.problems.models.conv4`
        (64 filters): by default its max-pool blocks (4 padded conv -> BatchNorm -> ReLU -> max-pool blocks, head
        on 64 features; TorchBench's own net has 3 unpadded such blocks), ``downsample="stride"`` its stride-2 blocks
        (no pooling, head on 64 * 2 * 2 features). The inner loop (SGD, lr 0.1, 5 steps) is the algorithm's
        business. Data and weights are deterministic in ``seed``; ``activation``, ``pool`` and ``downsample`` are
        recorded (``pool`` as None for the stride net, which has no pooling).
        """
        dtype = check_dtype(dtype)
        check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        check_choice("norm", norm, NORMS)
        check_choice("downsample", downsample, DOWNSAMPLES)
        tasks = datasets.omniglot_like_tasks(ways, shots, query, n_tasks, image_size=image_size, seed=seed, dtype=dtype)
        net = {"norm": norm, "seed": seed, "activation": activation, "pool": pool, "downsample": downsample}
        network = _network(model, 1, ways, filters=filters, image_size=image_size, **net)
        meta = {"dataset": "omniglot_like", "seed": seed, "filters": filters, "image_size": image_size, "norm": norm}
        meta.update(_net_meta(activation, pool, downsample, model))
        return cls(network, *tasks, formulation=formulation, lam=lam, reg=reg, path=path, meta=meta)

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
        class, task meta-batch 32, lam = 2 (the values of iMAML's released Omniglot script).

        The net it builds by default is metabench's max-pool conv4 (``downsample="maxpool"``: 4 blocks of
        padded 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool, head on 64 features), which is NOT the net of
        iMAML's code. ``downsample="stride"`` builds that one: 4 blocks of Conv2d(3, stride 2, padding 1) ->
        BatchNorm(no running statistics) -> ReLU with 64 filters, 28 -> 14 -> 7 -> 4 -> 2, head
        Linear(64 * 2 * 2, 20) (iMAML's ``make_conv_network``, up to its Xavier initialisation). Its activations
        are far smaller (no full-resolution conv outputs), so MAML's memory per inner step is far lower:
        measured on one task (float32, lam = 0, peak live tensor bytes, K = 1..20), 120.5 MiB per inner step
        with max-pool, 26.4 MiB with stride 2 (fomaml and imaml are flat in K).
        Keywords as in :meth:`omniglot_like`."""
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
        downsample: str = "maxpool",
        model: str = "conv4",
    ) -> FewShotClassification:
        """N-way K-shot tasks from scikit-learn's shipped 8x8 digits (a real data set, no download; needs
        scikit-learn) with the conv4 net on 1x8x8 images (:func:`~metabench.problems.datasets.digits_tasks`).
        Both ``downsample`` nets go 8 -> 4 -> 2 -> 1 -> 1 (max-pool: the last block skips its pooling), so the
        head sees ``filters`` features either way."""
        dtype = check_dtype(dtype)
        check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        check_choice("norm", norm, NORMS)
        check_choice("downsample", downsample, DOWNSAMPLES)
        tasks = datasets.digits_tasks(ways, shots, query, n_tasks, seed=seed, dtype=dtype, classes=classes)
        net = {"norm": norm, "seed": seed, "activation": activation, "pool": pool, "downsample": downsample}
        network = _network(model, 1, ways, filters=filters, image_size=8, **net)
        meta = {"dataset": "digits", "seed": seed, "filters": filters, "image_size": 8, "norm": norm}
        meta.update(_net_meta(activation, pool, downsample, model))
        return cls(network, *tasks, formulation=formulation, lam=lam, reg=reg, path=path, meta=meta)

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
        downsample: str = "maxpool",
        data_root: str | None = None,
        model: str = "conv4",
    ) -> FewShotClassification:
        """One entry point with JSON-friendly parameters (what a sweep case passes).

        ``dataset`` may also name a folder task source (``"omniglot"``, ``"image_folders"``, ``"mini_imagenet_csv"``,
        ``"cifar_fs"``: :mod:`metabench.problems.data_folders`), read from ``data_root``; the tasks are episodes of
        its train split and the conv net takes its channels and ``image_size`` (default: the layout's). Generated
        data sets ignore ``data_root``, so one ``--data-root`` serves a sweep that mixes both. ``model`` names a
        registered network factory (``MODELS``: ``"conv4"``, or a plugin's), built for the data's channels and size;
        ``dataset`` may name a plugin's task source too (``DATASETS``).

        ``dataset``: ``"omniglot_like"`` (``image_size`` default 28), ``"digits"`` (8x8; ``image_size``
        must be None or 8) or ``"sinusoid"`` (MLP regression; ``ways``, ``norm``, ``filters``,
        ``image_size``, ``activation``, ``pool`` and ``downsample`` do not apply and are not recorded).
        ``activation`` (relu, silu, tanh), ``pool`` (max, avg) and ``downsample`` (``"maxpool"``: conv ->
        norm -> activation -> 2x2 pool blocks; ``"stride"``: stride-2 conv -> norm -> activation blocks, no
        pooling, the net of iMAML's Omniglot code) shape the conv net (``models.conv4``).
        """
        if dataset not in DATASETS:
            return cls._from_source(
                dataset,
                data_root,
                dict(ways=ways, shots=shots, query=query, n_tasks=n_tasks, seed=seed, dtype=dtype),
                dict(formulation=formulation, lam=lam, reg=reg, path=path),
                dict(
                    model=model,
                    filters=filters,
                    norm=norm,
                    image_size=image_size,
                    activation=activation,
                    pool=pool,
                    downsample=downsample,
                ),
            )
        common = {"formulation": formulation, "lam": lam, "seed": seed, "dtype": dtype, "reg": reg, "path": path}
        net = {"filters": filters, "norm": norm, "activation": activation, "pool": pool, "downsample": downsample}
        if dataset == "sinusoid":
            if model != "conv4":
                raise ValueError(
                    f"dataset 'sinusoid' is regression on its own MLP: model must stay 'conv4', got {model!r}"
                )
            return cls.sinusoid(shots, query, n_tasks, **common)
        net["model"] = model
        if dataset == "omniglot_like":
            size = 28 if image_size is None else image_size
            return cls.omniglot_like(ways, shots, query, n_tasks, image_size=size, **net, **common)
        if image_size not in (None, 8):
            raise ValueError(f"image_size must be None or 8 for the 8x8 digits, got {image_size!r}")
        return cls.digits(ways, shots, query, n_tasks, **net, **common)

    @classmethod
    def _from_source(cls, dataset: str, data_root, episode: dict, problem: dict, net: dict) -> FewShotClassification:
        """``generate`` for a registered task source (a folder layout or a plugin's): episodes of its train split and
        the ``model`` network sized for its images."""
        from metabench.problems.task_sources import make_task_source, task_source_names

        others = [n for n in task_source_names() if n not in DATASETS]
        if dataset not in others:
            raise ValueError(f"dataset must be one of {list(DATASETS) + others}, got {dataset!r}")
        dtype = check_dtype(episode["dtype"])
        check_choice("formulation", problem["formulation"], FORMULATIONS)
        check_real("lam", problem["lam"], low=0.0)
        check_choice("norm", net["norm"], NORMS)
        check_choice("downsample", net["downsample"], DOWNSAMPLES)
        size = net["image_size"]
        source = make_task_source(dataset, data_root, **({} if size is None else {"image_size": size}))
        counts = (episode["ways"], episode["shots"], episode["query"], episode["n_tasks"])
        tasks = source.tasks("train", *counts, seed=episode["seed"], dtype=dtype)
        shape = {k: net[k] for k in ("norm", "activation", "pool", "downsample")}
        network = _network(
            net["model"],
            source.channels,
            episode["ways"],
            filters=net["filters"],
            image_size=source.image_size,
            seed=episode["seed"],
            **shape,
        )
        meta = {"dataset": dataset, "seed": episode["seed"], "filters": net["filters"], "image_size": source.image_size}
        meta.update(norm=net["norm"], **_net_meta(net["activation"], net["pool"], net["downsample"], net["model"]))
        return cls(network, *tasks, **problem, meta=meta)


def _network(model: str, in_channels: int, ways: int, **params) -> torch.nn.Module:
    """The registered network ``model`` (``MODELS``) for ``in_channels`` inputs and ``ways`` outputs."""
    if model == "conv4":
        return conv4(in_channels, ways, **params)
    from metabench.problems.registry import MODELS

    network = MODELS.get(model)(in_channels, ways, **params)
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"model {model!r} must build a torch.nn.Module, got {type(network).__name__}")
    return network


def _net_meta(activation: str, pool: str, downsample: str, model: str = "conv4") -> dict:
    """The net's recorded shape: ``pool`` is None for the stride-2 net (it has no pooling); ``model`` where it is not
    conv4 (records of conv4 nets keep the fields they always had)."""
    out = {"activation": activation, "pool": pool if downsample == "maxpool" else None, "downsample": downsample}
    return out if model == "conv4" else {**out, "model": model}

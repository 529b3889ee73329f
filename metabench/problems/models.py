"""Networks for the few-shot problems: the MAML/iMAML 4-block conv net and a small MLP.

Both builders are deterministic in ``seed`` (torch's default initialisation drawn inside a forked
RNG, so the global RNG is left untouched) and return a plain ``nn.Sequential`` whose last module
is the linear head (named ``"head"``), which is what the bilevel formulation of
:class:`~metabench.problems.few_shot.FewShotClassification` adapts.

Normalisation never keeps running statistics: ``BatchNorm2d(track_running_stats=False)`` always
normalises with the statistics of the batch it sees (the support set in the inner loop, the
query set in the outer loss, as in MAML's reference code), so the loss is a pure function of the
weights and the batch.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from metabench._checks import check_int

__all__ = ["ACTIVATIONS", "NORMS", "POOLS", "conv4", "mlp"]

NORMS = ("batch", "group", "none")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _group_count(filters: int) -> int:
    """GroupNorm groups: 8 channels per group where ``filters`` is a multiple of 8, else one group."""
    return filters // 8 if filters % 8 == 0 else 1


def _norm_layer(norm: str, filters: int) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm2d(filters, track_running_stats=False)
    if norm == "group":
        return nn.GroupNorm(_group_count(filters), filters)
    return None


def conv4(
    in_channels: int = 1,
    ways: int = 5,
    filters: int = 64,
    image_size: int = 28,
    norm: str = "batch",
    seed: int = 0,
    *,
    activation: str = "relu",
    pool: str = "max",
) -> nn.Sequential:
    """The 4-block conv net of MAML (Finn et al. 2017) and the few-shot libraries (higher, learn2learn).

    Each block: Conv2d 3x3 (padding 1) -> normalisation without running statistics
    (``norm="batch"``: ``BatchNorm2d(track_running_stats=False)``; ``"group"``: ``GroupNorm`` with 8
    channels per group where ``filters`` is a multiple of 8, else one group; ``"none"``: nothing)
    -> ReLU -> MaxPool2d(2). Then flatten and a linear head to ``ways`` logits. On 1x28x28 inputs the
    feature map goes 28 -> 14 -> 7 -> 3 -> 1, so the head sees ``filters`` features. A block whose
    input is already 1x1 skips its pooling (so 8x8 images go 8 -> 4 -> 2 -> 1 -> 1).
    (iMAML's own code uses stride-2 convolutions instead of max-pooling; metabench uses the MAML form.)
    Weights: torch's default initialisation, deterministic in ``seed``.

    ``activation="silu"`` and ``pool="avg"`` make the loss a smooth function of the weights (ReLU and
    max-pooling make it piecewise smooth, where a converged float64 inner solve, the reference of the implicit
    methods, does not exist to tight tolerance); the defaults are MAML's.
    """
    in_channels = check_int("in_channels", in_channels, low=1)
    ways = check_int("ways", ways, low=1)
    filters = check_int("filters", filters, low=1)
    image_size = check_int("image_size", image_size, low=1)
    seed = check_int("seed", seed, low=0)
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if not isinstance(pool, str) or pool not in POOLS:
        raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    size, channels = image_size, in_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for b in range(1, 5):
            block: list[nn.Module] = [nn.Conv2d(channels, filters, kernel_size=3, padding=1)]
            layer = _norm_layer(norm, filters)
            if layer is not None:
                block.append(layer)
            block.append(ACTIVATIONS[activation]())
            if size >= 2:
                block.append(POOLS[pool](2))
                size //= 2
            layers[f"block{b}"] = nn.Sequential(*block)
            channels = filters
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(filters * size * size, ways)
    return nn.Sequential(layers)


def mlp(
    in_features: int,
    out_features: int,
    hidden: tuple[int, ...] | list[int] = (32,),
    activation: str = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """A small MLP: flatten -> [Linear -> activation] per hidden width -> Linear head (``"head"``).

    MAML's sinusoid regressor is ``mlp(1, 1, hidden=(40, 40))``. Flattening first lets it take images
    (``in_features = C*H*W``). Deterministic in ``seed``; ``activation`` is ``"relu"`` or ``"tanh"``
    (tanh makes the loss smooth, which finite-difference checks like).
    """
    in_features = check_int("in_features", in_features, low=1)
    out_features = check_int("out_features", out_features, low=1)
    seed = check_int("seed", seed, low=0)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise ValueError(f"hidden must be a sequence of layer widths, got {hidden!r}")
    widths = [check_int(f"hidden[{i}]", h, low=1) for i, h in enumerate(hidden)]
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        width = in_features
        for i, h in enumerate(widths):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"act{i}"] = ACTIVATIONS[activation]()
            width = h
        layers["head"] = nn.Linear(width, out_features)
    return nn.Sequential(layers)

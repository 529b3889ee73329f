"""Networks for the few-shot problems: the 4-block conv net (max-pool or stride-2 blocks) and a small MLP.

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
from metabench.problems.registry import MODELS

__all__ = ["ACTIVATIONS", "DOWNSAMPLES", "NORMS", "POOLS", "conv4", "conv4_feature_size", "mlp"]

NORMS = ("batch", "group", "none")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
DOWNSAMPLES = ("maxpool", "stride")


def _group_count(filters: int) -> int:
    """GroupNorm groups: 8 channels per group where ``filters`` is a multiple of 8, else one group."""
    return filters // 8 if filters % 8 == 0 else 1


def _norm_layer(norm: str, filters: int) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm2d(filters, track_running_stats=False)
    if norm == "group":
        return nn.GroupNorm(_group_count(filters), filters)
    return None


def conv4_feature_size(image_size: int, downsample: str = "maxpool") -> int:
    """The side s of conv4's last feature map on ``image_size`` x ``image_size`` inputs (the head sees filters s^2).

    ``"maxpool"``: each block's 3x3 conv (padding 1) keeps the size and MaxPool2d(2) floors it to s // 2, a block
    whose input is already 1x1 skipping its pooling: 28 -> 14 -> 7 -> 3 -> 1, 8 -> 4 -> 2 -> 1 -> 1.
    ``"stride"``: Conv2d(3, stride 2, padding 1) gives floor((s + 2 - 3)/2) + 1 = ceil(s/2):
    28 -> 14 -> 7 -> 4 -> 2, 8 -> 4 -> 2 -> 1 -> 1.
    """
    size = check_int("image_size", image_size, low=1)
    if not isinstance(downsample, str) or downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample must be one of {list(DOWNSAMPLES)}, got {downsample!r}")
    for _ in range(4):
        size = (size + 1) // 2 if downsample == "stride" else (size // 2 if size >= 2 else size)
    return size


@MODELS.register("conv4")
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
    downsample: str = "maxpool",
) -> nn.Sequential:
    """A 4-block conv net of the few-shot literature, with max-pool (default) or stride-2 blocks.

    ``downsample="maxpool"`` (default), each block: Conv2d 3x3 (stride 1, padding 1) -> normalisation ->
    activation -> MaxPool2d(2) (``pool="avg"``: AvgPool2d(2)). On 1x28x28 inputs the feature map goes
    28 -> 14 -> 7 -> 3 -> 1, so the head sees ``filters`` features; a block whose input is already 1x1 skips
    its pooling (8x8 images: 8 -> 4 -> 2 -> 1 -> 1). These are the blocks MAML (Finn et al. 2017) describes
    (after Vinyals et al. 2016) and its released code uses for MiniImagenet (``--max_pool=True``, 32 filters);
    for Omniglot MAML's code uses stride-2 convolutions instead (its ``max_pool`` flag defaults to False).

    ``downsample="stride"``, each block: Conv2d 3x3 (stride 2, padding 1) -> normalisation -> activation, no
    pooling. The size goes s -> ceil(s/2): 28 -> 14 -> 7 -> 4 -> 2, so the head sees ``filters * 2 * 2``
    features (8x8: 8 -> 4 -> 2 -> 1 -> 1, ``filters`` features). With 64 filters and BatchNorm this is the
    Omniglot net of iMAML's released code (``make_conv_network`` in aravindr93/imaml_dev: its zero pad before
    the third conv does not change that conv's output, and its head is Linear(2*2*64, ways)) up to the
    initialisation (iMAML: Xavier-uniform with gain 1.73, biases U(0, 0.05); here torch's default). MAML's
    TensorFlow code instead pads 'SAME' (asymmetrically) and averages the final 2x2 map, so its head sees 64.
    ``pool`` applies to ``"maxpool"`` only (it must be left at "max" with ``"stride"``).

    ``conv4_feature_size(image_size, downsample)`` is the final side s; the head is Linear(filters s^2, ways).
    Normalisation without running statistics (``norm="batch"``: ``BatchNorm2d(track_running_stats=False)``;
    ``"group"``: ``GroupNorm`` with 8 channels per group where ``filters`` is a multiple of 8, else one group;
    ``"none"``: nothing). Weights: torch's default initialisation, deterministic in ``seed``; the default net
    is unchanged by ``downsample``'s introduction (same modules, same weights for a seed).

    ``activation="silu"`` and ``pool="avg"`` make the loss a smooth function of the weights (ReLU and
    max-pooling make it piecewise smooth, where a converged float64 inner solve, the reference of the implicit
    methods, does not exist to tight tolerance); ``downsample="stride"`` has no pooling, so ``activation="silu"``
    alone makes it smooth. The defaults (ReLU, max-pool) are the max-pool blocks above.
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
    if not isinstance(downsample, str) or downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample must be one of {list(DOWNSAMPLES)}, got {downsample!r}")
    if downsample == "stride" and pool != "max":
        raise ValueError(
            f"pool applies only to downsample='maxpool' (the stride-2 net has no pooling), got pool={pool!r} "
            "with downsample='stride'"
        )
    stride = 2 if downsample == "stride" else 1
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    size, channels = image_size, in_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for b in range(1, 5):
            block: list[nn.Module] = [nn.Conv2d(channels, filters, kernel_size=3, stride=stride, padding=1)]
            layer = _norm_layer(norm, filters)
            if layer is not None:
                block.append(layer)
            block.append(ACTIVATIONS[activation]())
            if stride == 2:
                size = (size + 1) // 2
            elif size >= 2:
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

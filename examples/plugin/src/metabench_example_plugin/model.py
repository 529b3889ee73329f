"""``resblocks``: a small ResNet-style few-shot net (stem conv, two residual blocks, global pooling, a linear head).

metabench calls a model factory as ``factory(in_channels, n_out, *, image_size, filters, norm, seed, activation,
pool, downsample)``; this one uses ``filters``, ``norm`` and ``seed`` and ignores the rest (``**_``). The head is
the last ``nn.Linear``, so the bilevel and ANIL formulations adapt it; BatchNorm keeps no running statistics.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["resblocks"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(min(4, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class Residual(nn.Module):
    """relu(x + norm(conv(relu(norm(conv(x))))))."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(out)))


def resblocks(in_channels: int, n_out: int, *, filters: int = 16, norm: str = "batch", seed: int = 0, **_) -> nn.Module:
    """stem (3x3 conv, norm, ReLU) -> residual block -> 2x2 max-pool -> residual block -> global average -> head."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            OrderedDict(
                stem=nn.Conv2d(in_channels, filters, 3, padding=1),
                stem_norm=_norm(norm, filters),
                stem_act=nn.ReLU(),
                block1=Residual(filters, norm),
                pool1=nn.MaxPool2d(2),
                block2=Residual(filters, norm),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                head=nn.Linear(filters, n_out),
            )
        )

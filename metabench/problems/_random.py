"""Seeded random pieces shared by the synthetic problem generators."""

from __future__ import annotations

import torch

__all__ = ["condition_spectrum", "random_orthonormal"]


def random_orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix with orthonormal columns (Haar-distributed, float64)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(())).unsqueeze(0)


def condition_spectrum(size: int, low: float, high: float) -> torch.Tensor:
    """``size`` eigenvalues spaced geometrically from ``low`` to ``high`` (both included)."""
    if size == 1:
        return torch.tensor([high], dtype=torch.float64)
    values = torch.logspace(
        torch.log10(torch.tensor(low, dtype=torch.float64)),
        torch.log10(torch.tensor(high, dtype=torch.float64)),
        size,
        dtype=torch.float64,
    )
    values[0], values[-1] = low, high  # exact endpoints, so the condition number is exact
    return values

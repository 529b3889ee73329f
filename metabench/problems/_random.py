"""Seeded random pieces shared by the synthetic problem generators, and the range of condition numbers they build."""

from __future__ import annotations

import math

import torch

from metabench._checks import check_real

__all__ = [
    "MAX_KAPPA",
    "SPECTRA",
    "check_kappa",
    "cluster_sizes",
    "clustered_spectrum",
    "condition_spectrum",
    "random_orthonormal",
    "uniform_spectrum",
]

MAX_KAPPA = 1e12
"""The largest condition number the generators accept (see :func:`check_kappa`)."""

SPECTRA = ("geometric", "clustered", "uniform")
"""The eigenvalue layouts of ``LinearMetaRegression.generate`` (:func:`condition_spectrum`,
:func:`clustered_spectrum`, :func:`uniform_spectrum`)."""


def check_kappa(kappa) -> float:
    """``kappa`` as a float in [1, MAX_KAPPA = 1e12], or a ValueError naming it and the range.

    The generators form their matrices in float64 (Q diag(g) Q', X'X / n), with rounding errors of
    about eps * L * sqrt(dim) (eps = 2.2e-16, L the largest eigenvalue). The smallest eigenvalue
    mu = L / kappa is only meaningful while it is far above that, i.e. while eps sqrt(dim) kappa << 1:
    at kappa = 1e12 this bound is 0.3% for dim = 200 and 0.7% for dim = 1000, so the realised condition
    number stays within ~1% of the request (measured: 1e-5 to 1e-4 at dim 50..1000), while at
    kappa ~ 1e16 mu drowns in rounding and the realised condition number can even come out negative
    (kappa = 1e18 did).
    """
    try:
        return check_real("kappa", kappa, low=1.0, high=MAX_KAPPA)
    except ValueError as err:
        if math.isfinite(float(kappa)) and float(kappa) > MAX_KAPPA:  # a Real (else TypeError): too large
            raise ValueError(
                f"{err}: beyond {MAX_KAPPA:g} the float64 rounding of the generated matrices "
                "(about 2.2e-16 * L * sqrt(dim)) swamps their smallest eigenvalue L/kappa"
            ) from None
        raise


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


def uniform_spectrum(size: int, low: float, high: float) -> torch.Tensor:
    """``size`` eigenvalues evenly spaced from ``low`` to ``high`` (both included): low + (high - low) j/(size - 1)."""
    if size == 1:
        return torch.tensor([high], dtype=torch.float64)
    values = torch.linspace(low, high, size, dtype=torch.float64)
    values[0], values[-1] = low, high  # exact endpoints, so the condition number is exact
    return values


def cluster_sizes(size: int, distinct: int, at_low: int = 0) -> list[int]:
    """The multiplicities of ``distinct`` clusters of ``size`` eigenvalues, lowest cluster first.

    As equal as possible (``size // distinct`` each, the ``size % distinct`` lowest clusters one more), except
    that the lowest cluster holds at least ``at_low`` of them, the others sharing the rest as equally as possible.
    Needs 1 <= distinct <= size and, when the lowest cluster is enlarged, size - at_low >= distinct - 1.
    """
    if not 1 <= distinct <= size:
        raise ValueError(f"distinct must be in [1, {size}], got {distinct}")
    sizes = [size // distinct + (1 if j < size % distinct else 0) for j in range(distinct)]
    if sizes[0] >= at_low:
        return sizes
    rest, others = size - at_low, distinct - 1
    if rest < others:
        raise ValueError(f"distinct = {distinct} clusters need {others} values above the lowest {at_low}, got {rest}")
    return [at_low] + [rest // others + (1 if j < rest % others else 0) for j in range(others)]


def clustered_spectrum(size: int, low: float, high: float, distinct: int, at_low: int = 0) -> torch.Tensor:
    """``size`` eigenvalues taking only ``distinct`` values, spaced geometrically from ``low`` to ``high``.

    The values are :func:`condition_spectrum` ``(distinct, low, high)``, each repeated as often as
    :func:`cluster_sizes` ``(size, distinct, at_low)`` says (ascending); ``distinct = size`` is
    :func:`condition_spectrum` ``(size, low, high)`` itself.
    """
    counts = torch.tensor(cluster_sizes(size, distinct, at_low))
    return condition_spectrum(distinct, low, high).repeat_interleave(counts)

"""Dense solves for the closed forms that do not go through batched LU.

Measured on this project's machines (torch 2.13.0 CPU, Intel oneMKL 2024.2, AMD EPYC): with two or more
intra-op threads, *batched* ``torch.linalg.solve`` and ``torch.linalg.inv`` on matrices from about 150 x 150
up return garbage (a relative residual of 1e16), raise ("Pivots given to lu_solve must all be greater or
equal to 1", MKL: "Parameter 6 was incorrect on entry to DLASWP") or spin forever; unbatched solves, batched
Cholesky and ``eigh`` are right at every size and thread count tried. The matrices of the closed forms are
symmetric positive definite, so they are solved by Cholesky, batched.
"""

from __future__ import annotations

import torch

__all__ = ["spd_inverse", "spd_solve"]


def _factor(A: torch.Tensor, what: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        bad = int((info != 0).nonzero()[0, 0]) if info.dim() else 0
        raise ValueError(f"{what}: the matrix of task {bad} is not positive definite (Cholesky failed)")
    return L


def spd_solve(A: torch.Tensor, B: torch.Tensor, what: str = "solve") -> torch.Tensor:
    """X with A X = B for symmetric positive definite A (..., n, n); B is (..., n) or (..., n, k)."""
    L = _factor(A, what)
    if B.dim() == A.dim() - 1:
        return torch.cholesky_solve(B.unsqueeze(-1), L).squeeze(-1)
    return torch.cholesky_solve(B, L)


def spd_inverse(A: torch.Tensor, what: str = "inverse") -> torch.Tensor:
    """A^-1 for symmetric positive definite A (..., n, n)."""
    return torch.cholesky_inverse(_factor(A, what))

"""The closed-form problems certification runs an implementation on.

A :class:`Case` is one linear-meta-regression task (iMAML's synthetic problem, exact in float64) with a
shape, a condition number kappa, a proximal weight lam, K inner steps of size ``lr_scale / L`` (L the
largest eigenvalue of the inner Hessian) and a dtype. The defaults are chosen so that the candidates of
:mod:`metabench.certify.candidates` differ on every case (K small against kappa, so M^K is far from 0;
lam small against L, so lam A^-1 is far from I): an implementation can match only one of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from metabench._checks import check_int, check_real
from metabench.problems import LinearMetaRegression

__all__ = ["DTYPES", "PLAIN_CASES", "PROFILE_CASE", "PROXIMAL_CASES", "Case"]

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class Case:
    """One task: ``dim`` parameters, ``n_train`` support and ``n_val`` query rows, inner condition number
    ``kappa``, proximal weight ``lam`` (0: plain MAML), K = ``inner_steps`` GD steps of size ``lr_scale / L``,
    data and theta drawn from ``seed``, computed in ``dtype``."""

    dim: int
    n_train: int
    n_val: int
    kappa: float
    lam: float
    inner_steps: int
    lr_scale: float = 1.0
    seed: int = 0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        check_int("dim", self.dim, low=1)
        check_int("n_train", self.n_train, low=1)
        check_int("n_val", self.n_val, low=1)
        check_real("kappa", self.kappa, low=1.0)
        check_real("lam", self.lam, low=0.0)
        check_int("inner_steps", self.inner_steps, low=1)
        check_real("lr_scale", self.lr_scale, low=0.0, high=1.99, low_open=True)  # GD is stable below 2/L
        check_int("seed", self.seed, low=0)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def problem(self) -> LinearMetaRegression:
        """The task, generated in float64 and stored in ``dtype`` (the closed forms read the stored values)."""
        return LinearMetaRegression.generate(
            n_tasks=1,
            dim=self.dim,
            n_train=self.n_train,
            n_val=self.n_val,
            kappa=self.kappa,
            lam=self.lam,
            seed=self.seed,
            dtype=DTYPES[self.dtype],
        )

    def inner_lr(self, problem: LinearMetaRegression) -> float:
        """lr_scale / L: GD on the inner objective is stable for lr_scale < 2."""
        return self.lr_scale / problem.inner_hessian_bounds()[1]

    def theta(self) -> torch.Tensor:
        """The meta-parameters the implementation is called at: standard normal, seeded, in ``dtype``."""
        gen = torch.Generator().manual_seed(10_000 + self.seed)
        return torch.randn(self.dim, generator=gen, dtype=torch.float64).to(DTYPES[self.dtype])

    def describe(self) -> str:
        lr = "1/L" if self.lr_scale == 1.0 else f"{self.lr_scale:g}/L"
        return (
            f"dim {self.dim}, n_train {self.n_train}, kappa {self.kappa:g}, lam {self.lam:g}, K {self.inner_steps}, "
            f"lr {lr}, {self.dtype}, seed {self.seed}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


#: Cases with a proximal term (lam > 0): maml, fomaml, both truncations and implicit all differ.
PROXIMAL_CASES = (
    Case(dim=6, n_train=12, n_val=10, kappa=10.0, lam=0.05, inner_steps=5, seed=0),
    Case(dim=10, n_train=5, n_val=8, kappa=30.0, lam=0.1, inner_steps=8, lr_scale=0.5, seed=1),
    Case(dim=4, n_train=16, n_val=6, kappa=5.0, lam=0.2, inner_steps=1, seed=2),
    Case(dim=12, n_train=24, n_val=12, kappa=100.0, lam=0.02, inner_steps=12, lr_scale=1.5, seed=3),
    Case(dim=8, n_train=16, n_val=8, kappa=20.0, lam=0.05, inner_steps=3, seed=4),
    Case(dim=16, n_train=32, n_val=16, kappa=50.0, lam=0.01, inner_steps=20, lr_scale=0.8, seed=5),
    Case(dim=6, n_train=12, n_val=10, kappa=10.0, lam=0.05, inner_steps=4, seed=6, dtype="float32"),
    Case(dim=8, n_train=16, n_val=8, kappa=8.0, lam=0.1, inner_steps=6, lr_scale=0.7, seed=7, dtype="float32"),
)

#: Cases without one (lam = 0), for implementations with no proximal weight: plain MAML's problem.
PLAIN_CASES = tuple(Case(**{**c.to_dict(), "lam": 0.0, "n_train": max(c.n_train, c.dim)}) for c in PROXIMAL_CASES)

#: The case the memory and time profile sweeps K on (float64; dim large enough that a step's tensors show).
PROFILE_CASE = Case(dim=512, n_train=512, n_val=32, kappa=10.0, lam=0.05, inner_steps=1, seed=11)

"""Linear meta-regression: iMAML's synthetic problem, with every answer in closed form.

Task i has training data (X_tr, y_tr) with n_i rows and validation data (X_val, y_val) with m_i rows::

    Lhat_i(phi) = 1/(2 n_i) ||X_tr phi - y_tr||^2        L_i(phi) = 1/(2 m_i) ||X_val phi - y_val||^2
    g_i(theta, phi) = Lhat_i(phi) + lam/2 ||phi - theta||^2,   f_i = L_i(phi),   phi0 = theta

With H_i = X_tr'X_tr/n_i, b_i = X_tr'y_tr/n_i and A_i = H_i + lam I, the inner minimiser is
phi_i* = A_i^-1 (b_i + lam theta), so d phi_i*/d theta = lam A_i^-1 and the exact
hypergradient is  mean_i lam A_i^-1 grad L_i(phi_i*)  = mean_i (I + H_i/lam)^-1 grad L_i(phi_i*).
The condition number of the inner problem is kappa_i = (eig_max(H_i)+lam)/(eig_min(H_i)+lam).

Tasks may have different numbers of rows (few-shot data sets have such tasks): they are stored
zero-padded to the largest n_i (m_i) with the per-task counts ``train_rows`` (``val_rows``); the zero
rows add nothing to the sums and every normalisation uses the task's own count. Tasks of equal sizes
are stored as they are, with the scalar counts ``n_train``, ``n_val``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral
from typing import ClassVar

import torch

from metabench._checks import check_finite_tensor, check_int, check_real
from metabench._linalg import spd_inverse, spd_solve
from metabench.problems._gd_closed_form import (
    check_gd_finite,
    check_nonsingular,
    geometric_sum,
    require_finite,
    step_powers,
)
from metabench.problems._random import (
    SPECTRA,
    check_kappa,
    clustered_spectrum,
    condition_spectrum,
    random_orthonormal,
    uniform_spectrum,
)
from metabench.problems.base import BilevelProblem
from metabench.problems.registry import PROBLEMS

__all__ = ["LinearMetaRegression"]

MAX_SCALE = math.sqrt(torch.finfo(torch.float64).max)  # 1.3e154: the bound on n_train * L (see generate)


@PROBLEMS.register("linear_meta_regression")
class LinearMetaRegression(BilevelProblem):
    """iMAML's linear meta-regression (MAML family), batched over tasks.

    Build it with :meth:`from_arrays` (your data, tasks of any sizes) or :meth:`generate` (a chosen
    condition number). ``n_train``/``n_val`` are the rows per task (an int when every task has as
    many, else a tuple with one count per task); ``train_rows``/``val_rows`` are always the per-task tuples.
    """

    family = "maml"
    truth = "exact"
    #: a small instance for the conformance suite over every registered problem (tests/test_registered_problems.py)
    #: the standard instance (presets, ``metabench profile``, asv: ``metabench.sweep.sizes``) and profile's extras
    standard_params: ClassVar[dict] = {"n_tasks": 4, "dim": 20, "n_train": 40, "n_val": 40, "lam": 1.0}
    profile_params: ClassVar[dict] = {"kappa": 10.0}
    conformance_params: ClassVar[dict] = {"n_tasks": 2, "dim": 3, "n_train": 6, "n_val": 6, "kappa": 10.0, "lam": 1.0}

    def __init__(
        self,
        X_tr,
        y_tr,
        X_val,
        y_val,
        lam: float,
        meta: dict | None = None,
        *,
        train_rows: Sequence[int] | None = None,
        val_rows: Sequence[int] | None = None,
    ):
        """Tensors X_tr (T, n, d), y_tr (T, n), X_val (T, m, d), y_val (T, m).

        ``train_rows[i]`` (``val_rows[i]``) is the number of real rows of task i when the others are zero
        padding; None means every row is real. Equal counts keep the scalar path (the padding is dropped).
        """
        self.lam = check_real("lam", lam, low=0.0)
        self.n_tasks, n_pad, self.dim = X_tr.shape
        m_pad = X_val.shape[1]
        train = _row_counts("train_rows", "n_train", train_rows, self.n_tasks, n_pad)
        val = _row_counts("val_rows", "n_val", val_rows, self.n_tasks, m_pad)
        _check_padding("X_tr", "y_tr", "train_rows", X_tr, y_tr, train)
        _check_padding("X_val", "y_val", "val_rows", X_val, y_val, val)
        if len(set(train)) == 1 and train[0] < n_pad:  # equal counts: drop the padding, keep the scalar path
            X_tr, y_tr = X_tr[:, : train[0]], y_tr[:, : train[0]]
        if len(set(val)) == 1 and val[0] < m_pad:
            X_val, y_val = X_val[:, : val[0]], y_val[:, : val[0]]
        self._data = {"X_tr": X_tr, "y_tr": y_tr, "X_val": X_val, "y_val": y_val}
        self.train_rows, self.val_rows = train, val
        self.n_train = train[0] if len(set(train)) == 1 else train
        self.n_val = val[0] if len(set(val)) == 1 else val
        if not isinstance(self.n_train, int):  # ragged: per-task counts travel with the batch (batch_data)
            self._data["train_rows"] = torch.tensor(train, dtype=X_tr.dtype, device=X_tr.device)
        if not isinstance(self.n_val, int):
            self._data["val_rows"] = torch.tensor(val, dtype=X_val.dtype, device=X_val.device)
        self.theta_shape = (self.dim,)
        self.phi_shape = (self.dim,)
        self._meta = dict(meta or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, tasks, lam: float) -> LinearMetaRegression:
        """Build from a list of ``(X_tr, y_tr, X_val, y_val)`` tensors, one tuple per task.

        Shapes X_tr (n_i, d), y_tr (n_i,), X_val (m_i, d), y_val (m_i,): every task has the same number
        of columns d, while the numbers of rows n_i >= 1, m_i >= 1 may differ from task to task. Ragged
        tasks are zero-padded to the largest n_i (m_i) and keep their counts, so that
        Lhat_i = 1/(2 n_i) ||X_tr,i phi - y_tr,i||^2 and L_i = 1/(2 m_i) ||X_val,i phi - y_val,i||^2 over
        their real rows; tasks of equal sizes are stacked as they are.
        """
        if not isinstance(tasks, (list, tuple)) or len(tasks) == 0:
            raise ValueError("tasks must be a non-empty list of (X_tr, y_tr, X_val, y_val) tuples")
        names = ("X_tr", "y_tr", "X_val", "y_val")
        for i, task in enumerate(tasks):
            if not isinstance(task, (list, tuple)) or len(task) != 4:
                raise ValueError(f"tasks[{i}] must be a tuple (X_tr, y_tr, X_val, y_val)")
            for name, value in zip(names, task):
                check_finite_tensor(f"tasks[{i}].{name}", value)
            X_tr, y_tr, X_val, y_val = task
            if X_tr.dim() != 2 or X_val.dim() != 2 or y_tr.dim() != 1 or y_val.dim() != 1:
                raise ValueError(f"tasks[{i}]: X_tr and X_val must be 2-D, y_tr and y_val 1-D")
            if y_tr.shape[0] != X_tr.shape[0] or y_val.shape[0] != X_val.shape[0]:
                raise ValueError(
                    f"tasks[{i}]: y_tr has {y_tr.shape[0]} rows for X_tr's {X_tr.shape[0]}, "
                    f"y_val has {y_val.shape[0]} rows for X_val's {X_val.shape[0]}"
                )
            for name, param, rows in (("X_tr", "n_train", X_tr.shape[0]), ("X_val", "n_val", X_val.shape[0])):
                if rows == 0:
                    raise ValueError(
                        f"tasks[{i}].{name} has 0 rows: {param} must be >= 1 for every task "
                        f"(an empty set makes its loss 0/0)"
                    )
            if X_tr.shape[1] != X_val.shape[1]:
                raise ValueError(f"tasks[{i}]: X_tr has {X_tr.shape[1]} columns, X_val {X_val.shape[1]}")
            if X_tr.shape[1] != tasks[0][0].shape[1]:
                raise ValueError(
                    f"tasks[{i}].X_tr has {X_tr.shape[1]} columns, but tasks[0].X_tr has "
                    f"{tasks[0][0].shape[1]}: every task must have the same number of columns (dim)"
                )
        train = tuple(int(task[0].shape[0]) for task in tasks)
        val = tuple(int(task[2].shape[0]) for task in tasks)
        n_pad, m_pad = max(train), max(val)
        rows = (n_pad, n_pad, m_pad, m_pad)
        stacked = [torch.stack([_pad_rows(task[j], rows[j]) for task in tasks]) for j in range(4)]
        dtype = torch.promote_types(stacked[0].dtype, stacked[2].dtype)
        return cls(*(s.to(dtype) for s in stacked), lam=lam, meta={"source": "arrays"}, train_rows=train, val_rows=val)

    @classmethod
    def generate(
        cls,
        n_tasks: int,
        dim: int,
        n_train: int,
        n_val: int,
        kappa: float,
        lam: float,
        seed: int,
        dtype: torch.dtype = torch.float64,
        *,
        task_std: float = 1.0,
        noise_std: float = 0.1,
        spectrum: str = "geometric",
        distinct: int | None = None,
    ) -> LinearMetaRegression:
        """Random tasks whose inner objectives all have condition number exactly ``kappa``.

        The eigenvalues of G_i = H_i + lam I lie in [mu, L], L = kappa mu, with L = max(1, lam kappa)
        (so mu >= lam keeps H_i positive semi-definite), rotated by a random orthogonal matrix per task.
        ``spectrum`` lays them out (d = dim, j = 0..d-1):

        - ``"geometric"`` (default): g_j = mu kappa^(j/(d-1)), d distinct values;
        - ``"clustered"``: only ``distinct`` values mu kappa^(c/(distinct-1)), c = 0..distinct-1, each
          repeated about d/distinct times (``_random.cluster_sizes``: the lowest clusters take the remainder).
          CG on G_i then terminates in ``distinct`` iterations (exact arithmetic), the iMAML Figure-2a setting
          where a few CG iterations solve the implicit system exactly. ``distinct`` must be in [2, dim] when
          kappa > 1 and 1 when kappa = 1; ``distinct = dim`` is the geometric spectrum itself;
        - ``"uniform"``: g_j = mu + (L - mu) j/(d-1), evenly spaced.

        ``distinct`` applies to ``"clustered"`` only (None otherwise). Task weights are w_i = w + task_std z_i
        and targets y = X w_i + noise_std e. Deterministic in ``seed``; built in float64. The defaults give
        the same tensors as before ``spectrum`` existed.

        n_train < dim: H_i = X_tr'X_tr/n has rank n = n_train, so it has d - n zero eigenvalues: mu = lam
        (lam must be > 0) and G_i has the eigenvalue lam with multiplicity d - n. The geometric (uniform)
        spectrum keeps the top n of its d values on range(H_i) and sets the rest to lam; the clustered one
        puts its lowest value lam on null(H_i) (that cluster enlarged to d - n eigenvalues) and shares the
        other distinct - 1 values among the n range eigenvalues, so it needs distinct <= n + 1. The condition
        number of G_i is still exactly kappa, but it is not what an iterative solver sees:

        - gradient descent from phi0 = theta never leaves theta + range(H_i) (grad g_i = H_i phi - b_i +
          lam (phi - theta) with b_i in range(H_i)), where G_i's eigenvalues are the geometric values
          j = d-n..d-1, lam kappa^(j/(d-1)), so its condition number there is exactly (not only about)
          ``kappa_eff = L / (lam kappa^((d-n)/(d-1))) = kappa^((n-1)/(d-1))`` (e.g. 2.64 for kappa = 100,
          d = 20, n = 5), and GD at lr = 1/L contracts the error by 1 - kappa^(-(n-1)/(d-1)) per step, an
          attained bound. (The gap from lam up to the smallest range eigenvalue is the complementary factor
          kappa^((d-n)/(d-1)); the two multiply to kappa.)
          Uniform: kappa_eff = kappa / (1 + (kappa - 1)(d - n)/(d - 1));
          clustered: kappa^((distinct-2)/(distinct-1));
        - CG on G_i v = grad L_i (the implicit system; its right-hand side has components on null(H_i)) sees
          n + 1 distinct eigenvalues, lam and the n range values (clustered: ``distinct``). It terminates in
          at most n + 1 iterations in exact arithmetic; its Chebyshev bound converges at kappa_eff's rate after
          the extra iteration for the isolated eigenvalue lam, with a constant up to kappa - 1 = L/lam - 1
          (measured: 6 iterations to a 1e-10 relative residual for kappa = 100, d = 20, n = 5).

        The same happens with n >= dim whenever lam kappa >= 1: then mu = lam, so H_i's lowest eigenvalue (the
        whole lowest cluster, for ``"clustered"``) is 0 and GD sees L over the next value: kappa^((d-2)/(d-1))
        for the geometric spectrum, kappa^((distinct-2)/(distinct-1)) for the clustered one (CG still sees all
        ``distinct`` values). With lam kappa < 1, L = 1 and mu = 1/kappa > lam: H_i is positive definite and
        GD sees kappa itself.

        kappa must be in [1, 1e12]: the matrices carry float64 rounding errors of about
        eps * L * sqrt(dim) (eps = 2.2e-16), so mu = L/kappa is meaningful only far above that, and
        kappa <= 1e12 keeps the realised condition number within ~1% for dim up to ~1000
        (``_random.check_kappa``). n_train * L must be <= 1.3e154 (the square root of float64's largest
        number): X_tr'X_tr and the squared residuals of the losses grow like n_train * L.
        """
        n_tasks = check_int("n_tasks", n_tasks, low=1)
        dim = check_int("dim", dim, low=1)
        n_train = check_int("n_train", n_train, low=1)
        n_val = check_int("n_val", n_val, low=1)
        kappa = check_kappa(kappa)
        lam = check_real("lam", lam, low=0.0)
        seed = check_int("seed", seed, low=0)
        task_std = check_real("task_std", task_std, low=0.0)
        noise_std = check_real("noise_std", noise_std, low=0.0)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if dim == 1 and kappa != 1.0:
            raise ValueError(f"kappa must be 1 when dim = 1 (one eigenvalue), got {kappa}")
        if n_train < dim and lam == 0.0:
            raise ValueError(
                f"with n_train ({n_train}) < dim ({dim}) the training Hessian is singular, "
                "so the condition number is infinite unless lam > 0; got lam = 0"
            )
        distinct = _check_spectrum(spectrum, distinct, dim, n_train, kappa)
        high = lam * kappa if n_train < dim else max(1.0, lam * kappa)
        if not n_train * high <= MAX_SCALE:  # also catches lam * kappa = inf
            raise ValueError(
                f"lam = {lam:g} is too large: the inner Hessian's largest eigenvalue L = lam * kappa = {lam * kappa:g} "
                f"times n_train = {n_train} must be <= {MAX_SCALE:.3g} (the square root of float64's largest number), "
                "since X_tr'X_tr and the squared residuals of the losses grow like n_train * L"
            )
        low = high / kappa
        gen = torch.Generator().manual_seed(seed)
        w_mean = torch.randn(dim, generator=gen, dtype=torch.float64)
        rank = min(n_train, dim)
        if spectrum == "clustered":
            values = clustered_spectrum(dim, low, high, distinct, at_low=dim - rank)
        elif spectrum == "uniform":
            values = uniform_spectrum(dim, low, high)
        else:
            values = condition_spectrum(dim, low, high)
        X_tr, y_tr, X_val, y_val = [], [], [], []
        for _ in range(n_tasks):
            g = values.clone()
            if n_train < dim:
                g[: dim - n_train] = low
            e = (g - lam).clamp_min(0.0)[dim - rank :]
            V = random_orthonormal(dim, dim, gen)[:, dim - rank :]
            U = random_orthonormal(n_train, rank, gen)
            X = (U * torch.sqrt(n_train * e)) @ V.T
            w = w_mean + task_std * torch.randn(dim, generator=gen, dtype=torch.float64)
            Xv = torch.randn(n_val, dim, generator=gen, dtype=torch.float64)
            X_tr.append(X)
            y_tr.append(X @ w + noise_std * torch.randn(n_train, generator=gen, dtype=torch.float64))
            X_val.append(Xv)
            y_val.append(Xv @ w + noise_std * torch.randn(n_val, generator=gen, dtype=torch.float64))
        data = [torch.stack(a).to(dtype) for a in (X_tr, y_tr, X_val, y_val)]
        if not all(bool(torch.isfinite(a).all()) for a in data):
            raise ValueError(
                f"lam = {lam:g} is too large for dtype {dtype}: with L = lam * kappa = {lam * kappa:g} the "
                f"training rows (entries of size sqrt(L)) or targets overflow it; use float64 or a smaller lam"
            )
        meta = {"source": "generate", "kappa": kappa, "seed": seed, "task_std": task_std, "noise_std": noise_std}
        meta.update(spectrum=spectrum, distinct=distinct)
        return cls(*data, lam=lam, meta=meta)

    # ------------------------------------------------------------------ objectives
    def inner_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        X, y = d["X_tr"], d["y_tr"]
        residual = torch.einsum("tnd,td->tn", X, phi) - y
        prox = (phi - theta).pow(2).sum(-1)
        rows = d["train_rows"] if "train_rows" in d else self.n_train
        return residual.pow(2).sum(-1) / (2 * rows) + 0.5 * self.lam * prox

    def outer_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        residual = torch.einsum("tmd,td->tm", d["X_val"], phi) - d["y_val"]
        rows = d["val_rows"] if "val_rows" in d else self.n_val
        return residual.pow(2).sum(-1) / (2 * rows)

    def inner_init(self, theta, tasks):
        return theta.unsqueeze(0).expand(len(tasks), *self.phi_shape)

    @property
    def inner_strongly_convex(self) -> bool:
        return self.lam > 0

    def describe(self) -> dict:
        """Name and parameters; ``n_train``/``n_val`` are ints, or lists of per-task counts for ragged tasks."""
        return {
            "problem": "linear_meta_regression",
            "n_tasks": self.n_tasks,
            "dim": self.dim,
            "n_train": self.n_train if isinstance(self.n_train, int) else list(self.n_train),
            "n_val": self.n_val if isinstance(self.n_val, int) else list(self.n_val),
            "lam": self.lam,
            **self._meta,
        }

    # ------------------------------------------------------------------ closed forms (float64)
    def _rows64(self, key: str, idx: torch.Tensor):
        """The row counts of the tasks in ``idx``: the int ``n_train``/``n_val``, or a float64 (t,) tensor."""
        if key in self._data:
            return self._data[key][idx].double()
        return self.n_train if key == "train_rows" else self.n_val

    def quadratics(self, tasks=None):
        """Per task, in float64: ``(H, b, Hv, bv, A)``, the quadratics every closed form is built from.

        Lhat_i(phi) = 1/2 phi'H_i phi - b_i'phi + const and L_i(phi) = 1/2 phi'Hv_i phi - bv_i'phi + const, with
        H_i = X_tr'X_tr / n_i, b_i = X_tr'y_tr / n_i, Hv_i = X_val'X_val / m_i, bv_i = X_val'y_val / m_i and
        A_i = H_i + lam I the inner Hessian. Shapes (t, d, d) and (t, d) for the t tasks in ``tasks``."""
        return self._quadratics(tasks)

    def _quadratics(self, tasks=None):
        """Per task, in float64: H, b (training), Hv, bv (validation), A = H + lam I (see :meth:`quadratics`)."""
        idx = self.task_index(tasks)
        X, y = self._data["X_tr"][idx].double(), self._data["y_tr"][idx].double()
        Xv, yv = self._data["X_val"][idx].double(), self._data["y_val"][idx].double()
        n, m = self._rows64("train_rows", idx), self._rows64("val_rows", idx)
        H = _per_task(X.transpose(1, 2) @ X, n)
        b = _per_task(torch.einsum("tnd,tn->td", X, y), n)
        Hv = _per_task(Xv.transpose(1, 2) @ Xv, m)
        bv = _per_task(torch.einsum("tmd,tm->td", Xv, yv), m)
        A = H + self.lam * torch.eye(self.dim, dtype=H.dtype, device=H.device)
        return H, b, Hv, bv, A

    def _theta64(self, theta) -> torch.Tensor:
        return self.check_theta(theta).detach().to(device=self.device, dtype=torch.float64)

    def _require_lam(self, what: str) -> None:
        if self.lam <= 0:
            raise ValueError(f"{what} needs lam > 0 (a unique inner minimiser); this problem has lam = {self.lam}")

    def _solvable(self, what: str, tasks=None):
        """``_quadratics(tasks)`` once lam > 0 and every A_i is checked nonsingular in float64 (else ValueError)."""
        self._require_lam(what)
        cache = self.__dict__.setdefault("_extremes_cache", {})
        if self.lam not in cache:  # (eig_min, eig_max) of every A_i: fixed data, computed once
            eig = torch.linalg.eigvalsh(self._quadratics()[4])
            cache[self.lam] = torch.stack([eig[:, 0], eig[:, -1]], dim=1)
        idx = self.task_index(tasks)
        hint = f"use a larger lam (this problem has lam = {self.lam:g})"
        check_nonsingular(what, cache[self.lam][idx], self.dim, idx, "inner Hessian A_i = H_i + lam I", hint)
        return self._quadratics(idx)

    def _overflow(self, theta: torch.Tensor) -> str:
        return f"the result is not finite at max |theta_j| = {float(theta.abs().max()):.3g} (lam = {self.lam:g})"

    def inner_hessian_bounds(self, tasks=None) -> tuple[float, float]:
        """(mu, L): the smallest and largest eigenvalue of the inner Hessians over the tasks (float64).

        GD on g converges for inner_lr < 2/L; inner_lr = 1/L is the textbook step."""
        eig = torch.linalg.eigvalsh(self._quadratics(tasks)[4])
        return float(eig[:, 0].min()), float(eig[:, -1].max())

    def condition_numbers(self, tasks=None) -> torch.Tensor:
        """kappa_i = (eig_max(H_i) + lam) / (eig_min(H_i) + lam), per task (float64)."""
        eig = torch.linalg.eigvalsh(self._quadratics(tasks)[4])
        return eig[:, -1] / eig[:, 0]

    def _phi_star(self, what: str, theta64: torch.Tensor, b: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        phi = spd_solve(A, b + self.lam * theta64)
        return require_finite(what, phi, "phi* = A^-1 (b + lam theta): " + self._overflow(theta64))

    def inner_solution(self, theta, tasks=None) -> torch.Tensor:
        """phi_i*(theta) = A_i^-1 (b_i + lam theta), stacked over tasks (float64)."""
        theta64 = self._theta64(theta)
        _, b, _, _, A = self._solvable("inner_solution", tasks)
        return self._phi_star("inner_solution", theta64, b, A)

    def meta_objective(self, theta, tasks=None) -> torch.Tensor:
        """F(theta) = mean_i L_i(phi_i*(theta)) at the exact inner minimiser (float64 scalar).

        L_i(phi) = 1/2 phi'Hv_i phi - bv_i'phi + ||y_val,i||^2 / (2 m_i)."""
        theta64 = self._theta64(theta)
        _, b, Hv, bv, A = self._solvable("meta_objective", tasks)
        phi = self._phi_star("meta_objective", theta64, b, A)
        idx = self.task_index(tasks)
        yv = self._data["y_val"][idx].double()
        quad = 0.5 * torch.einsum("td,tde,te->t", phi, Hv, phi) - (phi * bv).sum(-1)
        value = (quad + _per_task(yv.pow(2).sum(-1), self._rows64("val_rows", idx)) / 2).mean()
        return require_finite("meta_objective", value, self._overflow(theta64))

    def exact_hypergradient(self, theta, tasks=None) -> torch.Tensor:
        """grad F(theta) = mean_i lam A_i^-1 (Hv_i phi_i* - bv_i), exact (float64). Needs lam > 0."""
        theta64 = self._theta64(theta)
        _, b, Hv, bv, A = self._solvable("exact_hypergradient", tasks)
        phi = self._phi_star("exact_hypergradient", theta64, b, A)
        outer_grad = torch.einsum("tde,te->td", Hv, phi) - bv
        grad = (self.lam * spd_solve(A, outer_grad)).mean(0)
        return require_finite("exact_hypergradient", grad, self._overflow(theta64))

    def exact_algorithm_gradient(
        self, theta, inner_steps: int, inner_lr: float, truncate: int | None = None, tasks=None
    ):
        """d/dtheta mean_i L_i(phi_K), phi_K = K GD steps on g_i from phi0 = theta (float64).

        phi_{k+1} = M phi_k + lr (b + lam theta), M = I - lr A. Back-propagating the last T
        steps with phi_{K-T} held constant gives  d phi_K/d theta = [M^K if T = K] + lr lam sum_{j<T} M^j
        (symmetric), and the gradient is its product with grad L_i(phi_K) = Hv_i phi_K - bv_i.
        ``truncate=None`` means T = K (full back-prop). Raises DivergenceError where float64 overflows
        (inner_lr > 2/L with K large).
        """
        K = check_int("inner_steps", inner_steps, low=0)
        lr = check_real("inner_lr", inner_lr, low=0.0, low_open=True)
        T = K if truncate is None else check_int("truncate", truncate, low=min(1, K), high=K)
        theta = self._theta64(theta)
        _, b, Hv, bv, A = self._quadratics(tasks)
        a, Q = torch.linalg.eigh(A)
        rot = lambda v: torch.einsum("tde,td->te", Q, v)  # noqa: E731  (Q'v)
        unrot = lambda v: torch.einsum("tde,te->td", Q, v)  # noqa: E731  (Q v)
        drive = lr * (b + self.lam * theta)
        phi_K = unrot(step_powers(a, lr, K) * rot(theta.expand_as(b)) + geometric_sum(a, lr, K) * rot(drive))
        jac = lr * self.lam * geometric_sum(a, lr, T)
        if T == K:
            jac = jac + step_powers(a, lr, K)
        outer_grad = torch.einsum("tde,te->td", Hv, phi_K) - bv
        grad = unrot(jac * rot(outer_grad)).mean(0)
        check_gd_finite("exact_algorithm_gradient", (phi_K, jac, grad), lr, float(a[:, -1].max()), K, theta)
        return grad

    def meta_hessian(self, tasks=None) -> torch.Tensor:
        """The Hessian of F, constant since F is quadratic in theta (float64, (dim, dim)). Needs lam > 0.

        phi_i*(theta) = P_i theta + q_i with P_i = lam A_i^-1 (symmetric), so
        ``d2F/dtheta2 = mean_i P_i Hv_i P_i``: the matrix of :meth:`exact_optimum`'s normal
        equations. Its largest eigenvalue L_F makes 1/L_F a stable step of gradient descent on F.
        """
        _, _, Hv, _, A = self._solvable("meta_hessian", tasks)
        P = self.lam * spd_inverse(A)
        return require_finite("meta_hessian", (P @ Hv @ P).mean(0), f"P_i = lam A_i^-1 with lam = {self.lam:g}")

    def exact_optimum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta*, F(theta*)): F is quadratic in theta, so theta* solves its normal equations.

        phi_i* = P_i theta + q_i with P_i = lam A_i^-1 and q_i = A_i^-1 b_i; theta* is the
        minimum-norm solution of  mean_i P_i Hv_i P_i theta = mean_i P_i (bv_i - Hv_i q_i)
        (the matrix is :meth:`meta_hessian`).
        """
        _, b, Hv, bv, A = self._solvable("exact_optimum")
        Ainv = spd_inverse(A)
        P = self.lam * Ainv
        q = torch.einsum("tde,te->td", Ainv, b)
        M = self.meta_hessian()
        rhs = torch.einsum("tde,te->td", P, bv - torch.einsum("tde,te->td", Hv, q)).mean(0)
        theta_star = require_finite(
            "exact_optimum", torch.linalg.pinv(M, hermitian=True) @ rhs, "theta* = pinv(meta_hessian) rhs"
        )
        return theta_star, self.meta_objective(theta_star)


def _check_spectrum(spectrum, distinct, dim: int, n_train: int, kappa: float) -> int | None:
    """``distinct`` checked against ``spectrum`` (one of SPECTRA), dim, n_train and kappa; errors name the parameter."""
    if not isinstance(spectrum, str) or spectrum not in SPECTRA:
        raise ValueError(f"spectrum must be one of {list(SPECTRA)}, got {spectrum!r}")
    if spectrum != "clustered":
        if distinct is not None:
            raise ValueError(
                f"distinct applies only to spectrum='clustered' (got distinct={distinct!r} with "
                f"spectrum={spectrum!r}); spectrum='clustered' with distinct = dim is the geometric spectrum"
            )
        return None
    if distinct is None:
        raise ValueError(f"spectrum='clustered' needs distinct (the number of distinct eigenvalues) in [1, {dim}]")
    distinct = check_int("distinct", distinct, low=1, high=dim)
    if kappa == 1.0 and distinct != 1:
        raise ValueError(f"distinct must be 1 when kappa = 1 (every eigenvalue equals mu), got distinct = {distinct}")
    if kappa != 1.0 and distinct == 1:
        raise ValueError(f"distinct = 1 (one eigenvalue) needs kappa = 1, got kappa = {kappa:g}; use [2, {dim}]")
    if n_train < dim and distinct > n_train + 1:
        raise ValueError(
            f"distinct must be in [2, n_train + 1 = {n_train + 1}] when n_train ({n_train}) < dim ({dim}): G_i has "
            f"the eigenvalue lam on the {dim - n_train} null directions of H_i and at most n_train more values; "
            f"got distinct = {distinct}"
        )
    return distinct


def _per_task(value: torch.Tensor, rows) -> torch.Tensor:
    """``value / rows``: an int count for every task, or one count per task (leading dimension) broadcast."""
    if isinstance(rows, int):
        return value / rows
    return value / rows.reshape(-1, *([1] * (value.dim() - 1)))


def _pad_rows(value: torch.Tensor, rows: int) -> torch.Tensor:
    """``value`` with zero rows appended up to ``rows`` (itself when it has that many)."""
    if value.shape[0] == rows:
        return value
    return torch.cat([value, value.new_zeros((rows - value.shape[0], *value.shape[1:]))])


def _row_counts(name: str, param: str, counts, n_tasks: int, rows: int) -> tuple[int, ...]:
    """Per-task row counts: ``counts`` checked (ints in [1, rows], one per task), or ``rows`` for every task."""
    if counts is None:
        if rows == 0:
            raise ValueError(f"the tasks have 0 rows: {param} must be >= 1 (an empty set makes its loss 0/0)")
        return (int(rows),) * n_tasks
    if isinstance(counts, torch.Tensor):
        counts = counts.tolist()
    if not isinstance(counts, Sequence) or isinstance(counts, str) or len(counts) != n_tasks:
        raise ValueError(f"{name} must be a sequence of {n_tasks} row counts (one per task), got {counts!r}")
    out = []
    for i, c in enumerate(counts):
        if isinstance(c, bool) or not isinstance(c, Integral) or not 1 <= int(c) <= rows:
            raise ValueError(f"{name}[{i}] must be an integer in [1, {rows}] ({param} >= 1 for every task), got {c!r}")
        out.append(int(c))
    return tuple(out)


def _check_padding(x_name: str, y_name: str, name: str, X: torch.Tensor, y: torch.Tensor, counts) -> None:
    """Raise unless the rows beyond each task's count are zero in X and y (the padding adds nothing)."""
    rows = X.shape[1]
    if min(counts) == rows:
        return
    pad = torch.arange(rows, device=X.device).unsqueeze(0) >= torch.tensor(counts, device=X.device).unsqueeze(1)
    nonzero = ((X != 0).any(-1) | (y != 0)) & pad
    bad = nonzero.any(-1).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"task {i}: the rows of {x_name}/{y_name} beyond {name}[{i}] = {counts[i]} must be zero (padding)"
        )

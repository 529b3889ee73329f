"""Linear meta-regression: iMAML's synthetic problem, with every answer in closed form.

Task i has training data (X_tr, y_tr) with n rows and validation data (X_val, y_val) with m rows::

    Lhat_i(phi) = 1/(2n) ||X_tr phi - y_tr||^2          L_i(phi) = 1/(2m) ||X_val phi - y_val||^2
    g_i(theta, phi) = Lhat_i(phi) + lam/2 ||phi - theta||^2,   f_i = L_i(phi),   phi0 = theta

With H_i = X_tr'X_tr/n, b_i = X_tr'y_tr/n and A_i = H_i + lam I, the inner minimiser is
phi_i* = A_i^-1 (b_i + lam theta), so d phi_i*/d theta = lam A_i^-1 and the exact
hypergradient is  mean_i lam A_i^-1 grad L_i(phi_i*)  = mean_i (I + H_i/lam)^-1 grad L_i(phi_i*).
The condition number of the inner problem is kappa_i = (eig_max(H_i)+lam)/(eig_min(H_i)+lam).
"""

from __future__ import annotations

import torch

from metabench._checks import check_finite_tensor, check_int, check_real
from metabench.problems._gd_closed_form import geometric_sum, step_powers
from metabench.problems._random import condition_spectrum, random_orthonormal
from metabench.problems.base import BilevelProblem

__all__ = ["LinearMetaRegression"]


class LinearMetaRegression(BilevelProblem):
    """iMAML's linear meta-regression (MAML family), batched over tasks.

    Build it with :meth:`from_arrays` (your data) or :meth:`generate` (a chosen condition number).
    """

    family = "maml"

    def __init__(self, X_tr, y_tr, X_val, y_val, lam: float, meta: dict | None = None):
        self.lam = check_real("lam", lam, low=0.0)
        self._data = {"X_tr": X_tr, "y_tr": y_tr, "X_val": X_val, "y_val": y_val}
        self.n_tasks, self.n_train, self.dim = X_tr.shape
        self.n_val = X_val.shape[1]
        self.theta_shape = (self.dim,)
        self.phi_shape = (self.dim,)
        self._meta = dict(meta or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, tasks, lam: float) -> LinearMetaRegression:
        """Build from a list of ``(X_tr, y_tr, X_val, y_val)`` tensors, one tuple per task.

        Every task must have the same shapes: X_tr (n, d), y_tr (n,), X_val (m, d), y_val (m,).
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
            if X_tr.shape[1] != X_val.shape[1]:
                raise ValueError(f"tasks[{i}]: X_tr has {X_tr.shape[1]} columns, X_val {X_val.shape[1]}")
            for name, value, first in zip(names, task, tasks[0]):
                if value.shape != first.shape:
                    raise ValueError(
                        f"tasks[{i}].{name} has shape {tuple(value.shape)}, but tasks[0].{name} "
                        f"has {tuple(first.shape)}: every task must have the same shapes"
                    )
        stacked = [torch.stack([task[j] for task in tasks]) for j in range(4)]
        dtype = torch.promote_types(stacked[0].dtype, stacked[2].dtype)
        return cls(*(s.to(dtype) for s in stacked), lam=lam, meta={"source": "arrays"})

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
    ) -> LinearMetaRegression:
        """Random tasks whose inner objectives all have condition number exactly ``kappa``.

        The spectrum of G_i = H_i + lam I is geometric from mu to L = kappa mu, with
        L = max(1, lam kappa) (so mu >= lam keeps H_i positive semi-definite), rotated by a
        random orthogonal matrix per task. With n_train < dim, H_i has dim - n_train zero
        eigenvalues, so mu = lam and lam must be > 0. Task weights are w_i = w + task_std z_i
        and targets y = X w_i + noise_std e. Deterministic in ``seed``; built in float64.
        """
        n_tasks = check_int("n_tasks", n_tasks, low=1)
        dim = check_int("dim", dim, low=1)
        n_train = check_int("n_train", n_train, low=1)
        n_val = check_int("n_val", n_val, low=1)
        kappa = check_real("kappa", kappa, low=1.0)
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
        high = lam * kappa if n_train < dim else max(1.0, lam * kappa)
        low = high / kappa
        gen = torch.Generator().manual_seed(seed)
        w_mean = torch.randn(dim, generator=gen, dtype=torch.float64)
        rank = min(n_train, dim)
        X_tr, y_tr, X_val, y_val = [], [], [], []
        for _ in range(n_tasks):
            g = condition_spectrum(dim, low, high)
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
        meta = {"source": "generate", "kappa": kappa, "seed": seed, "task_std": task_std, "noise_std": noise_std}
        return cls(*(torch.stack(a).to(dtype) for a in (X_tr, y_tr, X_val, y_val)), lam=lam, meta=meta)

    # ------------------------------------------------------------------ objectives
    def inner_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        X, y = d["X_tr"], d["y_tr"]
        residual = torch.einsum("tnd,td->tn", X, phi) - y
        prox = (phi - theta).pow(2).sum(-1)
        return residual.pow(2).sum(-1) / (2 * self.n_train) + 0.5 * self.lam * prox

    def outer_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        residual = torch.einsum("tmd,td->tm", d["X_val"], phi) - d["y_val"]
        return residual.pow(2).sum(-1) / (2 * self.n_val)

    def inner_init(self, theta, tasks):
        return theta.unsqueeze(0).expand(len(tasks), *self.phi_shape)

    @property
    def inner_strongly_convex(self) -> bool:
        return self.lam > 0

    def describe(self) -> dict:
        return {
            "problem": "linear_meta_regression",
            "n_tasks": self.n_tasks,
            "dim": self.dim,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "lam": self.lam,
            **self._meta,
        }

    # ------------------------------------------------------------------ closed forms (float64)
    def _quadratics(self, tasks=None):
        """Per task, in float64: H, b (training), Hv, bv (validation), A = H + lam I."""
        idx = self.task_index(tasks)
        X, y = self._data["X_tr"][idx].double(), self._data["y_tr"][idx].double()
        Xv, yv = self._data["X_val"][idx].double(), self._data["y_val"][idx].double()
        H = X.transpose(1, 2) @ X / self.n_train
        b = torch.einsum("tnd,tn->td", X, y) / self.n_train
        Hv = Xv.transpose(1, 2) @ Xv / self.n_val
        bv = torch.einsum("tmd,tm->td", Xv, yv) / self.n_val
        A = H + self.lam * torch.eye(self.dim, dtype=H.dtype, device=H.device)
        return H, b, Hv, bv, A

    def _theta64(self, theta) -> torch.Tensor:
        return self.check_theta(theta).detach().to(device=self.device, dtype=torch.float64)

    def _require_lam(self, what: str) -> None:
        if self.lam <= 0:
            raise ValueError(f"{what} needs lam > 0 (a unique inner minimiser); this problem has lam = {self.lam}")

    def inner_hessian_bounds(self, tasks=None) -> tuple[float, float]:
        """(mu, L): the smallest and largest eigenvalue of the inner Hessians over the tasks (float64).

        GD on g converges for inner_lr < 2/L; inner_lr = 1/L is the textbook step."""
        eig = torch.linalg.eigvalsh(self._quadratics(tasks)[4])
        return float(eig[:, 0].min()), float(eig[:, -1].max())

    def condition_numbers(self, tasks=None) -> torch.Tensor:
        """kappa_i = (eig_max(H_i) + lam) / (eig_min(H_i) + lam), per task (float64)."""
        eig = torch.linalg.eigvalsh(self._quadratics(tasks)[4])
        return eig[:, -1] / eig[:, 0]

    def inner_solution(self, theta, tasks=None) -> torch.Tensor:
        """phi_i*(theta) = A_i^-1 (b_i + lam theta), stacked over tasks (float64)."""
        self._require_lam("inner_solution")
        _, b, _, _, A = self._quadratics(tasks)
        return torch.linalg.solve(A, b + self.lam * self._theta64(theta))

    def meta_objective(self, theta, tasks=None) -> torch.Tensor:
        """F(theta) = mean_i L_i(phi_i*(theta)) at the exact inner minimiser (float64 scalar)."""
        phi = self.inner_solution(theta, tasks)
        _, _, Hv, bv, _ = self._quadratics(tasks)
        idx = self.task_index(tasks)
        yv = self._data["y_val"][idx].double()
        quad = 0.5 * torch.einsum("td,tde,te->t", phi, Hv, phi) - (phi * bv).sum(-1)
        return (quad + yv.pow(2).sum(-1) / (2 * self.n_val)).mean()

    def exact_hypergradient(self, theta, tasks=None) -> torch.Tensor:
        """grad F(theta) = mean_i lam A_i^-1 (Hv_i phi_i* - bv_i), exact (float64). Needs lam > 0."""
        phi = self.inner_solution(theta, tasks)
        _, _, Hv, bv, A = self._quadratics(tasks)
        outer_grad = torch.einsum("tde,te->td", Hv, phi) - bv
        return (self.lam * torch.linalg.solve(A, outer_grad)).mean(0)

    def exact_algorithm_gradient(
        self, theta, inner_steps: int, inner_lr: float, truncate: int | None = None, tasks=None
    ):
        """d/dtheta mean_i L_i(phi_K), phi_K = K GD steps on g_i from phi0 = theta (float64).

        phi_{k+1} = M phi_k + lr (b + lam theta), M = I - lr A. Back-propagating the last T
        steps with phi_{K-T} held constant gives  d phi_K/d theta = [M^K if T = K] + lr lam sum_{j<T} M^j
        (symmetric), and the gradient is its product with grad L_i(phi_K) = Hv_i phi_K - bv_i.
        ``truncate=None`` means T = K (full back-prop).
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
        return unrot(jac * rot(outer_grad)).mean(0)

    def meta_hessian(self, tasks=None) -> torch.Tensor:
        """The Hessian of F, constant since F is quadratic in theta (float64, (dim, dim)). Needs lam > 0.

        phi_i*(theta) = P_i theta + q_i with P_i = lam A_i^-1 (symmetric), so
        ``d2F/dtheta2 = mean_i P_i Hv_i P_i``: the matrix of :meth:`exact_optimum`'s normal
        equations. Its largest eigenvalue L_F makes 1/L_F a stable step of gradient descent on F.
        """
        self._require_lam("meta_hessian")
        _, _, Hv, _, A = self._quadratics(tasks)
        P = self.lam * torch.linalg.inv(A)
        return (P @ Hv @ P).mean(0)

    def exact_optimum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta*, F(theta*)): F is quadratic in theta, so theta* solves its normal equations.

        phi_i* = P_i theta + q_i with P_i = lam A_i^-1 and q_i = A_i^-1 b_i; theta* is the
        minimum-norm solution of  mean_i P_i Hv_i P_i theta = mean_i P_i (bv_i - Hv_i q_i)
        (the matrix is :meth:`meta_hessian`).
        """
        self._require_lam("exact_optimum")
        _, b, Hv, bv, A = self._quadratics()
        Ainv = torch.linalg.inv(A)
        P = self.lam * Ainv
        q = torch.einsum("tde,te->td", Ainv, b)
        M = self.meta_hessian()
        rhs = torch.einsum("tde,te->td", P, bv - torch.einsum("tde,te->td", Hv, q)).mean(0)
        theta_star = torch.linalg.pinv(M, hermitian=True) @ rhs
        return theta_star, self.meta_objective(theta_star)

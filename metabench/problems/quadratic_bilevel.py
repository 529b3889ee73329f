"""Quadratic bilevel problem: the ITD-BiO / RM-MetaL setting, every answer in closed form.

theta in R^p is shared, phi in R^q is a per-task head::

    g_i(theta, phi) = 1/2 phi'A_i phi - phi'B_i theta - c_i'phi      (A_i symmetric positive definite)
    f_i(theta, phi) = 1/2 ||phi - t_i||^2 + rho/2 ||theta||^2,       phi0 = 0 (independent of theta)

phi_i* = A_i^-1 (B_i theta + c_i), so d phi_i*/d theta = A_i^-1 B_i and the exact hypergradient is
grad F(theta) = rho theta + mean_i B_i'A_i^-1 (phi_i* - t_i).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from metabench._checks import check_finite_tensor, check_int, check_real
from metabench._linalg import spd_solve
from metabench.problems._gd_closed_form import (
    check_gd_finite,
    check_nonsingular,
    geometric_sum,
    require_finite,
    step_powers,
)
from metabench.problems._random import check_kappa, condition_spectrum, random_orthonormal
from metabench.problems.base import BilevelProblem
from metabench.problems.registry import PROBLEMS

__all__ = ["QuadraticBilevel"]


@PROBLEMS.register("quadratic_bilevel")
class QuadraticBilevel(BilevelProblem):
    """Quadratic bilevel problem (bilevel family), batched over tasks.

    Build it with :meth:`from_arrays` (your matrices) or :meth:`generate` (a chosen condition number).
    """

    family = "bilevel"
    truth = "exact"
    #: a small instance for the conformance suite over every registered problem (tests/test_registered_problems.py)
    #: the standard instance (presets, ``metabench profile``, asv: ``metabench.sweep.sizes``) and profile's extras
    standard_params: ClassVar[dict] = {"n_tasks": 4, "p": 10, "q": 20, "rho": 0.1}
    profile_params: ClassVar[dict] = {"kappa": 10.0}
    conformance_params: ClassVar[dict] = {"n_tasks": 2, "p": 2, "q": 3, "kappa": 10.0, "rho": 0.1}

    def __init__(self, A, B, c, t, rho: float, meta: dict | None = None):
        self.rho = check_real("rho", rho, low=0.0)
        self._data = {"A": A, "B": B, "c": c, "t": t}
        self.n_tasks, self.q, self.p = B.shape
        self.theta_shape = (self.p,)
        self.phi_shape = (self.q,)
        self._meta = dict(meta or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, tasks, rho: float) -> QuadraticBilevel:
        """Build from a list of ``(A, B, c, t)`` tensors: A (q, q) SPD, B (q, p), c (q,), t (q,)."""
        if not isinstance(tasks, (list, tuple)) or len(tasks) == 0:
            raise ValueError("tasks must be a non-empty list of (A, B, c, t) tuples")
        names = ("A", "B", "c", "t")
        for i, task in enumerate(tasks):
            if not isinstance(task, (list, tuple)) or len(task) != 4:
                raise ValueError(f"tasks[{i}] must be a tuple (A, B, c, t)")
            for name, value in zip(names, task):
                check_finite_tensor(f"tasks[{i}].{name}", value)
            A, B, c, t = task
            if B.dim() != 2:
                raise ValueError(f"tasks[{i}].B must be 2-D (q, p), got shape {tuple(B.shape)}")
            q = B.shape[0]
            expected = {"A": (q, q), "c": (q,), "t": (q,)}
            for name, value in zip(("A", "c", "t"), (A, c, t)):
                if tuple(value.shape) != expected[name]:
                    raise ValueError(
                        f"tasks[{i}].{name} must have shape {expected[name]} (q = {q} from B), got {tuple(value.shape)}"
                    )
            if B.shape != tasks[0][1].shape:
                raise ValueError(
                    f"tasks[{i}].B has shape {tuple(B.shape)}, but tasks[0].B has "
                    f"{tuple(tasks[0][1].shape)}: every task must have the same shapes"
                )
            A64 = A.double()
            if not torch.allclose(A64, A64.T, rtol=1e-6, atol=1e-12):
                raise ValueError(f"tasks[{i}].A must be symmetric")
            if float(torch.linalg.eigvalsh(A64)[0]) <= 0:
                raise ValueError(f"tasks[{i}].A must be positive definite (g_i strongly convex in phi)")
        stacked = [torch.stack([task[j] for task in tasks]) for j in range(4)]
        dtype = stacked[0].dtype
        return cls(*(s.to(dtype) for s in stacked), rho=rho, meta={"source": "arrays"})

    @classmethod
    def generate(
        cls,
        n_tasks: int,
        p: int,
        q: int,
        kappa: float,
        rho: float,
        seed: int,
        dtype: torch.dtype = torch.float64,
    ) -> QuadraticBilevel:
        """Random tasks whose A_i have eigenvalues geometric in [1/kappa, 1]: condition number exactly kappa.

        A_i = Q_i diag(a) Q_i' with a random orthogonal Q_i; B_i has N(0, 1/p) entries,
        c_i and t_i are N(0, 1). Deterministic in ``seed``; built in float64.

        kappa must be in [1, 1e12]: A_i carries float64 rounding errors of about eps * sqrt(q)
        (eps = 2.2e-16, largest eigenvalue 1), so its smallest eigenvalue 1/kappa is meaningful only far
        above that, and kappa <= 1e12 keeps the realised condition number within ~1% for q up to ~1000
        (``_random.check_kappa``).
        """
        n_tasks = check_int("n_tasks", n_tasks, low=1)
        p = check_int("p", p, low=1)
        q = check_int("q", q, low=1)
        kappa = check_kappa(kappa)
        rho = check_real("rho", rho, low=0.0)
        seed = check_int("seed", seed, low=0)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if q == 1 and kappa != 1.0:
            raise ValueError(f"kappa must be 1 when q = 1 (one eigenvalue), got {kappa}")
        gen = torch.Generator().manual_seed(seed)
        a = condition_spectrum(q, 1.0 / kappa, 1.0)
        As, Bs, cs, ts = [], [], [], []
        for _ in range(n_tasks):
            Q = random_orthonormal(q, q, gen)
            A = (Q * a) @ Q.T
            As.append(0.5 * (A + A.T))
            Bs.append(torch.randn(q, p, generator=gen, dtype=torch.float64) / p**0.5)
            cs.append(torch.randn(q, generator=gen, dtype=torch.float64))
            ts.append(torch.randn(q, generator=gen, dtype=torch.float64))
        meta = {"source": "generate", "kappa": kappa, "seed": seed}
        return cls(*(torch.stack(x).to(dtype) for x in (As, Bs, cs, ts)), rho=rho, meta=meta)

    # ------------------------------------------------------------------ objectives
    def inner_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        A, B, c = d["A"], d["B"], d["c"]
        quad = 0.5 * torch.einsum("ti,tij,tj->t", phi, A, phi)
        return quad - torch.einsum("ti,tij,j->t", phi, B, theta) - (c * phi).sum(-1)

    def outer_loss(self, theta, phi, tasks):
        t = self.batch_data(theta, tasks)["t"]
        return 0.5 * (phi - t).pow(2).sum(-1) + 0.5 * self.rho * theta.pow(2).sum()

    def inner_init(self, theta, tasks):
        return torch.zeros(len(tasks), *self.phi_shape, dtype=theta.dtype, device=theta.device)

    @property
    def inner_strongly_convex(self) -> bool:
        return True  # A_i is checked positive definite on construction

    def describe(self) -> dict:
        return {
            "problem": "quadratic_bilevel",
            "n_tasks": self.n_tasks,
            "p": self.p,
            "q": self.q,
            "rho": self.rho,
            **self._meta,
        }

    # ------------------------------------------------------------------ closed forms (float64)
    def _matrices(self, tasks=None):
        idx = self.task_index(tasks)
        return tuple(self._data[k][idx].double() for k in ("A", "B", "c", "t"))

    def _theta64(self, theta) -> torch.Tensor:
        return self.check_theta(theta).detach().to(device=self.device, dtype=torch.float64)

    def _solvable(self, what: str, tasks=None):
        """``_matrices(tasks)`` once every A_i is checked nonsingular in float64 (else ValueError)."""
        if "_extremes" not in self.__dict__:  # (eig_min, eig_max) of every A_i: fixed data, computed once
            eig = torch.linalg.eigvalsh(self._matrices()[0])
            self._extremes = torch.stack([eig[:, 0], eig[:, -1]], dim=1)
        idx = self.task_index(tasks)
        hint = "A_i must be well conditioned (eig_min / eig_max far above 2.2e-16 * sqrt(q))"
        check_nonsingular(what, self._extremes[idx], self.q, idx, "inner Hessian A_i", hint)
        return self._matrices(idx)

    def _overflow(self, theta: torch.Tensor) -> str:
        return f"the result is not finite at max |theta_j| = {float(theta.abs().max()):.3g} (rho = {self.rho:g})"

    def inner_hessian_bounds(self, tasks=None) -> tuple[float, float]:
        """(mu, L): the smallest and largest eigenvalue of the inner Hessians over the tasks (float64).

        GD on g converges for inner_lr < 2/L; inner_lr = 1/L is the textbook step."""
        eig = torch.linalg.eigvalsh(self._matrices(tasks)[0])
        return float(eig[:, 0].min()), float(eig[:, -1].max())

    def condition_numbers(self, tasks=None) -> torch.Tensor:
        """kappa_i = eig_max(A_i) / eig_min(A_i), per task (float64)."""
        eig = torch.linalg.eigvalsh(self._matrices(tasks)[0])
        return eig[:, -1] / eig[:, 0]

    def inner_solution(self, theta, tasks=None) -> torch.Tensor:
        """phi_i*(theta) = A_i^-1 (B_i theta + c_i), stacked over tasks (float64)."""
        return self._phi_star("inner_solution", self._theta64(theta), tasks)

    def _phi_star(self, what: str, theta64: torch.Tensor, tasks):
        A, B, c, _ = self._solvable(what, tasks)
        phi = spd_solve(A, B @ theta64 + c)
        return require_finite(what, phi, "phi* = A^-1 (B theta + c): " + self._overflow(theta64))

    def meta_objective(self, theta, tasks=None) -> torch.Tensor:
        """F(theta) = mean_i f_i(theta, phi_i*(theta)) (float64 scalar)."""
        theta64 = self._theta64(theta)
        t = self._matrices(tasks)[3]
        phi = self._phi_star("meta_objective", theta64, tasks)
        value = 0.5 * (phi - t).pow(2).sum(-1).mean() + 0.5 * self.rho * theta64.pow(2).sum()
        return require_finite("meta_objective", value, self._overflow(theta64))

    def exact_hypergradient(self, theta, tasks=None) -> torch.Tensor:
        """grad F(theta) = rho theta + mean_i B_i'A_i^-1 (phi_i* - t_i), exact (float64)."""
        theta64 = self._theta64(theta)
        A, B, _, t = self._matrices(tasks)
        phi = self._phi_star("exact_hypergradient", theta64, tasks)
        v = spd_solve(A, phi - t)
        grad = self.rho * theta64 + torch.einsum("tij,ti->j", B, v) / len(B)
        return require_finite("exact_hypergradient", grad, self._overflow(theta64))

    def exact_algorithm_gradient(
        self, theta, inner_steps: int, inner_lr: float, truncate: int | None = None, phi0=None, tasks=None
    ):
        """d/dtheta mean_i f_i(theta, phi_K) for K GD steps on g_i from a constant phi0 (float64).

        phi_{k+1} = M phi_k + lr (B theta + c), M = I - lr A, so with the last T steps
        back-propagated  d phi_K/d theta = lr sum_{j<T} M^j B  (phi0 does not depend on theta) and
        the gradient is  rho theta + mean_i (d phi_K/d theta)'(phi_K - t_i).
        ``phi0`` is None (zeros), a (q,) tensor for every task, or one row per task. Raises
        DivergenceError where float64 overflows (inner_lr > 2/L with K large).
        """
        K = check_int("inner_steps", inner_steps, low=0)
        lr = check_real("inner_lr", inner_lr, low=0.0, low_open=True)
        T = K if truncate is None else check_int("truncate", truncate, low=min(1, K), high=K)
        theta = self._theta64(theta)
        A, B, c, t = self._matrices(tasks)
        if phi0 is None:
            phi0 = torch.zeros_like(c)
        else:
            check_finite_tensor("phi0", phi0)
            if tuple(phi0.shape) not in ((self.q,), tuple(c.shape)):
                raise ValueError(f"phi0 must have shape ({self.q},) or {tuple(c.shape)}, got {tuple(phi0.shape)}")
            phi0 = phi0.detach().to(device=c.device, dtype=torch.float64).expand_as(c)
        a, Q = torch.linalg.eigh(A)
        rot = lambda v: torch.einsum("tde,td->te", Q, v)  # noqa: E731  (Q'v)
        unrot = lambda v: torch.einsum("tde,te->td", Q, v)  # noqa: E731  (Q v)
        drive = lr * (B @ theta + c)
        phi_K = unrot(step_powers(a, lr, K) * rot(phi0) + geometric_sum(a, lr, K) * rot(drive))
        back = unrot(lr * geometric_sum(a, lr, T) * rot(phi_K - t))  # (lr sum M^j)'(phi_K - t)
        grad = self.rho * theta + torch.einsum("tij,ti->j", B, back) / len(B)
        check_gd_finite("exact_algorithm_gradient", (phi_K, back, grad), lr, float(a[:, -1].max()), K, theta)
        return grad

    def meta_hessian(self, tasks=None) -> torch.Tensor:
        """The Hessian of F, constant since F is quadratic in theta (float64, (p, p)).

        phi_i*(theta) = P_i theta + q_i with P_i = A_i^-1 B_i, so
        ``d2F/dtheta2 = mean_i P_i'P_i + rho I``: the matrix of :meth:`exact_optimum`'s normal
        equations. Its largest eigenvalue L_F makes 1/L_F a stable step of gradient descent on F.
        """
        A, B, _, _ = self._solvable("meta_hessian", tasks)
        P = spd_solve(A, B)
        M = (P.transpose(1, 2) @ P).mean(0) + self.rho * torch.eye(self.p, dtype=P.dtype, device=P.device)
        return require_finite("meta_hessian", M, f"P_i = A_i^-1 B_i with rho = {self.rho:g}")

    def exact_optimum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta*, F(theta*)): with P_i = A_i^-1 B_i and q_i = A_i^-1 c_i, theta* is the
        minimum-norm solution of  (mean_i P_i'P_i + rho I) theta = mean_i P_i'(t_i - q_i)
        (the matrix is :meth:`meta_hessian`)."""
        A, B, c, t = self._solvable("exact_optimum")
        P = spd_solve(A, B)
        qv = spd_solve(A, c)
        M = self.meta_hessian()
        rhs = torch.einsum("tij,ti->j", P, t - qv) / len(P)
        theta_star = require_finite(
            "exact_optimum", torch.linalg.pinv(M, hermitian=True) @ rhs, "theta* = pinv(meta_hessian) rhs"
        )
        return theta_star, self.meta_objective(theta_star)

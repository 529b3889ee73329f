"""The float64 references of a ``FewShotClassification`` (networks have no closed form), independent of metabench.

A mixin of :class:`~metabench.problems.few_shot.problem.FewShotClassification` with two references:

- :meth:`~ReferenceHypergradient.reference_hypergradient`: grad F(theta) of the *converged* bilevel problem,
  F = mean_i f_i(theta, phi_i*(theta)), by the AID identity at a tightly converged phi_i*;
- :meth:`~ReferenceHypergradient.reference_algorithm_gradient`: d/dtheta mean_i f_i(theta, phi_K,i(theta)),
  the derivative of K plain gradient-descent steps (what maml / truncated / itd_bio compute).

They are the truth the algorithms are judged against, so they share no code with ``metabench.solvers`` or
``metabench.algorithms``: the inner solve is ``torch.optim.LBFGS`` finished by a few Newton steps (MAML
formulation) or a damped Newton written here (bilevel head); the linear solve is ``scipy.sparse.linalg`` CG /
MINRES on a ``LinearOperator`` whose matvec is a float64 autograd Hessian-vector product (MAML formulation) or
``torch.linalg.solve`` on the assembled head Hessian (bilevel); the K-step derivative is a plain
``torch.autograd.grad`` loop. Every computation runs on the loop path, per task, in float64, on the problem's device.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings

import numpy as np
import scipy.sparse.linalg as spla
import torch

from metabench._checks import check_int, check_real
from metabench.errors import DivergenceError, MetabenchError
from metabench.problems.few_shot import network

__all__ = ["LINEAR_SOLVERS", "ReferenceHypergradient", "ReferenceNotConverged"]

log = logging.getLogger(__name__)

#: The scipy solvers ``reference_hypergradient`` offers for the MAML formulation's linear system.
LINEAR_SOLVERS = ("cg", "minres")
#: Default inner iteration caps: L-BFGS iterations per task ("maml"), Newton iterations per task ("bilevel").
INNER_ITERS = {"maml": 1000, "bilevel": 50}
#: L-BFGS iterations between two checks of ||grad_phi g_i|| (the optimiser keeps its memory across them).
LBFGS_CHUNK = 50
#: Newton steps at most after L-BFGS, where its line search stalls at rounding below this gradient norm.
POLISH_STEPS, POLISH_BELOW = 5, 1e-5
#: Relative residual and Hessian-vector products at most of one polishing Newton step's MINRES solve.
POLISH_RTOL, POLISH_MATVECS = 1e-6, 300
#: Restarts of the linear solve from its last iterate while the true relative residual exceeds the tolerance.
LINEAR_RESTARTS = 4


class ReferenceNotConverged(MetabenchError):
    """A reference solve stopped short of its tolerance (``strict=True``): there is no reference to judge by."""


def _rtol_keyword(solver) -> str:
    """scipy >= 1.12 names the relative tolerance ``rtol``; older releases ``tol``."""
    return "rtol" if "rtol" in inspect.signature(solver).parameters else "tol"


class ReferenceHypergradient:
    """``reference_hypergradient`` and ``reference_algorithm_gradient`` for a FewShotClassification."""

    #: What the last :meth:`reference_hypergradient` did (solvers, iterations, gradient norm, residual, time).
    reference_info: dict

    # ------------------------------------------------------------------ the converged hypergradient
    def reference_hypergradient(
        self,
        theta: torch.Tensor,
        tasks=None,
        *,
        damping: float = 0.0,
        inner_tol: float = 1e-9,
        inner_iters: int | None = None,
        linear_tol: float = 1e-10,
        linear_iters: int = 10_000,
        linear_solver: str = "cg",
        strict: bool = False,
    ) -> torch.Tensor:
        """A high-accuracy float64 *reference* of grad F(theta), F(theta) = mean_i f_i(theta, phi_i*(theta)).

        A reference, not an exact value: phi_i* is an iterative solve's output and (for "maml") only a
        local minimiser. At phi_i* the AID identity gives

            grad F = mean_i [grad_theta f_i - d2g_i/(dtheta dphi) v_i],   (d2g_i/dphi2 + delta I) v_i = grad_phi f_i

        with delta = ``damping`` (0: the AID system itself; delta > 0: the Tikhonov-damped system that a damped
        imaml or rm_metal solves, so that their bias can be told from their solver error). For "maml",
        d2g_i/dphi2 = H_i + lam I and d2g_i/(dtheta dphi) = -lam I, so grad F = mean_i lam v_i, iMAML's
        (I + (H_i + delta I)/lam)^-1 grad L_i(phi_i*).

        - inner solve, "maml" (needs lam > 0): ``torch.optim.LBFGS`` (strong-Wolfe line search, float64) per
          task from phi0 = theta until ||grad_phi g_i|| <= ``inner_tol`` (at most ``inner_iters`` iterations,
          default 1000); "bilevel": damped Newton on the head with the assembled head Hessian on the
          backbone's fixed features (at most ``inner_iters`` iterations, default 50; needs the head to be the
          network's last operation, checked).
        - linear solve, "maml": ``scipy.sparse.linalg.cg`` (or ``"minres"``) on a ``LinearOperator`` whose
          matvec is the float64 autograd Hessian-vector product, per task, to relative residual
          ||A v - b|| / ||b|| <= ``linear_tol`` (restarted from its iterate while the true residual is above
          it; at most ``linear_iters`` Hessian-vector products per task); "bilevel": ``torch.linalg.solve``
          with the assembled head Hessian.

        Returns a float64 tensor of theta's shape on the problem's device. What was done is in
        :attr:`reference_info`: ``inner_iters`` (the most any task took), ``inner_grad_norm`` (the largest
        final ||grad_phi g_i||), ``linear_rel_residual`` (the largest ||A v_i - b_i|| / ||b_i||, measured with
        the autograd Hessian-vector product), ``linear_matvecs``, the solvers' names and the seconds spent
        (``inner_time_s``, ``linear_time_s``, ``time_s``). An inner or linear solve that stops short of its
        tolerance warns (RuntimeWarning); with ``strict=True`` it raises :class:`ReferenceNotConverged` instead,
        and an inner solve that stops short does so at once, before any linear solve (what a sweep wants: no
        reference rather than a wrong one, at the cost of one inner solve).

        Measured (2 shared CPU cores, torch 2.13): on ``omniglot_like(n_tasks=4, lam=1.0)`` (ReLU, max-pool,
        BatchNorm) L-BFGS does not converge: ||grad_phi g_i|| stays ~0.2 through 5000 iterations (the loss is
        piecewise smooth; with lam = 50 and no normalisation it stalls at 7e-3), so the default run (1000
        iterations a task, 354 s, then CG to 1e-10 in ~300 products a task, 275 s) ends with the warning. The
        same net with SiLU and average pooling at lam = 50 converges: 49 L-BFGS iterations, one Newton step to
        8e-14, CG in 32 products, 20 s a task.
        """
        start = time.perf_counter()
        index = self.task_index(tasks)
        theta64 = self.check_theta(theta).detach().to(device=self.device, dtype=torch.float64)
        damping = check_real("damping", damping, low=0.0)
        inner_tol = check_real("inner_tol", inner_tol, low=0.0)
        linear_tol = check_real("linear_tol", linear_tol, low=0.0)
        linear_iters = check_int("linear_iters", linear_iters, low=1)
        if linear_solver not in LINEAR_SOLVERS:
            raise ValueError(f"linear_solver must be one of {list(LINEAR_SOLVERS)}, got {linear_solver!r}")
        if self.formulation not in INNER_ITERS:
            raise ValueError(
                f"reference_hypergradient covers the 'maml' and 'bilevel' formulations, not {self.formulation!r}; "
                "the truth of the anil formulation is reference_algorithm_gradient, the derivative of its K-step "
                "objective (what anil computes)"
            )
        default_iters = INNER_ITERS[self.formulation]
        inner_iters = default_iters if inner_iters is None else check_int("inner_iters", inner_iters, low=1)
        if self.formulation == "maml" and self.lam <= 0:
            raise ValueError(
                "reference_hypergradient needs lam > 0 in the MAML formulation (a locally unique inner "
                "minimiser); with lam = 0 use reference_algorithm_gradient, the truth of the K-step maml objective"
            )
        grad = torch.zeros_like(theta64)
        inner = {"inner_iters": 0, "inner_evals": 0, "inner_grad_norm": 0.0, "inner_time_s": 0.0}
        linear = {"linear_matvecs": 0, "linear_rel_residual": 0.0, "linear_time_s": 0.0}
        with self.forced_path("loop"):
            for i in range(len(index)):
                task = index[i : i + 1]
                tic = time.perf_counter()
                solver = self._newton_head if self.formulation == "bilevel" else self._lbfgs
                phi, stats = solver(theta64, task, inner_iters, inner_tol)
                if strict and not stats["grad_norm"] <= inner_tol:
                    raise ReferenceNotConverged(
                        f"the reference's inner solve did not converge on task {int(task[0])}: "
                        f"||grad_phi g|| = {stats['grad_norm']:.3g} > inner_tol = {inner_tol:g} after "
                        f"{stats['iters']} iterations ({'Newton' if self.formulation == 'bilevel' else 'L-BFGS'}; "
                        "a loss that is only piecewise smooth, ReLU or max-pooling, has no converged "
                        "inner solution to this tolerance)"
                    )
                toc = time.perf_counter()
                solve = (linear_solver, linear_tol, linear_iters)
                part, matvecs, residual = self._aid(theta64, phi, task, damping, *solve)
                inner["inner_time_s"] += toc - tic
                linear["linear_time_s"] += time.perf_counter() - toc
                grad += part / len(index)
                inner["inner_iters"] = max(inner["inner_iters"], stats["iters"])
                inner["inner_evals"] += stats["evals"]
                inner["inner_grad_norm"] = max(inner["inner_grad_norm"], stats["grad_norm"])
                inner["inner_newton_steps"] = max(inner.get("inner_newton_steps", 0), stats.get("newton_steps", 0))
                linear["linear_matvecs"] += matvecs
                linear["linear_rel_residual"] = max(linear["linear_rel_residual"], residual)
        bilevel = self.formulation == "bilevel"
        self.reference_info = {
            "kind": "reference",
            "formulation": self.formulation,
            "n_tasks": len(index),
            "damping": damping,
            "inner_solver": "damped Newton (assembled head Hessian)"
            if bilevel
            else "torch.optim.LBFGS (strong_wolfe), then Newton (scipy minres) where it stalls",
            "inner_tol": inner_tol,
            **inner,
            "linear_solver": "torch.linalg.solve (assembled head Hessian)" if bilevel else f"scipy {linear_solver}",
            "linear_tol": linear_tol,
            **linear,
            "time_s": time.perf_counter() - start,
        }
        if inner["inner_grad_norm"] > inner_tol:
            warnings.warn(
                f"reference_hypergradient: inner solve stopped at max_i ||grad_phi g_i|| = "
                f"{inner['inner_grad_norm']:.3g} > inner_tol = {inner_tol:g} after {inner['inner_iters']} iterations",
                RuntimeWarning,
                stacklevel=2,
            )
        if linear["linear_rel_residual"] > linear_tol and not bilevel:
            if strict:
                raise ReferenceNotConverged(
                    f"the reference's linear solve stopped at relative residual "
                    f"{linear['linear_rel_residual']:.3g} > linear_tol = {linear_tol:g}"
                )
            warnings.warn(
                f"reference_hypergradient: linear solve stopped at relative residual "
                f"{linear['linear_rel_residual']:.3g} > linear_tol = {linear_tol:g}",
                RuntimeWarning,
                stacklevel=2,
            )
        return grad

    def _inner_value_and_grad(self, theta, phi, task) -> tuple[float, torch.Tensor]:
        """g_i(theta, phi) and grad_phi g_i for one task (phi of ``phi_shape``), no graph kept."""
        with torch.enable_grad():
            phi = phi.detach().requires_grad_(True)
            value = self.inner_loss(theta, phi[None], task)[0]
            (grad,) = torch.autograd.grad(value, phi)
        return float(value.detach()), grad

    def _lbfgs(self, theta, task, max_iters, tol):
        """phi_i* = argmin g_i(theta, .) by ``torch.optim.LBFGS`` (strong Wolfe) from phi0 = theta, then Newton.

        Runs in chunks of :data:`LBFGS_CHUNK` iterations, checking ||grad_phi g_i|| <= tol between them; the
        optimiser's own stopping tests are switched off (``tolerance_change=0``; ``tolerance_grad`` bounds the
        largest entry by tol / sqrt(P), which implies the l2 test). A chunk that makes no progress restarts the
        optimiser (fresh memory) once; a second one ends the L-BFGS phase.

        A line search compares function values, so it stalls near sqrt(eps |g| L) in gradient norm (~1.5e-7 on
        the 64-filter conv net with lam = 50 and smooth activations). Where L-BFGS ends above tol but below
        :data:`POLISH_BELOW`, up to :data:`POLISH_STEPS` Newton steps phi <- phi - d, (d2g_i/dphi2) d =
        grad_phi g_i (scipy MINRES on Hessian-vector products, relative residual :data:`POLISH_RTOL`), each kept
        only if it lowers ||grad_phi g_i||, finish the solve; they need no function values. (Above that, a stall
        means a non-smooth point: ReLU / max-pool kinks, where Newton does not help.) Returns (phi, stats).
        """
        phi = self.inner_init(theta, task)[0].detach().clone().requires_grad_(True)

        def make():
            return torch.optim.LBFGS(
                [phi],
                lr=1.0,
                max_iter=LBFGS_CHUNK,
                tolerance_grad=tol / math.sqrt(phi.numel()),
                tolerance_change=0.0,
                history_size=100,
                line_search_fn="strong_wolfe",
            )

        def closure():
            opt.zero_grad()
            value = self.inner_loss(theta, phi[None], task)[0]
            if not torch.isfinite(value):
                raise DivergenceError("reference_hypergradient: the inner loss became non-finite")
            value.backward()
            return value

        opt, iters, evals, stalls = make(), 0, 0, 0
        _, grad = self._inner_value_and_grad(theta, phi, task)
        gnorm = float(grad.norm())
        with torch.enable_grad():
            while gnorm > tol and iters < max_iters:
                before = phi.detach().clone()
                opt.param_groups[0]["max_iter"] = min(LBFGS_CHUNK, max_iters - iters)
                state = opt.state[phi]
                n0, e0 = state.get("n_iter", 0), state.get("func_evals", 0)
                opt.step(closure)
                iters, evals = iters + state["n_iter"] - n0, evals + state["func_evals"] - e0
                _, grad = self._inner_value_and_grad(theta, phi, task)
                progress = float(grad.norm()) < gnorm or not torch.equal(before, phi.detach())
                gnorm = float(grad.norm())
                log.debug("task %s: L-BFGS %d iterations, %d evaluations, ||grad g|| = %.3g", task, iters, evals, gnorm)
                if not progress:
                    stalls += 1
                    if stalls > 1:
                        break
                    opt = make()
        phi, newton = phi.detach(), 0
        while tol < gnorm <= POLISH_BELOW and newton < POLISH_STEPS:
            trial = phi - self._newton_direction(theta, phi, task)
            _, grad = self._inner_value_and_grad(theta, trial, task)
            log.debug("task %s: Newton step, ||grad g|| %.3g -> %.3g", task, gnorm, float(grad.norm()))
            if not float(grad.norm()) < gnorm:
                break
            phi, gnorm, newton = trial, float(grad.norm()), newton + 1
        return phi, {"iters": iters, "evals": evals + newton, "grad_norm": gnorm, "newton_steps": newton}

    def _newton_direction(self, theta, phi, task) -> torch.Tensor:
        """d with (d2g_i/dphi2) d = grad_phi g_i at phi (scipy MINRES on autograd Hessian-vector products)."""
        with torch.enable_grad():
            p = phi.detach()[None].requires_grad_(True)
            (grad,) = torch.autograd.grad(self.inner_loss(theta, p, task)[0], p, create_graph=True)

            def hvp(u):
                return torch.autograd.grad(grad, p, grad_outputs=u, retain_graph=True)[0]

            return self._scipy_solve(hvp, grad.detach(), "minres", POLISH_RTOL, POLISH_MATVECS)[0]

    def _head_objective(self, theta, task):
        """(g(p) on the head alone, its inputs): g(p) = loss(head(features; p), y_support) + reg/2 ||p||^2."""
        d = self.batch_data(theta, task)
        zero = theta.new_zeros(self.phi_shape)
        weights = {**self.named_weights(theta, zero), **self._buffers_like(theta)}
        feats = network.head_inputs(self._model, weights, d["X_support"][0], self.head)
        y = d["y_support"][0]

        def g(p):
            data = network.head_loss(feats, y, p, self.head, self._phi_spec, self.loss)
            return data + 0.5 * self.reg * p.pow(2).sum()

        probe = 0.1 * torch.randn(self.phi_shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
        probe = probe.to(theta.device)
        if not torch.allclose(g(probe), self.inner_loss(theta, probe[None], task)[0]):
            raise ValueError(
                f"reference_hypergradient needs the head {self.head!r} to be the network's last operation "
                "(output = head(features)); this model applies something after it"
            )
        return g

    def _newton_head(self, theta, task, max_iters, tol):
        """phi_i* = argmin g_i(theta, .) by damped Newton on the head (exact Hessian, Armijo backtracking).

        phi <- phi - t H^-1 grad with t halved until g decreases by at least 1e-4 t grad'H^-1 grad, from
        phi0 = 0, until ||grad|| <= tol. Returns (phi, stats).
        """
        g = self._head_objective(theta, task)
        phi, iters, evals = theta.new_zeros(self.phi_shape), 0, 0
        for _ in range(max_iters):
            grad = torch.func.grad(g)(phi)
            if float(grad.norm()) <= tol:
                break
            iters += 1
            step = torch.linalg.solve(torch.func.hessian(g)(phi), grad)
            value, t = float(g(phi)), 1.0
            while float(g(phi - t * step)) > value - 1e-4 * t * float(grad @ step) and t > 1e-10:
                t, evals = 0.5 * t, evals + 1
            phi, evals = phi - t * step, evals + 1
        return phi, {"iters": iters, "evals": evals, "grad_norm": float(torch.func.grad(g)(phi).norm())}

    def _aid(self, theta, phi, task, damping, solver, tol, max_iters):
        """grad_theta f_i - d2g_i/(dtheta dphi) v_i at phi, (d2g_i/dphi2 + damping I) v_i = grad_phi f_i.

        Returns (that vector, Hessian-vector products used, true relative residual ||A v - b|| / ||b||).
        """
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            phi = phi.detach()[None].requires_grad_(True)
            outer = self.outer_loss(theta, phi, task)[0]
            grad_theta, grad_phi = torch.autograd.grad(outer, (theta, phi), allow_unused=True)
            inner_grad = torch.autograd.grad(self.inner_loss(theta, phi, task)[0], phi, create_graph=True)[0]
            calls = [0]

            def matvec(u: torch.Tensor) -> torch.Tensor:  # (d2g/dphi2 + damping I) u, u of shape (1, P)
                calls[0] += 1
                (hu,) = torch.autograd.grad(inner_grad, phi, grad_outputs=u, retain_graph=True)
                return hu + damping * u if damping else hu

            if self.formulation == "bilevel":
                hess = torch.func.hessian(self._head_objective(theta.detach(), task))(phi[0].detach())
                eye = torch.eye(hess.shape[0], dtype=hess.dtype, device=hess.device)
                v = torch.linalg.solve(hess + damping * eye, grad_phi[0])[None]
            else:
                v = self._scipy_solve(matvec, grad_phi, solver, tol, max_iters)
            matvecs = calls[0]
            scale = float(grad_phi.norm())
            residual = float((matvec(v) - grad_phi).norm()) / scale if scale > 0 else 0.0
            (cross,) = torch.autograd.grad(inner_grad, theta, grad_outputs=v, allow_unused=True)
        grad = torch.zeros_like(theta) if grad_theta is None else grad_theta
        if cross is not None:
            grad = grad - cross
        return grad.detach(), matvecs, residual

    @staticmethod
    def _scipy_solve(matvec, rhs, solver, tol, max_iters) -> torch.Tensor:
        """v with A v = rhs by scipy CG / MINRES on a LinearOperator around ``matvec`` (float64, numpy <-> torch).

        scipy's own tests (CG: its recursive residual; MINRES: ||r|| / (||A|| ||x||)) are not the true
        ||A v - b|| / ||b||, so the solve restarts from its iterate with a tighter tolerance while the true
        residual exceeds ``tol`` (at most :data:`LINEAR_RESTARTS` times, ``max_iters`` matvecs in all).
        """
        shape, device, n = rhs.shape, rhs.device, rhs.numel()

        def to_torch(x):
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(shape)).to(device)

        def apply(x):
            return matvec(to_torch(x)).detach().reshape(-1).cpu().numpy()

        fn = spla.cg if solver == "cg" else spla.minres
        b = rhs.detach().reshape(-1).cpu().numpy()
        b_norm = float(np.linalg.norm(b))
        if b_norm == 0:
            return torch.zeros_like(rhs)
        x, rtol, calls = None, tol, [0]

        def counted(x):
            calls[0] += 1
            return apply(x)

        op = spla.LinearOperator((n, n), matvec=counted, dtype=np.float64)
        for _ in range(LINEAR_RESTARTS + 1):
            if calls[0] >= max_iters:
                break
            x, _ = fn(op, b, x0=x, maxiter=max_iters - calls[0], **{_rtol_keyword(fn): rtol})
            if not np.all(np.isfinite(x)):
                raise DivergenceError(f"reference_hypergradient: scipy {solver} returned a non-finite solution")
            residual = float(np.linalg.norm(apply(x) - b)) / b_norm
            log.debug("scipy %s: relative residual %.3g (asked %.3g)", solver, residual, rtol)
            if residual <= tol:
                break
            rtol = max(rtol * 0.5 * tol / residual, 1e-16)
        return to_torch(x).detach()

    # ------------------------------------------------------------------ the derivative of K inner steps
    def reference_algorithm_gradient(
        self, theta: torch.Tensor, inner_steps: int, inner_lr: float, truncate: int | None = None, tasks=None
    ) -> torch.Tensor:
        """The float64 derivative of K plain gradient-descent steps: d/dtheta mean_i f_i(theta, phi_K,i(theta)).

        phi_0,i = phi0_i(theta), phi_{k+1,i} = phi_k,i - lr grad_phi g_i(theta, phi_k,i) (k < K = ``inner_steps``,
        lr = ``inner_lr``), back-propagated through the last T = ``truncate`` steps (None: all K; for T < K,
        phi_{K-T,i} is held constant, so theta enters only through g_i and f_i thereafter). With T = K this is
        the MAML objective's own gradient (its truth when lam = 0, where no implicit hypergradient exists), and
        for any lam it is exactly what maml / truncated / itd_bio compute (and anil, the anil formulation's truth:
        phi0 is then the head's slice of theta, and the derivative reaches it and the backbone). A plain loop of
        ``torch.autograd.grad(create_graph=True)`` per task, on the loop path, in float64; returns a float64
        tensor of theta's shape on the problem's device.
        """
        index = self.task_index(tasks)
        theta64 = self.check_theta(theta).detach().to(device=self.device, dtype=torch.float64)
        steps = check_int("inner_steps", inner_steps, low=0)
        lr = check_real("inner_lr", inner_lr, low=0.0)
        keep = steps if truncate is None else check_int("truncate", truncate, low=0, high=steps)
        cut = steps - keep
        grad = torch.zeros_like(theta64)
        with self.forced_path("loop"), torch.enable_grad():
            for i in range(len(index)):
                task = index[i : i + 1]
                at = theta64.clone().requires_grad_(True)
                phi = self.inner_init(at, task)
                for k in range(steps):
                    tracked = k >= cut
                    if (cut > 0 and k <= cut) or not phi.requires_grad:  # phi_0 .. phi_{K-T} held constant (T < K)
                        phi = phi.detach().requires_grad_(True)
                    value = self.inner_loss(at if tracked else at.detach(), phi, task).sum()
                    (step,) = torch.autograd.grad(value, phi, create_graph=tracked)
                    phi = phi - lr * step
                if keep == 0 and steps > 0:  # T = 0 < K: phi_K itself held constant
                    phi = phi.detach()
                outer = self.outer_loss(at, phi, task).sum()
                if outer.requires_grad:  # not for "maml" with T = 0: f_i(phi_K) alone, phi_K held constant
                    (part,) = torch.autograd.grad(outer, at, allow_unused=True)
                    if part is not None:
                        grad += part.detach() / len(index)
        return grad

"""The float64 *reference* meta-gradient of a ``FewShotClassification`` (networks have no closed form).

A mixin of :class:`~metabench.problems.few_shot.FewShotClassification`: a converged inner solve (damped
Newton on the head for the bilevel formulation, gradient descent with step halving for the MAML one) and a
tight linear solve in the AID identity; see :meth:`ReferenceHypergradient.reference_hypergradient`.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metabench._checks import check_int, check_real
from metabench.errors import DivergenceError
from metabench.solvers.linear import conjugate_gradient

__all__ = ["ReferenceHypergradient"]


class ReferenceHypergradient:
    """``reference_hypergradient`` and its solvers, for a FewShotClassification."""

    def reference_hypergradient(
        self,
        theta: torch.Tensor,
        tasks=None,
        inner_steps: int | None = None,
        inner_lr: float | None = None,
        cg_tol: float = 1e-10,
        *,
        inner_tol: float = 1e-9,
        cg_iters: int = 10_000,
    ) -> torch.Tensor:
        """A high-accuracy float64 *reference* meta-gradient of F(theta) = mean_i f_i(theta, phi_i*(theta)).

        A reference, not an exact value: phi_i* is an iterative solve's output and (for "maml") only a
        local minimiser. The AID identity grad F = mean_i [grad_theta f_i - d2g_i/(dtheta dphi) v_i] with
        d2g_i/dphi2 v_i = grad_phi f_i is evaluated at the converged phi_i*:

        - "bilevel": the head problem is solved by damped Newton on the backbone's features (at most
          ``inner_steps`` iterations, default 50) until ||grad_phi g_i|| <= ``inner_tol``; v_i solves the
          assembled head Hessian exactly (``torch.linalg.solve``); ``inner_lr`` and the CG settings are
          unused. Needs the head to be the network's last operation (checked).
        - "maml" (needs lam > 0): gradient descent from phi0 = theta (``inner_steps`` default 5000, step
          ``inner_lr`` default 0.1, halved whenever the total inner loss rises) until every
          ||grad_phi g_i|| <= ``inner_tol``; v_i by CG on (H_i + lam I) to relative residual ``cg_tol``
          (at most ``cg_iters``), i.e. iMAML's (I + H_i/lam)^-1 grad L_i(phi_i*).

        The solve's outcome is in :attr:`reference_info`; a solve that stops short of its tolerance warns.
        """
        index = self.task_index(tasks)
        theta64 = self.check_theta(theta).detach().to(torch.float64)
        cg_tol = check_real("cg_tol", cg_tol, low=0.0)
        inner_tol = check_real("inner_tol", inner_tol, low=0.0)
        cg_iters = check_int("cg_iters", cg_iters, low=1)
        previous = self._forced_path
        self._forced_path = "loop"
        try:
            if self.formulation == "bilevel":
                steps = 50 if inner_steps is None else check_int("inner_steps", inner_steps, low=1)
                phi, info = self._newton_head(theta64, index, steps, inner_tol)
            else:
                if self.lam <= 0:
                    raise ValueError(
                        "reference_hypergradient needs lam > 0 in the MAML formulation (a locally unique inner "
                        "minimiser); with lam = 0 the float64 maml meta-gradient is its own reference"
                    )
                steps = 5000 if inner_steps is None else check_int("inner_steps", inner_steps, low=1)
                lr = 0.1 if inner_lr is None else check_real("inner_lr", inner_lr, low=0.0, low_open=True)
                phi, info = self._descend(theta64, index, steps, lr, inner_tol)
            grad, v_info = self._aid(theta64, phi, index, cg_iters, cg_tol)
        finally:
            self._forced_path = previous
        self.reference_info = {"kind": "reference", **info, **v_info}
        if info["inner_grad_norm"] > inner_tol:
            warnings.warn(
                f"reference_hypergradient: inner solve stopped at ||grad_phi g|| = {info['inner_grad_norm']:.3g} "
                f"> inner_tol = {inner_tol:g} after {info['inner_steps']} steps",
                RuntimeWarning,
                stacklevel=2,
            )
        return grad

    def _inner_grad(self, theta, phi, index, create_graph=False):
        with torch.enable_grad():
            phi = phi if phi.requires_grad else phi.detach().requires_grad_(True)
            loss = self.inner_loss(theta, phi, index)
            (grad,) = torch.autograd.grad(loss.sum(), phi, create_graph=create_graph)
        return loss.detach(), grad

    def _descend(self, theta, index, steps, lr, tol):
        """GD on every g_i from phi0 = theta, step halved whenever the summed inner loss rises (beyond rounding)."""
        phi = self.inner_init(theta, index).clone()
        loss, grad = self._inner_grad(theta, phi, index)
        taken = 0
        for _ in range(steps):
            if float(grad.norm(dim=-1).max()) <= tol:
                break
            trial = phi - lr * grad
            trial_loss, trial_grad = self._inner_grad(theta, trial, index)
            before, after = float(loss.sum()), float(trial_loss.sum())
            if not math.isfinite(after) or after > before + 1e-12 * (1 + abs(before)):  # worse beyond rounding
                lr *= 0.5
                if lr < 1e-12:
                    raise DivergenceError("reference_hypergradient: the inner step size underflowed")
                continue
            phi, loss, grad, taken = trial.detach(), trial_loss.detach(), trial_grad, taken + 1
        return phi.detach(), {"inner_steps": taken, "inner_grad_norm": float(grad.norm(dim=-1).max()), "inner_lr": lr}

    def _features(self, theta, X) -> torch.Tensor:
        """The head's input for a batch X (one task) at backbone theta (float64, detached)."""
        captured = []
        module = self._model.get_submodule(self.head)
        handle = module.register_forward_hook(lambda m, args, out: captured.append(args[0]))
        try:
            with torch.no_grad():
                zero = theta.new_zeros(self.phi_shape)
                functional_call(self._model, {**self.named_weights(theta, zero), **self._buffers_like(theta)}, (X,))
        finally:
            handle.remove()
        return captured[-1]

    def _head_loss(self, feats, y, phi) -> torch.Tensor:
        w = self._views(phi, self._phi_spec)
        out = F.linear(feats, w[f"{self.head}.weight"], w.get(f"{self.head}.bias"))
        return self._data_loss(out, y)

    def _newton_head(self, theta, index, steps, tol):
        """Damped Newton on each task's head problem, on fixed backbone features (exact Hessian)."""
        d = self.batch_data(theta, index)
        phis, worst, iters = [], 0.0, 0
        for i in range(len(index)):
            feats, y = self._features(theta, d["X_support"][i]), d["y_support"][i]
            probe = 0.1 * torch.randn(self.phi_shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
            probe = probe.to(theta.device)
            full = self.inner_loss(theta, probe[None], index[i : i + 1])[0]
            if not torch.allclose(self._head_loss(feats, y, probe) + 0.5 * self.reg * probe.pow(2).sum(), full):
                raise ValueError(
                    f"reference_hypergradient needs the head {self.head!r} to be the network's last operation "
                    "(output = head(features)); this model applies something after it"
                )

            def g(p, feats=feats, y=y):
                return self._head_loss(feats, y, p) + 0.5 * self.reg * p.pow(2).sum()

            phi, k = theta.new_zeros(self.phi_shape), 0
            for _ in range(steps):
                grad = torch.func.grad(g)(phi)
                if float(grad.norm()) <= tol:
                    break
                k += 1
                hess = torch.func.hessian(g)(phi)
                step = torch.linalg.solve(hess, grad)
                value, t = g(phi), 1.0
                while float(g(phi - t * step)) > float(value) - 1e-4 * t * float(grad @ step) and t > 1e-10:
                    t *= 0.5
                phi = phi - t * step
            grad = torch.func.grad(g)(phi)
            worst, iters = max(worst, float(grad.norm())), max(iters, k)
            phis.append(phi)
        return torch.stack(phis), {"inner_steps": iters, "inner_grad_norm": worst}

    def _aid(self, theta, phi, index, cg_iters, cg_tol):
        """mean_i [grad_theta f_i - d2g_i/(dtheta dphi) v_i] at phi, v_i solving the inner Hessian system."""
        n = len(index)
        theta = theta.detach().requires_grad_(True)
        phi = phi.detach().requires_grad_(True)
        with torch.enable_grad():
            outer = self.outer_loss(theta, phi, index).sum()
            grad_theta, grad_phi = torch.autograd.grad(outer, (theta, phi), allow_unused=True)
            inner_grad = torch.autograd.grad(self.inner_loss(theta, phi, index).sum(), phi, create_graph=True)[0]
            if self.formulation == "bilevel":  # exact solve with the assembled head Hessian, per task
                d = self.batch_data(theta, index)
                vs, low = [], math.inf
                for i in range(n):
                    feats, y = self._features(theta.detach(), d["X_support"][i]), d["y_support"][i]

                    def g(p, feats=feats, y=y):
                        return self._head_loss(feats, y, p) + 0.5 * self.reg * p.pow(2).sum()

                    hess = torch.func.hessian(g)(phi[i].detach())
                    vs.append(torch.linalg.solve(hess, grad_phi[i]))
                    low = min(low, float(torch.linalg.eigvalsh(hess)[0]))
                v = torch.stack(vs)
                info = {"linear_solve": "exact (assembled head Hessian)", "min_inner_hessian_eig": low}
            else:

                def hvp(u):
                    return torch.autograd.grad(inner_grad, phi, grad_outputs=u, retain_graph=True)[0]

                v, matvecs = conjugate_gradient(hvp, grad_phi, cg_iters, tol=cg_tol)
                residual = (hvp(v) - grad_phi).norm(dim=-1) / grad_phi.norm(dim=-1).clamp_min(1e-300)
                info = {"linear_solve": "cg", "cg_matvecs": matvecs, "cg_rel_residual": float(residual.max())}
            (cross,) = torch.autograd.grad(inner_grad, theta, grad_outputs=v.detach(), allow_unused=True)
        grad = torch.zeros_like(theta) if grad_theta is None else grad_theta
        if cross is not None:
            grad = grad - cross
        return (grad / n).detach(), info

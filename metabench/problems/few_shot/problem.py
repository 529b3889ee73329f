"""``FewShotClassification``: N-way K-shot tasks for a user-given network, in one of three formulations.

Task i has a support set (X_s, y_s) and a query set (X_q, y_q); ``loss(set; w)`` is the mean cross-entropy
(or mean squared error) of the network's output with weights w (:mod:`.network`). Three formulations of the
same network (``formulation``):

``"maml"`` (MAML family; MAML, iMAML)
    theta = phi = all weights, flattened (``theta_shape == phi_shape == (P,)``), phi0 = theta,
    g_i = loss(support; phi_i) + lam/2 ||phi_i - theta||^2 (lam >= 0), f_i = loss(query; phi_i).

``"bilevel"`` (bilevel family; ITD-BiO, RM-MetaL, AID)
    theta = the backbone (every weight but the linear head's), phi = the head's weight and bias,
    flattened, phi0 = 0, g_i = loss(support; theta, phi_i) + reg/2 ||phi_i||^2 (reg > 0),
    f_i = loss(query; theta, phi_i). Cross-entropy of a linear model is convex in its weights, so
    g_i is reg-strongly convex in phi_i.

``"anil"`` (anil family; ANIL, Raghu et al. 2020, "Rapid learning or feature reuse?": MAML on the head alone)
    theta = all weights, flattened as in "maml" (the backbone and the head's initialisation head0(theta):
    :meth:`~FewShotClassification.initial_theta` is the same vector), phi = the head's weight and bias,
    flattened as in "bilevel", phi0_i = head0(theta), the head's slice of theta (a view, expanded over tasks,
    so differentiable in theta), g_i = loss(support; backbone(theta), phi_i) + lam/2 ||phi_i - head0(theta)||^2
    (lam >= 0, default 0: ANIL itself), f_i = loss(query; backbone(theta), phi_i). The inner loop adapts the
    head alone; theta reaches F through the backbone (in every inner step and in the query loss) and through
    the head's initialisation (phi0 and the proximal term).

**Strong convexity (``inner_strongly_convex``).** The bilevel formulation is strongly convex, and says
so. The MAML formulation is not convex (a network), not even with lam > 0; but the proximal term makes
g_i locally strongly convex wherever lam exceeds the most negative curvature of the support loss,
which is iMAML's working assumption. ``inner_strongly_convex`` is therefore True for the MAML
formulation exactly when lam > 0, so the implicit methods (imaml, rm_metal, neumann) run with lam > 0
and refuse lam = 0; :attr:`inner_convexity` states which case holds (``"strong"``, ``"proximal"``,
``"convex"``, ``"none"``), and a CG that meets negative curvature raises ``SolverBreakdown``. The anil
formulation's g_i is a loss of a linear head on fixed features where the head is the network's last
operation (checked once, on the first task): convex in phi_i (``"convex"``, lam = 0: cross-entropy is flat
along a shift of every logit, so not strongly convex) and lam-strongly convex for lam > 0 (``"strong"``);
where something follows the head it is judged as the MAML formulation is (``"proximal"`` / ``"none"``).
The implicit methods refuse the anil formulation all the same (``ImplicitAlgorithm.check_problem``).

**Normalisation.** Normalisation layers must not keep running statistics (the loss would depend on
call history): BatchNorm normalises with the statistics of the batch it sees, the support set in g
and the query set in f (MAML's transductive setting). The module is deep-copied and put in eval
mode, so dropout-like randomness is off and every loss is a deterministic function of the weights.

**Batching over the tasks of a call (``path``).** ``"loop"`` runs a Python loop over tasks and stacks
the per-task losses; ``"vmap"`` maps a single-task loss with ``torch.func.vmap``. The vmap path is trusted
only after it has matched the loop path for theta's device and dtype: the check runs an algorithm, so it
lives above the problems, in :func:`metabench.vmap_check.verify_vmap`, which stores its verdict here with
:meth:`~FewShotClassification.set_vmap_check`. ``path="vmap"`` without a verdict raises
:class:`VmapNotVerifiedError`, with a failing one :class:`VmapMismatchError`; ``"auto"`` uses vmap only on
CUDA with a passing verdict, the loop otherwise (on CPU vmap measured no faster, and larger).
:meth:`~FewShotClassification.forced_path` runs a block on one path regardless (the check itself, the
reference). ``describe()["path"]`` is the path that ran. Measured with torch 2.13 (CPU): in float64 the two
paths agree to ~1e-14 for BatchNorm, GroupNorm and no normalisation, on tiny nets and on the 64-filter 5-way
5-shot workload (K = 5); in float32 the BatchNorm meta-gradient is ill-conditioned (loop 2.3% and vmap 2.5%
away from float64 on that workload, 4 tasks), so the 1e-4 gate refuses vmap there.

**Truth** (``truth = "reference"``). Networks have no closed form: :meth:`reference_hypergradient` and
:meth:`reference_algorithm_gradient` (:mod:`.reference`) give float64 *references*, reported as such.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn
from torch.func import vmap

from metabench._checks import check_finite_tensor, check_real
from metabench.errors import MetabenchError
from metabench.problems.base import BilevelProblem
from metabench.problems.few_shot import network
from metabench.problems.few_shot.head import HeadProblem, backbone_features
from metabench.problems.few_shot.options import DEFAULT_REG, FORMULATIONS, LOSSES, PATHS, check_choice
from metabench.problems.few_shot.reference import ReferenceHypergradient
from metabench.problems.few_shot.workloads import FewShotWorkloads
from metabench.problems.registry import PROBLEMS

__all__ = ["FewShotClassification", "VmapMismatchError", "VmapNotVerifiedError"]

#: The keys a vmap verdict (:func:`metabench.vmap_check.verify_vmap`'s result) must hold.
VMAP_CHECK_KEYS = ("rel_diff", "agree", "tol", "algorithm", "dtype", "device", "n_tasks")


class VmapMismatchError(MetabenchError):
    """The vmap path computed a different meta-gradient than the loop path on this model."""


class VmapNotVerifiedError(MetabenchError):
    """``path="vmap"`` was asked for a device and dtype on which the vmap path has not been checked."""


@PROBLEMS.register("few_shot_classification")
class FewShotClassification(FewShotWorkloads, ReferenceHypergradient, BilevelProblem):
    """Few-shot tasks for a user-given network, in the MAML, the bilevel or the anil formulation (module docstring).

    Build it from stacked task tensors (leading task dimension T)::

        FewShotClassification(model, X_support, y_support, X_query, y_query, formulation="maml", lam=0.0)

    with X_* of shape (T, n, *input_shape) and, for ``loss="cross_entropy"``, y_* int64 labels (T, n)
    in 0..ways-1 (for ``loss="mse"``, y_* of the output's shape (T, n, out)); or with a factory
    (:mod:`.workloads`): :meth:`omniglot_like` (the maml_omniglot workload), :meth:`imaml_omniglot`,
    :meth:`digits`, :meth:`sinusoid`, or :meth:`generate` (the sweep's entry point). ``head`` names the
    linear head (default: the model's last ``nn.Linear``), which the bilevel and anil formulations adapt. Flat
    vectors list the weights in ``model.named_parameters()`` order (:attr:`theta_names`, :attr:`phi_names`);
    :meth:`initial_theta` is the model's own weights.
    """

    family = "maml"  # the class default; each instance's family is its formulation
    truth = "reference"
    #: ``generate`` parameters added after records existed: left out of case ids at these defaults
    later_params: ClassVar[dict] = {"data_root": None, "model": "conv4"}
    trains_to_accuracy: ClassVar[bool] = True
    #: the standard instance (5-way 5-shot / 15-query on conv4-64, 4 tasks: ``metabench.sweep.sizes``); profile adds
    #: lam > 0 so the implicit methods apply, float32 as people train
    standard_params: ClassVar[dict] = {"dataset": "omniglot_like", "n_tasks": 4}
    profile_params: ClassVar[dict] = {"lam": 1.0, "inner_lr": 0.1, "dtype": "float32"}
    #: a small instance for the conformance suite over every registered problem (tests/test_registered_problems.py):
    #: a smooth net (SiLU, average pooling, no normalisation), so the float64 references exist
    conformance_params: ClassVar[dict] = {
        "dataset": "digits",
        "ways": 2,
        "shots": 2,
        "query": 2,
        "n_tasks": 2,
        "filters": 2,
        "norm": "none",
        "activation": "silu",
        "pool": "avg",
        "formulation": "bilevel",
    }

    def __init__(
        self,
        model: nn.Module,
        X_support: torch.Tensor,
        y_support: torch.Tensor,
        X_query: torch.Tensor,
        y_query: torch.Tensor,
        *,
        formulation: str = "maml",
        lam: float = 0.0,
        reg: float | None = None,
        loss: str = "cross_entropy",
        path: str = "auto",
        head: str | None = None,
        meta: dict | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.formulation = check_choice("formulation", formulation, FORMULATIONS)
        self.loss = check_choice("loss", loss, LOSSES)
        self.path = check_choice("path", path, PATHS)
        self.lam = check_real("lam", lam, low=0.0)
        if self.formulation == "bilevel":
            if self.lam != 0.0:
                raise ValueError(
                    "lam is the proximal weight of the MAML and anil formulations; the bilevel formulation takes "
                    f"reg, got lam = {lam}"
                )
            self.reg = DEFAULT_REG if reg is None else check_real("reg", reg, low=0.0, low_open=True)
        elif reg is not None:
            which = "MAML" if self.formulation == "maml" else "anil"
            raise ValueError(
                f"reg is the bilevel formulation's l2 weight; the {which} formulation takes lam (its proximal "
                f"weight), got reg = {reg}"
            )
        else:
            self.reg = None
        self.family = self.formulation
        self._meta = dict(meta or {})
        self._check_tasks(X_support, y_support, X_query, y_query)
        self._data = {"X_support": X_support, "y_support": y_support, "X_query": X_query, "y_query": y_query}
        self.n_tasks = X_support.shape[0]
        self.n_support, self.n_query = X_support.shape[1], X_query.shape[1]

        # the network: a private copy in eval mode, without running statistics, its weights frozen
        initial = {name: p.detach().clone() for name, p in model.named_parameters()}
        self._model, spec = network.prepare_model(model)
        self.head = network.find_head(self._model, head, required=self.formulation != "maml")
        head_module = self._model.get_submodule(self.head) if self.head is not None else nn.Module()
        head_names = {f"{self.head}.{n}" for n, _ in head_module.named_parameters()}
        self._head_range: tuple[int, int] | None = None
        if self.formulation == "maml":
            self._theta_spec = self._phi_spec = spec
        else:
            backbone = [s for s in spec if s[0] not in head_names]
            self._phi_spec = [s for s in spec if s[0] in head_names]
            if self.formulation == "bilevel":
                self._theta_spec = backbone
                if not backbone:
                    raise ValueError(
                        "the bilevel formulation needs a backbone: model has no parameters outside its head"
                    )
            else:  # anil: theta is every weight, the head's initialisation included; phi0 is its slice
                self._theta_spec = spec
                self._head_range = _head_range(spec, self._phi_spec)
        self._initial = initial
        self.theta_shape = (sum(s[2] for s in self._theta_spec),)
        self.phi_shape = (sum(s[2] for s in self._phi_spec),)
        self._vmap_checks: dict[tuple, dict] = {}
        self._path_ran: str | None = None
        self._forced_path: str | None = None
        self._check_output()

    # ------------------------------------------------------------------ construction checks
    def _check_tasks(self, X_s, y_s, X_q, y_q) -> None:
        for name, value in (("X_support", X_s), ("X_query", X_q)):
            check_finite_tensor(name, value)
            if value.dim() < 3:
                raise ValueError(f"{name} must have shape (n_tasks, n, *input_shape), got {tuple(value.shape)}")
        if X_s.shape[0] != X_q.shape[0] or X_s.shape[2:] != X_q.shape[2:]:
            raise ValueError(
                f"X_support {tuple(X_s.shape)} and X_query {tuple(X_q.shape)} must agree in n_tasks and input shape"
            )
        if X_s.dtype != X_q.dtype:
            raise ValueError(f"X_support ({X_s.dtype}) and X_query ({X_q.dtype}) must have one dtype")
        for name, y, X in (("y_support", y_s, X_s), ("y_query", y_q, X_q)):
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
            if tuple(y.shape[:2]) != tuple(X.shape[:2]):
                raise ValueError(f"{name} has shape {tuple(y.shape)}, but X has {tuple(X.shape[:2])} (n_tasks, n)")
            if self.loss == "cross_entropy":
                if y.dim() != 2 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                    raise ValueError(f"{name} must hold integer class labels of shape (n_tasks, n), got {y.dtype}")
                if bool((y < 0).any()):
                    raise ValueError(f"{name} must hold class labels >= 0")
            else:
                check_finite_tensor(name, y)
                if y.dtype != X.dtype:
                    raise ValueError(f"{name} ({y.dtype}) must have X's dtype ({X.dtype}) for loss='mse'")

    def _check_output(self) -> None:
        """One forward on the first task: the output must fit the labels (or targets)."""
        X, y = self._data["X_support"][0], self._data["y_support"][0]
        with torch.no_grad():
            dtype = next(iter(self._initial.values())).dtype
            out = network.forward(self._model, self._initial, X.to(dtype))
        if self.loss == "cross_entropy":
            classes = int(max(self._data["y_support"].max(), self._data["y_query"].max())) + 1
            if out.dim() != 2 or out.shape[0] != X.shape[0] or out.shape[1] < classes:
                raise ValueError(
                    f"model output has shape {tuple(out.shape)} for {X.shape[0]} inputs; cross-entropy needs "
                    f"({X.shape[0]}, >= {classes}) logits for labels up to {classes - 1}"
                )
        elif out.shape != y.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)}, the targets {tuple(y.shape)}")

    # ------------------------------------------------------------------ the network and its weights
    @property
    def model(self) -> nn.Module:
        """The problem's network (a private copy, eval mode, parameters frozen: losses use theta/phi views)."""
        return self._model

    @property
    def tasks(self) -> dict[str, torch.Tensor]:
        """The stacked task tensors: X_support, y_support, X_query, y_query (leading task dimension)."""
        return dict(self._data)

    def with_lam(self, lam: float) -> FewShotClassification:
        """The same network, weights, tasks and path in the MAML formulation with proximal weight ``lam``."""
        return FewShotClassification(
            self._model, **self._data, formulation="maml", lam=lam, loss=self.loss, path=self.path, meta=self._meta
        )

    def with_tasks(self, X_support, y_support, X_query, y_query) -> FewShotClassification:
        """The same network, formulation, regularisation, loss, head and path on other tasks (meta-training's
        fresh episodes, :mod:`metabench.meta_train`); what the first forward checked about the head carries over."""
        other = FewShotClassification(
            self._model,
            X_support,
            y_support,
            X_query,
            y_query,
            formulation=self.formulation,
            lam=self.lam,
            reg=self.reg,
            loss=self.loss,
            path=self.path,
            head=self.head,
            meta=self._meta,
        )
        if "_head_is_last" in self.__dict__:
            other._head_is_last = self._head_is_last
        return other

    @property
    def theta_names(self) -> list[str]:
        """The module's parameter names in theta, in order."""
        return [s[0] for s in self._theta_spec]

    @property
    def phi_names(self) -> list[str]:
        """The module's parameter names in phi, in order."""
        return [s[0] for s in self._phi_spec]

    def initial_theta(self, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """theta at the network's initial weights (the model passed in / built from ``seed``), flattened."""
        flat = torch.cat([self._initial[name].reshape(-1) for name in self.theta_names])
        return flat.to(device=device or self.device, dtype=dtype or self.dtype)

    def named_weights(self, theta: torch.Tensor, phi: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The module's weights as a name -> tensor dict (views, in ``named_parameters`` order) for one task: phi
        (``phi_shape``) holds the adapted weights, every weight for "maml", the head for "bilevel" and "anil"
        (the backbone then comes from theta); ``phi=None`` means phi0 (theta itself for "maml", a zero head for
        "bilevel", the head's slice of theta for "anil")."""
        if phi is None:
            phi = self.inner_init(theta, [0])[0]
        if self.formulation == "maml":
            return network.views(phi, self._phi_spec)
        return {**network.views(theta, self._theta_spec), **network.views(phi, self._phi_spec)}

    def head_init(self, theta: torch.Tensor) -> torch.Tensor:
        """head0(theta), the head's initial weight and bias in theta ("anil" only): a view of theta's slice."""
        if self._head_range is None:
            raise ValueError(f"head_init is the anil formulation's; this problem is {self.formulation!r}")
        start, stop = self._head_range
        return theta[..., start:stop]

    def data_like(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task tensors on theta's device; inputs (and regression targets) in theta's dtype, labels integer."""
        key = (theta.device, theta.dtype)
        cache = self.__dict__.setdefault("_data_cache", {})
        if key not in cache:
            cache[key] = {
                k: v.to(device=theta.device, dtype=theta.dtype if v.is_floating_point() else torch.long)
                for k, v in self._data.items()
            }
        return cache[key]

    def _buffers_like(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The module's buffers on theta's device, floating ones in theta's dtype (converted once, cached)."""
        key = (theta.device, theta.dtype)
        cache = self.__dict__.setdefault("_buffer_cache", {})
        if key not in cache:
            cache[key] = {
                k: v.to(device=theta.device, dtype=theta.dtype if v.is_floating_point() else v.dtype)
                for k, v in self._model.named_buffers()
            }
        return cache[key]

    def _network_losses(self, theta, phi, X, y) -> torch.Tensor:
        """loss(network(X_i; weights of task i), y_i) per task, by the selected path: shape (n,)."""
        path = self._forced_path or self._resolve_path(theta)
        buffers = self._buffers_like(theta)
        shared = {} if self.formulation == "maml" else network.views(theta, self._theta_spec)

        def single(phi_i, X_i, y_i):
            weights = {**shared, **network.views(phi_i, self._phi_spec), **buffers}
            return network.data_loss(network.forward(self._model, weights, X_i), y_i, self.loss)

        if self._forced_path is None:
            self._path_ran = path
        if path == "vmap":
            return vmap(single, in_dims=(0, 0, 0))(phi, X, y)
        return torch.stack([single(p, x, t) for p, x, t in zip(phi.unbind(0), X.unbind(0), y.unbind(0))])

    # ------------------------------------------------------------------ objectives
    def inner_loss(self, theta, phi, tasks):
        """g_i = loss(support; phi_i) + lam/2 ||phi_i - theta||^2 ("maml"), loss(support; theta, phi_i) +
        reg/2 ||phi_i||^2 ("bilevel"), loss(support; backbone(theta), phi_i) + lam/2 ||phi_i - head0(theta)||^2
        ("anil"), per task: shape (len(tasks),)."""
        d = self.batch_data(theta, tasks)
        loss = self._network_losses(theta, phi, d["X_support"], d["y_support"])
        if self.formulation == "bilevel":
            return loss + 0.5 * self.reg * phi.pow(2).sum(-1)
        if self.lam > 0:
            anchor = theta if self.formulation == "maml" else self.head_init(theta)
            loss = loss + 0.5 * self.lam * (phi - anchor).pow(2).sum(-1)
        return loss

    def outer_loss(self, theta, phi, tasks):
        """f_i = loss(query; weights of task i), per task: shape (len(tasks),)."""
        d = self.batch_data(theta, tasks)
        return self._network_losses(theta, phi, d["X_query"], d["y_query"])

    def inner_init(self, theta, tasks):
        """phi0_i = theta ("maml"), 0 ("bilevel") or head0(theta), the head's slice of theta ("anil"), stacked
        over tasks (for "maml" and "anil" an expanded view of theta, which keeps its graph)."""
        if self.formulation == "bilevel":
            return theta.new_zeros(len(tasks), *self.phi_shape)
        start = theta if self.formulation == "maml" else self.head_init(theta)
        return start.unsqueeze(0).expand(len(tasks), *self.phi_shape)

    @property
    def inner_strongly_convex(self) -> bool:
        """True for the bilevel formulation (reg > 0); for the MAML formulation True iff lam > 0, as iMAML
        assumes (module docstring): the proximal term makes g locally strongly convex for lam large enough
        (above the most negative curvature of the support loss); for the anil formulation True iff lam > 0
        (provably, where the head is the network's last operation). :attr:`inner_convexity` says which holds."""
        return self.inner_convexity in ("strong", "proximal")

    @property
    def inner_convexity(self) -> str:
        """``"strong"`` (bilevel: provably reg-strongly convex; anil with lam > 0 and the head last: a convex
        head loss plus lam/2 ||phi - head0||^2), ``"convex"`` (anil, lam = 0, the head last: convex, not
        strongly), ``"proximal"`` (MAML, or anil with something after the head, lam > 0: assumed locally
        strongly convex, as in iMAML) or ``"none"`` (those with lam = 0)."""
        if self.formulation == "bilevel":
            return "strong"
        if self.formulation == "anil" and self._head_is_network_output():
            return "strong" if self.lam > 0 else "convex"
        return "proximal" if self.lam > 0 else "none"

    def default_task_chunk(self, theta: torch.Tensor) -> int | None:
        """One task per autograd graph on the loop path, all tasks of the call on the vmap path.

        On the loop path a batched graph buys no speed (the network runs task by task anyway) and holds
        every task's graph at once; one task per graph is what hand-written MAML loops and the peer
        libraries do. Measured on the 4-conv workload (``python -m metabench.peers``, reports/peers).
        ``path="vmap"`` answers "all tasks" even before its check (the first loss then raises).
        """
        path = self._forced_path or ("vmap" if self.path == "vmap" else self._resolve_path(theta))
        return None if path == "vmap" else 1

    # ------------------------------------------------------------------ features once (bilevel formulation)
    @property
    def has_feature_head(self) -> bool:
        """True in the bilevel formulation when the head's output is the network's output (checked once on the
        first task: model(X) equals head(features(X))); then :meth:`feature_head` applies (:mod:`.head`).
        False in the anil formulation (its inner problem is a head too, but features once is not offered there)."""
        return self.formulation == "bilevel" and self._head_is_network_output()

    def _head_is_network_output(self) -> bool:
        """Whether the head's output is the network's output (checked once on the first task, cached as
        ``_head_is_last``); False without a head."""
        if self.head is None:
            return False
        if "_head_is_last" not in self.__dict__:
            theta = self.initial_theta()
            initial = {k: v.to(device=theta.device, dtype=theta.dtype) for k, v in self._initial.items()}
            weights = {**initial, **self._buffers_like(theta)}
            X = self._data["X_support"][0].to(device=theta.device, dtype=theta.dtype)
            with torch.no_grad():
                out = network.forward(self._model, weights, X)
                z = backbone_features(self._model, weights, X, self.head)
                w = {name: weights[name] for name in self.phi_names}
                head_out = torch.nn.functional.linear(z, w[f"{self.head}.weight"], w.get(f"{self.head}.bias"))
            tol = 1e3 * torch.finfo(out.dtype).eps * (1.0 + float(out.abs().max()))
            self._head_is_last = head_out.shape == out.shape and float((head_out - out).abs().max()) <= tol
        return self._head_is_last

    def feature_head(self, theta: torch.Tensor, tasks: torch.Tensor) -> HeadProblem:
        """The head's problem on the backbone features of ``tasks`` at theta (their graph kept): see :mod:`.head`."""
        if not self.has_feature_head:
            raise ValueError(
                "features='once' needs the bilevel formulation with the head as the network's last operation "
                f"(formulation={self.formulation!r}, head={self.head!r}); use features='recompute'"
            )
        d = self.batch_data(theta, tasks)
        buffers = self._buffers_like(theta)
        zero_head = network.views(theta.new_zeros(self.phi_shape), self._phi_spec)
        weights = {**network.views(theta, self._theta_spec), **zero_head, **buffers}
        feats = [
            torch.cat(
                [
                    backbone_features(self._model, weights, X_s, self.head),
                    backbone_features(self._model, weights, X_q, self.head),
                ]
            )
            for X_s, X_q in zip(d["X_support"].unbind(0), d["X_query"].unbind(0))
        ]
        labels = {"y_support": d["y_support"], "y_query": d["y_query"]}
        return HeadProblem(self, torch.stack(feats), tasks, labels)

    # ------------------------------------------------------------------ vmap vs loop
    @contextlib.contextmanager
    def forced_path(self, path: str) -> Iterator[FewShotClassification]:
        """Within the block, every loss runs on ``path`` (``"loop"`` or ``"vmap"``), whatever ``self.path``
        and the vmap verdicts say, and ``describe()["path"]`` is left as it was. Nests; restores on exit."""
        path = check_choice("path", path, ("loop", "vmap"))
        previous = self._forced_path
        self._forced_path = path
        try:
            yield self
        finally:
            self._forced_path = previous

    def set_vmap_check(self, result: dict) -> None:
        """Store a vmap verdict (:func:`metabench.vmap_check.verify_vmap`'s result) for its device and dtype.

        It gates the vmap path from then on: ``path="vmap"`` runs iff ``result["agree"]``, and
        ``path="auto"`` uses vmap on CUDA iff it does.
        """
        if not isinstance(result, dict) or any(k not in result for k in VMAP_CHECK_KEYS):
            raise ValueError(f"a vmap check must be a dict with keys {list(VMAP_CHECK_KEYS)}, got {result!r}")
        dtype = getattr(torch, str(result["dtype"]).replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"a vmap check's dtype must name a torch dtype, got {result['dtype']!r}")
        self._vmap_checks[(torch.device(result["device"]), dtype)] = dict(result)

    def vmap_check(self, theta: torch.Tensor) -> dict | None:
        """The stored vmap verdict for theta's device and dtype (None if none was stored)."""
        return self._vmap_checks.get((theta.device, theta.dtype))

    def _resolve_path(self, theta: torch.Tensor) -> str:
        if self.path == "loop":
            return "loop"
        check = self.vmap_check(theta)
        if self.path == "auto":
            return "vmap" if theta.device.type == "cuda" and check is not None and check["agree"] else "loop"
        where = f"{theta.device} / {str(theta.dtype).replace('torch.', '')}"
        if check is None:
            raise VmapNotVerifiedError(
                f"path='vmap' has not been checked against path='loop' on {where} for this model; call "
                "metabench.vmap_check.verify_vmap(problem, theta) first (or use path='loop' / 'auto')"
            )
        if check["agree"]:
            return "vmap"
        detail = ""
        if "loop_error_float64" in check:
            detail = (
                f"; relative to the float64 loop, loop {check['loop_error_float64']:.3g} and vmap "
                f"{check['vmap_error_float64']:.3g} (similar values mean shared {check['dtype']} rounding)"
            )
        raise VmapMismatchError(
            f"path='vmap' disagrees with path='loop' on this model ({where}): relative difference "
            f"{check['rel_diff']:.3g} > {check['tol']:g} between their {check['algorithm']} meta-gradients "
            f"(norm={self.describe()['norm']}){detail}. Use path='loop' (or 'auto', which falls back to it)."
        )

    # ------------------------------------------------------------------ records
    def describe(self) -> dict:
        meta = dict(self._meta)
        ways = None
        if self.loss == "cross_entropy":
            ways = int(torch.unique(self._data["y_support"][0]).numel())
        shots = self.n_support // ways if ways else self.n_support
        query = self.n_query // ways if ways else self.n_query
        check = self._vmap_checks.get((self.device, self.dtype)) or (
            next(iter(self._vmap_checks.values())) if self._vmap_checks else None
        )
        return {
            "problem": "few_shot_classification",
            "dataset": meta.pop("dataset", "arrays"),
            "formulation": self.formulation,
            "loss": self.loss,
            "ways": ways,
            "shots": shots,
            "query": query,
            "n_tasks": self.n_tasks,
            "lam": self.lam,
            "reg": self.reg,
            "norm": meta.pop("norm", network.detect_norm(self._model)),
            "params": sum(p.numel() for p in self._initial.values()),
            "theta_params": self.theta_shape[0],
            "phi_params": self.phi_shape[0],
            "inner_convexity": self.inner_convexity,
            "path_requested": self.path,
            "path": self._path_ran,
            "vmap_check_rel_diff": None if check is None else check["rel_diff"],
            "vmap_check_agree": None if check is None else check["agree"],
            **meta,
        }


def _head_range(spec: network.Spec, head_spec: network.Spec) -> tuple[int, int]:
    """(start, stop) of the head's weights in a flat vector laid out by ``spec`` (they are adjacent: an
    ``nn.Linear``'s weight and bias come one after the other in ``named_parameters``)."""
    offsets, start = {}, 0
    for name, _, numel in spec:
        offsets[name] = (start, start + numel)
        start += numel
    ranges = [offsets[name] for name, _, _ in head_spec]
    if any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
        raise ValueError(f"the head's parameters {[s[0] for s in head_spec]} are not adjacent in named_parameters()")
    return ranges[0][0], ranges[-1][1]

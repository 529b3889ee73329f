"""Few-shot learning with a neural network: N-way K-shot classification (or regression) tasks.

The user passes any ``nn.Module``; it is evaluated functionally (``torch.func.functional_call``) with
its weights taken from flat vectors, one list of ``(name, shape, numel)`` telling how a vector splits
into the module's parameters (``torch.split`` + ``view``: views, no copies). Task i has a support set
(X_s, y_s) and a query set (X_q, y_q); ``loss`` is the mean cross-entropy (or mean squared error) of
the network's output. Two formulations of the same network (``formulation``):

``"maml"`` (MAML family; MAML, iMAML)
    theta = phi = all weights, flattened (``theta_shape == phi_shape == (P,)``), phi0 = theta,
    g_i = loss(support; phi_i) + lam/2 ||phi_i - theta||^2 (lam >= 0), f_i = loss(query; phi_i).

``"bilevel"`` (bilevel family; ITD-BiO, RM-MetaL, AID)
    theta = the backbone (every weight but the linear head's), phi = the head's weight and bias,
    flattened, phi0 = 0, g_i = loss(support; theta, phi_i) + reg/2 ||phi_i||^2 (reg > 0),
    f_i = loss(query; theta, phi_i). Cross-entropy of a linear model is convex in its weights, so
    g_i is reg-strongly convex in phi_i.

**Strong convexity (``inner_strongly_convex``).** The bilevel formulation is strongly convex, and says
so. The MAML formulation is not convex (a network), not even with lam > 0; but the proximal term makes
g_i locally strongly convex wherever lam exceeds the most negative curvature of the support loss,
which is iMAML's working assumption. ``inner_strongly_convex`` is therefore True for the MAML
formulation exactly when lam > 0, so the implicit methods (imaml, rm_metal, neumann) run with lam > 0
and refuse lam = 0; :attr:`inner_convexity` states which case holds (``"strong"``, ``"proximal"``,
``"none"``), and a CG that meets negative curvature raises ``SolverBreakdown``.

**Normalisation.** Normalisation layers must not keep running statistics (the loss would depend on
call history): BatchNorm normalises with the statistics of the batch it sees, the support set in g
and the query set in f (MAML's transductive setting). The module is deep-copied and put in eval
mode, so dropout-like randomness is off and every loss is a deterministic function of the weights.

**Batching over the tasks of a call (``path``).** ``"loop"`` runs a Python loop over tasks and stacks
the per-task losses; ``"vmap"`` maps a single-task loss with ``torch.func.vmap``. A vmap path is used
only after it has matched the loop path (:meth:`verify_vmap`: a second-order MAML meta-gradient by
both paths, relative difference <= 1e-6 in float64, 1e-4 otherwise) for that device and dtype;
with ``path="vmap"`` the first loss evaluation runs the check and raises :class:`VmapMismatchError`
if it fails. ``"auto"`` uses the loop on CPU (vmap measured no faster there, and larger) and, on
CUDA, vmap if the check passes, the loop otherwise. ``describe()["path"]`` is the path that ran.
Measured here with torch 2.13 (CPU): in float64 the two paths agree to ~1e-14 for BatchNorm, GroupNorm
and no normalisation, on tiny nets and on the 64-filter 5-way 5-shot workload (K = 5); a BatchNorm
discrepancy reported elsewhere (3.7e-3 in float64) did not reproduce. In float32 the BatchNorm
meta-gradient is ill-conditioned: on that workload (4 tasks, K = 5) the loop path is itself 2.3% away
from float64 and vmap 2.5%, so they differ by 0.7% and the 1e-4 gate refuses vmap; the check's
``loop_error_float64`` / ``vmap_error_float64`` tell such shared rounding from a wrong batching rule.

**Error on networks.** There is no closed form: :meth:`reference_hypergradient` gives a float64
*reference* (converged inner solve, tight linear solve), to be reported as "reference", not "exact".
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from metabench._checks import check_finite_tensor, check_real
from metabench.errors import DivergenceError, MetabenchError
from metabench.problems import datasets
from metabench.problems.base import BilevelProblem
from metabench.problems.few_shot_reference import ReferenceHypergradient
from metabench.problems.models import NORMS, conv4, mlp

__all__ = ["FORMULATIONS", "LOSSES", "PATHS", "FewShotClassification", "VmapMismatchError"]

FORMULATIONS = ("maml", "bilevel")
PATHS = ("auto", "loop", "vmap")
LOSSES = ("cross_entropy", "mse")
DATASETS = ("omniglot_like", "digits", "sinusoid")
DEFAULT_REG = 0.1
#: The meta-gradient :meth:`FewShotClassification.verify_vmap` compares when a path check runs on its own.
VMAP_CHECK_OPTIONS = {"inner_steps": 2, "inner_lr": 0.1}
#: At most this many tasks (the first of the call) take part in an automatic vmap check.
VMAP_CHECK_TASKS = 4


class VmapMismatchError(MetabenchError):
    """The vmap path computed a different meta-gradient than the loop path on this model."""


def _check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _detect_norm(model: nn.Module) -> str:
    kinds = {
        "batch" if isinstance(m, nn.modules.batchnorm._BatchNorm) else "group"
        for m in model.modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
    }
    return kinds.pop() if len(kinds) == 1 else ("none" if not kinds else "mixed")


class FewShotClassification(ReferenceHypergradient, BilevelProblem):
    """Few-shot tasks for a user-given network, in the MAML or the bilevel formulation (module docstring).

    Build it from stacked task tensors (leading task dimension T)::

        FewShotClassification(model, X_support, y_support, X_query, y_query, formulation="maml", lam=0.0)

    with X_* of shape (T, n, *input_shape) and, for ``loss="cross_entropy"``, y_* int64 labels (T, n)
    in 0..ways-1 (for ``loss="mse"``, y_* of the output's shape (T, n, out)); or with a factory:
    :meth:`omniglot_like` (the maml_omniglot workload), :meth:`imaml_omniglot`, :meth:`digits`,
    :meth:`sinusoid`, or :meth:`generate` (the sweep's entry point). ``head`` names the linear head
    (default: the model's last ``nn.Linear``), which the bilevel formulation adapts. Flat vectors list
    the weights in ``model.named_parameters()`` order (:attr:`theta_names`, :attr:`phi_names`);
    :meth:`initial_theta` is the model's own weights.
    """

    family = "maml"  # the class default; each instance's family is its formulation

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
        self.formulation = _check_choice("formulation", formulation, FORMULATIONS)
        self.loss = _check_choice("loss", loss, LOSSES)
        self.path = _check_choice("path", path, PATHS)
        self.lam = check_real("lam", lam, low=0.0)
        if self.formulation == "bilevel":
            if self.lam != 0.0:
                raise ValueError(
                    f"lam is the MAML formulation's proximal weight; the bilevel formulation takes reg, got lam = {lam}"
                )
            self.reg = DEFAULT_REG if reg is None else check_real("reg", reg, low=0.0, low_open=True)
        elif reg is not None:
            raise ValueError(
                f"reg is the bilevel formulation's l2 weight; the MAML formulation takes lam, got reg = {reg}"
            )
        else:
            self.reg = None
        self.family = self.formulation
        self._meta = dict(meta or {})
        self._check_tasks(X_support, y_support, X_query, y_query)
        self._data = {"X_support": X_support, "y_support": y_support, "X_query": X_query, "y_query": y_query}
        self.n_tasks = X_support.shape[0]
        self.n_support, self.n_query = X_support.shape[1], X_query.shape[1]

        # the network: a private copy in eval mode, without running statistics
        model = copy.deepcopy(model).eval()
        for name, module in model.named_modules():
            if getattr(module, "track_running_stats", False):
                raise ValueError(
                    f"model layer {name!r} ({type(module).__name__}) keeps running statistics, so its output "
                    "depends on call history; build it with track_running_stats=False (as MAML does)"
                )
        params = dict(model.named_parameters())
        if not params:
            raise ValueError("model has no parameters")
        self.head = self._find_head(model, head, required=self.formulation == "bilevel")
        head_module = model.get_submodule(self.head) if self.head is not None else nn.Module()
        head_names = {f"{self.head}.{n}" for n, _ in head_module.named_parameters()}
        spec = [(name, tuple(p.shape), p.numel()) for name, p in params.items()]
        if self.formulation == "maml":
            self._theta_spec = self._phi_spec = spec
        else:
            self._theta_spec = [s for s in spec if s[0] not in head_names]
            self._phi_spec = [s for s in spec if s[0] in head_names]
            if not self._theta_spec:
                raise ValueError("the bilevel formulation needs a backbone: model has no parameters outside its head")
        self._model = model
        self._initial = {name: p.detach().clone() for name, p in params.items()}
        for p in model.parameters():  # the module's own weights are never used in a loss; views of theta/phi are
            p.requires_grad_(False)
        self.theta_shape = (sum(s[2] for s in self._theta_spec),)
        self.phi_shape = (sum(s[2] for s in self._phi_spec),)
        self._vmap_checks: dict[tuple, dict] = {}
        self._path_ran: str | None = None
        self._forced_path: str | None = None
        self._check_output()

    # ------------------------------------------------------------------ construction helpers
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

    @staticmethod
    def _find_head(model: nn.Module, head: str | None, required: bool) -> str | None:
        if head is None:
            linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                if not required:
                    return None
                raise ValueError("model has no nn.Linear layer to serve as the head; pass head='module name'")
            return linears[-1]
        try:
            module = model.get_submodule(head)
        except AttributeError:
            raise ValueError(f"head must name a submodule of model, got {head!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"head must name an nn.Linear layer, got {head!r} ({type(module).__name__})")
        return head

    def _check_output(self) -> None:
        """One forward on the first task: the output must fit the labels (or targets)."""
        X, y = self._data["X_support"][0], self._data["y_support"][0]
        with torch.no_grad():
            dtype = next(iter(self._initial.values())).dtype
            out = functional_call(self._model, self._initial, (X.to(dtype),))
        if self.loss == "cross_entropy":
            classes = int(max(self._data["y_support"].max(), self._data["y_query"].max())) + 1
            if out.dim() != 2 or out.shape[0] != X.shape[0] or out.shape[1] < classes:
                raise ValueError(
                    f"model output has shape {tuple(out.shape)} for {X.shape[0]} inputs; cross-entropy needs "
                    f"({X.shape[0]}, >= {classes}) logits for labels up to {classes - 1}"
                )
        elif out.shape != y.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)}, the targets {tuple(y.shape)}")

    # ------------------------------------------------------------------ factories
    @classmethod
    def omniglot_like(
        cls,
        ways: int = 5,
        shots: int = 5,
        query: int = 15,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        filters: int = 64,
        norm: str = "batch",
        *,
        image_size: int = 28,
        reg: float | None = None,
        path: str = "auto",
    ) -> FewShotClassification:
        """The maml_omniglot workload of TorchBench, learn2learn and higher (defaults): 5-way 5-shot,
        15 query images per class, 32 tasks, the 4-block conv net with 64 filters on 1x28x28
        Omniglot-shaped images (:func:`~metabench.problems.datasets.omniglot_like_tasks`). The inner
        loop (SGD, lr 0.1, 5 steps) is the algorithm's business. Data and weights are deterministic in ``seed``.
        """
        dtype = _check_dtype(dtype)
        _check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        _check_choice("norm", norm, NORMS)
        tasks = datasets.omniglot_like_tasks(ways, shots, query, n_tasks, image_size=image_size, seed=seed, dtype=dtype)
        model = conv4(1, ways, filters=filters, image_size=image_size, norm=norm, seed=seed)
        meta = {"dataset": "omniglot_like", "seed": seed, "filters": filters, "image_size": image_size, "norm": norm}
        return cls(model, *tasks, formulation=formulation, lam=lam, reg=reg, path=path, meta=meta)

    @classmethod
    def imaml_omniglot(
        cls,
        ways: int = 20,
        shots: int = 5,
        query: int = 5,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 2.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        filters: int = 64,
        norm: str = "batch",
        **kwargs,
    ) -> FewShotClassification:
        """iMAML's Omniglot workload (its Figure 2b): 20-way 5-shot, as many query images as shots per
        class, task meta-batch 32, lam = 2 (the values of iMAML's released Omniglot script); the conv net
        is metabench's max-pool conv4 (iMAML's code uses stride-2 convolutions). See :meth:`omniglot_like`."""
        return cls.omniglot_like(ways, shots, query, n_tasks, formulation, lam, seed, dtype, filters, norm, **kwargs)

    @classmethod
    def digits(
        cls,
        ways: int = 5,
        shots: int = 5,
        query: int = 15,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        filters: int = 32,
        norm: str = "batch",
        *,
        classes=None,
        reg: float | None = None,
        path: str = "auto",
    ) -> FewShotClassification:
        """N-way K-shot tasks from scikit-learn's shipped 8x8 digits (a real data set, no download; needs
        scikit-learn) with the conv4 net on 1x8x8 images (:func:`~metabench.problems.datasets.digits_tasks`)."""
        dtype = _check_dtype(dtype)
        _check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        _check_choice("norm", norm, NORMS)
        tasks = datasets.digits_tasks(ways, shots, query, n_tasks, seed=seed, dtype=dtype, classes=classes)
        model = conv4(1, ways, filters=filters, image_size=8, norm=norm, seed=seed)
        meta = {"dataset": "digits", "seed": seed, "filters": filters, "image_size": 8, "norm": norm}
        return cls(model, *tasks, formulation=formulation, lam=lam, reg=reg, path=path, meta=meta)

    @classmethod
    def sinusoid(
        cls,
        shots: int = 10,
        query: int = 10,
        n_tasks: int = 25,
        formulation: str = "maml",
        lam: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        hidden: tuple[int, ...] = (40, 40),
        *,
        reg: float | None = None,
        path: str = "auto",
    ) -> FewShotClassification:
        """MAML's sinusoid regression (``loss="mse"``): K support and Q query points per task, the
        1-40-40-1 ReLU MLP (:func:`~metabench.problems.datasets.sinusoid_tasks`)."""
        dtype = _check_dtype(dtype)
        _check_choice("formulation", formulation, FORMULATIONS)
        check_real("lam", lam, low=0.0)
        tasks = datasets.sinusoid_tasks(n_tasks, shots, query, seed=seed, dtype=dtype)
        model = mlp(1, 1, hidden=hidden, seed=seed)
        meta = {"dataset": "sinusoid", "seed": seed, "hidden": "x".join(str(h) for h in hidden)}
        return cls(model, *tasks, formulation=formulation, lam=lam, reg=reg, loss="mse", path=path, meta=meta)

    @classmethod
    def generate(
        cls,
        dataset: str = "omniglot_like",
        ways: int = 5,
        shots: int = 5,
        query: int = 15,
        n_tasks: int = 32,
        formulation: str = "maml",
        lam: float = 0.0,
        reg: float | None = None,
        norm: str = "batch",
        filters: int = 64,
        image_size: int | None = None,
        path: str = "auto",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> FewShotClassification:
        """One entry point with JSON-friendly parameters (what a sweep case passes).

        ``dataset``: ``"omniglot_like"`` (``image_size`` default 28), ``"digits"`` (8x8; ``image_size``
        must be None or 8) or ``"sinusoid"`` (MLP regression; ``ways``, ``norm``, ``filters`` and
        ``image_size`` do not apply and are not recorded).
        """
        dataset = _check_choice("dataset", dataset, DATASETS)
        common = {"formulation": formulation, "lam": lam, "seed": seed, "dtype": dtype, "reg": reg, "path": path}
        if dataset == "omniglot_like":
            size = 28 if image_size is None else image_size
            return cls.omniglot_like(ways, shots, query, n_tasks, filters=filters, norm=norm, image_size=size, **common)
        if dataset == "digits":
            if image_size not in (None, 8):
                raise ValueError(f"image_size must be None or 8 for the 8x8 digits, got {image_size!r}")
            return cls.digits(ways, shots, query, n_tasks, filters=filters, norm=norm, **common)
        return cls.sinusoid(shots, query, n_tasks, **common)

    # ------------------------------------------------------------------ flat vectors <-> named weights
    @staticmethod
    def _views(flat: torch.Tensor, spec) -> dict[str, torch.Tensor]:
        """Named views of a flat vector (last dimension) per ``spec``: ``torch.split`` + ``view``, no copies."""
        parts = torch.split(flat, [s[2] for s in spec], dim=-1)
        lead = flat.shape[:-1]
        return {name: part.view(*lead, *shape) for (name, shape, _), part in zip(spec, parts)}

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
        """The module's weights as a name -> tensor dict (views) for one task: phi (``phi_shape``) holds the
        adapted weights; ``phi=None`` means phi0 (theta itself for "maml", a zero head for "bilevel")."""
        if phi is None:
            phi = theta if self.formulation == "maml" else theta.new_zeros(self.phi_shape)
        if self.formulation == "maml":
            return self._views(phi, self._phi_spec)
        return {**self._views(theta, self._theta_spec), **self._views(phi, self._phi_spec)}

    # ------------------------------------------------------------------ data and the network
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
        key = (theta.device, theta.dtype)
        cache = self.__dict__.setdefault("_buffer_cache", {})
        if key not in cache:
            cache[key] = {
                k: v.to(device=theta.device, dtype=theta.dtype if v.is_floating_point() else v.dtype)
                for k, v in self._model.named_buffers()
            }
        return cache[key]

    def _data_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "cross_entropy":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, y)

    def _network_losses(self, theta, phi, X, y, tasks) -> torch.Tensor:
        """loss(network(X_i; weights of task i), y_i) per task, by the selected path: shape (n,)."""
        path = self._forced_path or self._resolve_path(theta, tasks)
        buffers = self._buffers_like(theta)
        shared = {} if self.formulation == "maml" else self._views(theta, self._theta_spec)

        def single(phi_i, X_i, y_i):
            weights = {**shared, **self._views(phi_i, self._phi_spec), **buffers}
            return self._data_loss(functional_call(self._model, weights, (X_i,)), y_i)

        if self._forced_path is None:
            self._path_ran = path
        if path == "vmap":
            return vmap(single, in_dims=(0, 0, 0))(phi, X, y)
        return torch.stack([single(p, x, t) for p, x, t in zip(phi.unbind(0), X.unbind(0), y.unbind(0))])

    # ------------------------------------------------------------------ objectives
    def inner_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        loss = self._network_losses(theta, phi, d["X_support"], d["y_support"], tasks)
        if self.formulation == "maml":
            if self.lam > 0:
                loss = loss + 0.5 * self.lam * (phi - theta).pow(2).sum(-1)
            return loss
        return loss + 0.5 * self.reg * phi.pow(2).sum(-1)

    def outer_loss(self, theta, phi, tasks):
        d = self.batch_data(theta, tasks)
        return self._network_losses(theta, phi, d["X_query"], d["y_query"], tasks)

    def inner_init(self, theta, tasks):
        if self.formulation == "maml":
            return theta.unsqueeze(0).expand(len(tasks), *self.phi_shape)
        return theta.new_zeros(len(tasks), *self.phi_shape)

    @property
    def inner_strongly_convex(self) -> bool:
        """True for the bilevel formulation (reg > 0); for the MAML formulation True iff lam > 0, as iMAML
        assumes (module docstring): the proximal term makes g locally strongly convex for lam large enough
        (above the most negative curvature of the support loss). :attr:`inner_convexity` says which holds."""
        return self.formulation == "bilevel" or self.lam > 0

    @property
    def inner_convexity(self) -> str:
        """``"strong"`` (bilevel: provably reg-strongly convex), ``"proximal"`` (MAML, lam > 0: assumed
        locally strongly convex, as in iMAML) or ``"none"`` (MAML, lam = 0)."""
        if self.formulation == "bilevel":
            return "strong"
        return "proximal" if self.lam > 0 else "none"

    def default_task_chunk(self, theta: torch.Tensor) -> int | None:
        """One task per autograd graph on the loop path, all tasks of the call on the vmap path.

        On the loop path a batched graph buys no speed (the network runs task by task anyway) and holds
        every task's graph at once; one task per graph is what hand-written MAML loops and the peer
        libraries do. Measured on the 4-conv workload (``python -m metabench.peers``, reports/peers).
        """
        if self._forced_path is not None:
            return None if self._forced_path == "vmap" else 1
        if self.path == "loop" or (self.path == "auto" and theta.device.type != "cuda"):
            return 1
        return None if self._resolve_path(theta, None) == "vmap" else 1

    # ------------------------------------------------------------------ vmap vs loop
    def _resolve_path(self, theta: torch.Tensor, tasks) -> str:
        if self.path == "loop" or (self.path == "auto" and theta.device.type != "cuda"):
            return "loop"
        key = (theta.device, theta.dtype)
        check = self._vmap_checks.get(key)
        if check is None:
            index = self.task_index(tasks)[:VMAP_CHECK_TASKS]
            check = self.verify_vmap(theta.detach(), tasks=index)
        if check["agree"]:
            return "vmap"
        if self.path == "auto":
            return "loop"
        detail = ""
        if "loop_error_float64" in check:
            detail = (
                f"; relative to the float64 loop, loop {check['loop_error_float64']:.3g} and vmap "
                f"{check['vmap_error_float64']:.3g} (similar values mean shared {check['dtype']} rounding)"
            )
        raise VmapMismatchError(
            f"path='vmap' disagrees with path='loop' on this model: relative difference {check['rel_diff']:.3g} "
            f"> {check['tol']:g} between their {check['algorithm']} meta-gradients ({check['dtype']}, "
            f"norm={self.describe()['norm']}){detail}. Use path='loop' (or 'auto', which falls back to it)."
        )

    def verify_vmap(
        self, theta: torch.Tensor, tasks=None, algorithm: str = "maml", *, float64_baseline: bool = True, **options
    ) -> dict:
        """Compare the vmap and loop paths on one meta-gradient (default: second-order MAML, 2 inner steps).

        Returns ``{"rel_diff", "agree", "tol", "algorithm", "dtype", "device", "n_tasks"}`` with
        rel_diff = ||g_vmap - g_loop|| / ||g_loop|| and agree = rel_diff <= tol (1e-6 in float64, 1e-4
        otherwise; a non-finite vmap result disagrees). The result gates the vmap path for theta's device
        and dtype (see the module docstring); it never raises for a mismatch.

        Below float64, with ``float64_baseline`` (default), the loop path is also run in float64 and
        ``loop_error_float64`` / ``vmap_error_float64`` (each path's relative distance to it) are added:
        they tell a wrong vmap result from rounding that both paths share (the gate still uses ``tol``).
        """
        from metabench.algorithms import get_algorithm  # here: metabench.algorithms imports metabench.problems

        theta = self.check_theta(theta).detach()
        index = self.task_index(tasks)
        # all tasks in one graph, so that vmap really maps over them
        algo = get_algorithm(algorithm, **{**VMAP_CHECK_OPTIONS, "task_chunk": len(index), **options})
        runs = [("loop", theta), ("vmap", theta)]
        if float64_baseline and theta.dtype != torch.float64:
            runs.append(("loop", theta.double()))
        grads = []
        previous = self._forced_path
        try:
            for path, at in runs:
                self._forced_path = path
                try:
                    grads.append(algo.hypergradient(self, at, tasks=index).grad.double())
                except DivergenceError:
                    if path == "loop":
                        raise
                    grads.append(torch.full_like(at, math.nan, dtype=torch.float64))
        finally:
            self._forced_path = previous

        def rel(a, b):
            scale = float(b.norm())
            diff = float((a - b).norm())
            return diff / scale if scale > 0 else diff

        rel_diff = rel(grads[1], grads[0])
        tol = 1e-6 if theta.dtype == torch.float64 else 1e-4
        result = {
            "rel_diff": rel_diff,
            "agree": bool(math.isfinite(rel_diff) and rel_diff <= tol),
            "tol": tol,
            "algorithm": algo.name,
            "dtype": str(theta.dtype).replace("torch.", ""),
            "device": str(theta.device),
            "n_tasks": len(index),
        }
        if len(grads) == 3:
            result["loop_error_float64"] = rel(grads[0], grads[2])
            result["vmap_error_float64"] = rel(grads[1], grads[2])
        self._vmap_checks[(theta.device, theta.dtype)] = result
        return result

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
            "norm": meta.pop("norm", _detect_norm(self._model)),
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

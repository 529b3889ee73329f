"""The one bilevel problem shape every algorithm sees.

For each task i::

    lower level   phi_i*(theta) = argmin_phi  g_i(theta, phi)        (inner objective)
    upper level   F(theta)      = mean_i  f_i(theta, phi_i*(theta))   (outer objective)
    start point   phi_i^0       = phi0_i(theta)                       (inner initialisation)

Problems are evaluated on a batch of tasks at once: ``phi`` carries a leading task
dimension, ``phi.shape == (len(tasks), *phi_shape)``, and the losses return one value per
task. Since g_i depends on phi_i alone, the gradient of ``inner_loss(...).sum()`` with
respect to the stacked ``phi`` is the stack of the per-task gradients (and likewise for
Hessian-vector products), so algorithms vectorise over tasks with plain autograd.

Three families (``family``):

- ``"maml"``: phi has theta's shape, phi0(theta) = theta, f_i = L_i(phi) (validation loss),
  g_i = Lhat_i(phi) + lam/2 ||phi - theta||^2;
- ``"bilevel"``: theta and phi differ, g_i is strongly convex in phi and phi0 does not
  depend on theta;
- ``"anil"`` (ANIL: the inner loop adapts a head alone): theta = (backbone, head0) holds the head's
  initialisation, phi is the head, phi0(theta) = head0 (a slice of theta: it depends on theta, but
  phi does not have theta's shape), g_i = Lhat_i(backbone, phi) + lam/2 ||phi - head0||^2.

Data live as tensors on one device and dtype; ``data_like(theta)`` returns (and caches)
them on theta's device and dtype, so the computation follows theta.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from metabench._checks import check_finite_tensor, check_shape

__all__ = ["BilevelProblem"]

FAMILIES = ("maml", "bilevel", "anil")


class BilevelProblem(ABC):
    """Abstract bilevel meta-learning problem, batched over tasks.

    Subclasses set ``family``, ``n_tasks``, ``theta_shape``, ``phi_shape`` and store their
    tensors in ``self._data`` (a dict of tensors with a leading task dimension, or scalars).
    """

    family: ClassVar[str]
    #: ``generate`` parameters of a small instance, for the conformance suite run over every registered problem
    #: (``tests/test_registered_problems.py``); empty: ``generate``'s defaults
    conformance_params: ClassVar[dict] = {}
    #: ``generate`` parameters of the standard instance the presets, ``metabench profile`` and the asv suites build
    #: (``metabench.sweep.sizes``), and the case parameters ``metabench profile`` adds; empty: the defaults
    standard_params: ClassVar[dict] = {}
    #: True for a problem whose training cases meta-train to accuracy on fresh episodes (``metabench.meta_train``:
    #: it has ``with_tasks``, a ``dataset`` naming a task source and classification episodes)
    trains_to_accuracy: ClassVar[bool] = False
    profile_params: ClassVar[dict] = {}
    #: ``generate`` parameters added after records of the problem existed: name -> default; a case at that default
    #: leaves it out of its ``case_id``, so stores written before it keep resuming
    later_params: ClassVar[dict] = {}
    truth: ClassVar[str] = "none"
    """What errors are measured against: "exact" (closed forms), "reference" (a float64 reference), "none"."""
    n_tasks: int
    theta_shape: tuple[int, ...]
    phi_shape: tuple[int, ...]
    _data: dict[str, torch.Tensor]

    # ------------------------------------------------------------------ objectives
    @abstractmethod
    def inner_loss(self, theta: torch.Tensor, phi: torch.Tensor, tasks) -> torch.Tensor:
        """g_i(theta, phi_i) for each task in ``tasks``: shape ``(len(tasks),)``."""

    @abstractmethod
    def outer_loss(self, theta: torch.Tensor, phi: torch.Tensor, tasks) -> torch.Tensor:
        """f_i(theta, phi_i) for each task in ``tasks``: shape ``(len(tasks),)``."""

    @abstractmethod
    def inner_init(self, theta: torch.Tensor, tasks) -> torch.Tensor:
        """phi0_i(theta) stacked over ``tasks``: shape ``(len(tasks), *phi_shape)``."""

    @property
    @abstractmethod
    def inner_strongly_convex(self) -> bool:
        """Whether every g_i is strongly convex in phi (the implicit methods need it)."""

    def default_task_chunk(self, theta: torch.Tensor) -> int | None:
        """Tasks per autograd graph when an algorithm's ``task_chunk`` is None (None: all tasks of the call)."""
        return None

    def inner_hessian_bounds(self, tasks=None) -> tuple[float, float]:
        """(mu, L), the extreme eigenvalues of the inner Hessians, where the problem knows them."""
        raise NotImplementedError(f"{type(self).__name__} does not know its inner Hessian's spectrum")

    @abstractmethod
    def describe(self) -> dict:
        """The problem's name and parameters, flat and JSON-friendly, for records."""

    # ------------------------------------------------------------------ optional structure
    @property
    def has_feature_head(self) -> bool:
        """True where g_i and f_i depend on theta only through features z_i(theta) of the task's inputs and phi is
        a head on them: then :meth:`feature_head` gives the head's problem on fixed features."""
        return False

    def feature_head(self, theta: torch.Tensor, tasks: torch.Tensor) -> BilevelProblem:
        """The head's bilevel problem for ``tasks`` whose theta is the features z(theta) (``.features``, with
        their graph to ``theta``): g and f of the head equal this problem's g and f at theta. Only where
        :attr:`has_feature_head`."""
        raise NotImplementedError(f"{type(self).__name__} has no feature structure (has_feature_head is False)")

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._data.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self._data.values())).device

    @property
    def phi0_depends_on_theta(self) -> bool:
        """True for the MAML family (phi0 = theta) and the anil family (phi0 = the head's slice of theta)."""
        return self.family in ("maml", "anil")

    def data_like(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The problem's tensors on ``theta``'s device and dtype (converted once, cached)."""
        key = (theta.device, theta.dtype)
        cache = self.__dict__.setdefault("_data_cache", {})
        if key not in cache:
            cache[key] = {k: v.to(device=theta.device, dtype=theta.dtype) for k, v in self._data.items()}
        return cache[key]

    def batch_data(self, theta: torch.Tensor, tasks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of the tasks in ``tasks`` on theta's device and dtype.

        A run of consecutive tasks (the full set, or a chunk of it) is a view of the stored tensors (no
        copy); another batch is gathered once and cached while the same ``tasks`` tensor is passed in
        (one hypergradient call evaluates the losses many times), so inner steps do not copy the data
        again and again. Under ``torch.compile`` (option compile="on") it is one traced ``index_select``.
        """
        if torch.compiler.is_compiling():  # traced: one gather, no data-dependent branch (no graph break)
            return {k: v.index_select(0, tasks.to(v.device)) for k, v in self.data_like(theta).items()}
        return self._gather(theta, tasks)

    def _gather(self, theta: torch.Tensor, tasks) -> dict[str, torch.Tensor]:
        if not isinstance(tasks, torch.Tensor):
            tasks = self.task_index(tasks)
        data = self.data_like(theta)
        cached = self.__dict__.get("_batch_cache")
        if cached is not None and cached[0] is tasks and cached[1] is data:
            return cached[2]
        start = int(tasks[0])
        if bool((tasks.cpu() == torch.arange(start, start + len(tasks))).all()):  # a run of tasks: views, no copy
            batch = {key: value[start : start + len(tasks)] for key, value in data.items()}
        else:
            index = tasks.to(next(iter(data.values())).device)
            batch = {key: value[index] for key, value in data.items()}
        self._batch_cache = (tasks, data, batch)
        return batch

    def task_index(self, tasks=None) -> torch.Tensor:
        """``tasks`` (None for all, or a sequence of task indices) as a 1-D LongTensor."""
        if tasks is None:
            return torch.arange(self.n_tasks)
        if isinstance(tasks, (str, bytes, set, frozenset, dict)):
            raise ValueError(f"tasks must be a non-empty 1-D sequence of integer task indices, got {tasks!r}")
        try:
            index = torch.as_tensor(tasks)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"tasks must be a non-empty 1-D sequence of integer task indices, got {tasks!r}") from None
        if index.dim() == 0:
            index = index.reshape(1)
        if index.dim() != 1 or index.numel() == 0 or index.dtype in (torch.bool,) or index.is_floating_point():
            raise ValueError(f"tasks must be a non-empty 1-D sequence of integer task indices, got {tasks!r}")
        index = index.to(torch.long).cpu()
        if bool(((index < 0) | (index >= self.n_tasks)).any()):
            raise ValueError(f"tasks must be indices in [0, {self.n_tasks - 1}], got {index.tolist()}")
        return index

    def check_theta(self, theta) -> torch.Tensor:
        """Raise a clear error unless ``theta`` is a finite float tensor of ``theta_shape``."""
        check_finite_tensor("theta", theta)
        return check_shape("theta", theta, self.theta_shape)

    def check_phi(self, phi, n_tasks: int, name: str = "phi") -> torch.Tensor:
        """Raise unless ``phi`` is a finite float tensor of shape ``(n_tasks, *phi_shape)``."""
        check_finite_tensor(name, phi)
        return check_shape(name, phi, (n_tasks, *self.phi_shape))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "problem")
        return f"{type(self).__name__}({params})"

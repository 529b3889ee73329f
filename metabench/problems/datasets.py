"""Few-shot task data without downloads, as stacked tensors with a leading task dimension.

Every generator returns a :class:`TaskBatch` ``(X_support, y_support, X_query, y_query)``:

- classification (N-way K-shot, Q query per class): ``X_support`` (T, N*K, C, H, W),
  ``y_support`` (T, N*K) int64 labels in 0..N-1 (class-major: K copies of 0, then of 1, ...),
  ``X_query`` (T, N*Q, C, H, W), ``y_query`` (T, N*Q);
- regression (sinusoids): ``X_*`` (T, n, 1) and ``y_*`` (T, n, 1) floats.

Three sources:

- :func:`omniglot_like_tasks`: synthetic Omniglot-shaped "characters" (1x28x28 by default). Each
  character of a fixed alphabet (``alphabet_seed``) is 1-3 random cubic Bezier strokes; every drawn
  sample re-renders them under a random affine jitter (rotation, scale, shear, shift), control-point
  noise and pixel noise, so samples of one class look alike and classes differ;
- :func:`sinusoid_tasks`: MAML's toy regression, y = A sin(x - p), A in [0.1, 5], p in [0, pi], x in [-5, 5];
- :func:`digits_tasks`: scikit-learn's shipped 8x8 handwritten digits (1797 images, 10 classes), a
  real data set without a download (needs ``pip install scikit-learn``).

All are deterministic in ``seed``; the random draws are made in float64 on the CPU and the result
is cast to ``dtype`` at the end.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch

from metabench._checks import check_int, check_real

__all__ = ["TaskBatch", "digits_tasks", "omniglot_like_tasks", "sinusoid_tasks"]

OMNIGLOT_CLASSES = 1623  # characters in Omniglot (background + evaluation)


class TaskBatch(NamedTuple):
    """Stacked few-shot tasks (see the module docstring for shapes)."""

    X_support: torch.Tensor
    y_support: torch.Tensor
    X_query: torch.Tensor
    y_query: torch.Tensor


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _check_episode(ways, shots, query, n_tasks) -> tuple[int, int, int, int]:
    return (
        check_int("ways", ways, low=2),
        check_int("shots", shots, low=1),
        check_int("query", query, low=1),
        check_int("n_tasks", n_tasks, low=1),
    )


def _labels(n_tasks: int, ways: int, per_class: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(per_class).expand(n_tasks, -1).clone()


# ---------------------------------------------------------------------- Omniglot-shaped
_STROKES, _CONTROL, _CURVE_POINTS = 3, 4, 20


def _character(index: int, alphabet_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Control points (strokes, 4, 2) in [-0.65, 0.65]^2 and a stroke mask (strokes,) of one character."""
    gen = torch.Generator().manual_seed((alphabet_seed * 1_000_003 + index) % (2**62))
    n_strokes = int(torch.randint(1, _STROKES + 1, (1,), generator=gen))
    control = (torch.rand(_STROKES, _CONTROL, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 0.65
    mask = torch.arange(_STROKES) < n_strokes
    return control, mask


def _bezier(control: torch.Tensor) -> torch.Tensor:
    """Points on cubic Bezier curves: control (..., 4, 2) -> (..., _CURVE_POINTS, 2)."""
    t = torch.linspace(0, 1, _CURVE_POINTS, dtype=control.dtype)
    basis = torch.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], dim=-1)  # (P, 4)
    return torch.einsum("pc,...cd->...pd", basis, control)


def _render(points: torch.Tensor, size: int, width: float) -> torch.Tensor:
    """Images (n, size, size) of ink 1 - exp(-1.5 s), s the sum over points of Gaussian bumps of std ``width``.

    ``points`` (n, m, 2) are (x, y) in [-1, 1]^2. The bumps are separable, so the sum is one batched
    matrix product (n, size, m) @ (n, m, size).
    """
    axis = (torch.arange(size, dtype=points.dtype) + 0.5) / size * 2 - 1
    gx = torch.exp(-(axis[None, None, :] - points[..., 0:1]).pow(2) / (2 * width**2))  # (n, m, W)
    gy = torch.exp(-(axis[None, None, :] - points[..., 1:2]).pow(2) / (2 * width**2))  # (n, m, H)
    return 1 - torch.exp(-1.5 * (gy.transpose(1, 2) @ gx))


def omniglot_like_tasks(
    ways: int = 5,
    shots: int = 5,
    query: int = 15,
    n_tasks: int = 32,
    image_size: int = 28,
    n_classes: int = OMNIGLOT_CLASSES,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    alphabet_seed: int = 0,
    noise: float = 0.05,
    classes=None,
) -> TaskBatch:
    """N-way K-shot tasks over synthetic Omniglot-shaped characters, images (1, image_size, image_size).

    Characters 0..n_classes-1 are fixed by ``alphabet_seed`` (like a data set); ``seed`` draws each
    task's ``ways`` distinct characters (in a random order: label j is the j-th drawn) and every
    sample's jitter. Pixels lie in [0, 1] (strokes bright on a dark ground, ink saturating where strokes
    cross) plus N(0, noise^2) noise. ``classes`` (default: all ``n_classes``) restricts the characters tasks
    are drawn from, e.g. a meta-training split (:mod:`metabench.problems.task_sources`).
    """
    ways, shots, query, n_tasks = _check_episode(ways, shots, query, n_tasks)
    image_size = check_int("image_size", image_size, low=4)
    n_classes = check_int("n_classes", n_classes, low=2, high=1_000_000)
    seed = check_int("seed", seed, low=0)
    alphabet_seed = check_int("alphabet_seed", alphabet_seed, low=0)
    noise = check_real("noise", noise, low=0.0)
    dtype = _check_dtype(dtype)
    if ways > n_classes:
        raise ValueError(f"ways ({ways}) must be <= n_classes ({n_classes})")
    pool = None
    if classes is not None:
        pool = torch.as_tensor([check_int("classes[]", c, low=0, high=n_classes - 1) for c in classes])
        if pool.unique().numel() != pool.numel() or ways > pool.numel():
            raise ValueError(f"classes must be distinct and at least ways ({ways}) many, got {pool.numel()}")
    gen = torch.Generator().manual_seed(seed)
    if pool is None:
        classes = torch.stack([torch.randperm(n_classes, generator=gen)[:ways] for _ in range(n_tasks)])  # (T, N)
    else:
        classes = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:ways]] for _ in range(n_tasks)])
    chars = {int(c): _character(int(c), alphabet_seed) for c in classes.unique()}
    per_class = shots + query
    control = torch.stack([chars[int(c)][0] for c in classes.flatten()])  # (T*N, S, 4, 2)
    mask = torch.stack([chars[int(c)][1] for c in classes.flatten()])  # (T*N, S)
    n = control.shape[0] * per_class
    control = control.repeat_interleave(per_class, dim=0)  # (n, S, 4, 2): sample-major within class
    mask = mask.repeat_interleave(per_class, dim=0)
    f64 = torch.float64
    # per-sample affine jitter: rotation, anisotropic scale, shear, shift; and control-point noise
    angle = 0.15 * torch.randn(n, generator=gen, dtype=f64)
    scale = 0.85 + 0.25 * torch.rand(n, 2, generator=gen, dtype=f64)
    shear = 0.1 * torch.randn(n, generator=gen, dtype=f64)
    shift = 0.08 * torch.randn(n, 1, 2, generator=gen, dtype=f64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    shear_m = torch.eye(2, dtype=f64).repeat(n, 1, 1)
    shear_m[:, 0, 1] = shear
    affine = rot @ shear_m @ torch.diag_embed(scale)
    control = control + 0.04 * torch.randn(control.shape, generator=gen, dtype=f64)
    points = _bezier(control)  # (n, S, P, 2)
    points = torch.einsum("nij,nspj->nspi", affine, points) + shift[:, None]
    points = torch.where(mask[:, :, None, None], points, torch.full_like(points, 100.0))  # unused strokes: far away
    images = _render(points.reshape(n, -1, 2), image_size, width=1.6 / image_size)
    images = images + noise * torch.randn(images.shape, generator=gen, dtype=f64)
    images = images.reshape(n_tasks, ways, per_class, 1, image_size, image_size)
    X_support = images[:, :, :shots].reshape(n_tasks, ways * shots, 1, image_size, image_size)
    X_query = images[:, :, shots:].reshape(n_tasks, ways * query, 1, image_size, image_size)
    return TaskBatch(
        X_support.to(dtype).contiguous(),
        _labels(n_tasks, ways, shots),
        X_query.to(dtype).contiguous(),
        _labels(n_tasks, ways, query),
    )


# ---------------------------------------------------------------------- sinusoids
def sinusoid_tasks(
    n_tasks: int = 25,
    shots: int = 10,
    query: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    return_params: bool = False,
):
    """MAML's sinusoid regression: task i is y = A_i sin(x - p_i), A_i ~ U(amplitude), p_i ~ U(phase).

    ``shots`` support and ``query`` query points per task, x ~ U(x_range). Returns a :class:`TaskBatch`
    with X and y of shape (T, n, 1); with ``return_params=True``, ``(batch, A, p)``.
    """
    n_tasks = check_int("n_tasks", n_tasks, low=1)
    shots = check_int("shots", shots, low=1)
    query = check_int("query", query, low=1)
    seed = check_int("seed", seed, low=0)
    dtype = _check_dtype(dtype)
    ranges = {"amplitude": amplitude, "phase": phase, "x_range": x_range}
    for name, (low, high) in ranges.items():
        check_real(f"{name}[0]", low)
        check_real(f"{name}[1]", high, low=low)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=f64)

    A = uniform((n_tasks, 1, 1), *amplitude)
    p = uniform((n_tasks, 1, 1), *phase)
    x_s = uniform((n_tasks, shots, 1), *x_range)
    x_q = uniform((n_tasks, query, 1), *x_range)
    batch = TaskBatch(
        x_s.to(dtype), (A * torch.sin(x_s - p)).to(dtype), x_q.to(dtype), (A * torch.sin(x_q - p)).to(dtype)
    )
    if return_params:
        return batch, A.flatten().to(dtype), p.flatten().to(dtype)
    return batch


# ---------------------------------------------------------------------- scikit-learn digits
@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "digits tasks use scikit-learn's shipped 8x8 digits data set; install it with `pip install scikit-learn`"
        ) from err
    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float64) / 16.0  # (1797, 8, 8) in [0, 1]
    return images.unsqueeze(1), torch.as_tensor(data.target, dtype=torch.long)


def digits_tasks(
    ways: int = 5,
    shots: int = 5,
    query: int = 15,
    n_tasks: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    classes=None,
) -> TaskBatch:
    """N-way K-shot tasks from scikit-learn's 8x8 digits, images (1, 8, 8) scaled to [0, 1].

    ``classes`` (default all ten digits) restricts the classes tasks are drawn from, e.g. 0..6 for
    meta-training and 7..9 for meta-testing. Each task draws ``ways`` distinct classes and, per class,
    ``shots + query`` distinct images (every class has at least 174).
    """
    ways, shots, query, n_tasks = _check_episode(ways, shots, query, n_tasks)
    seed = check_int("seed", seed, low=0)
    dtype = _check_dtype(dtype)
    images, target = _digits()
    if classes is None:
        classes = list(range(10))
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(f"classes must be a sequence of digit classes in 0..9, got {classes!r}")
    classes = [check_int("classes[]", c, low=0, high=9) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    if ways > len(classes):
        raise ValueError(f"ways ({ways}) must be <= the number of classes ({len(classes)})")
    by_class = {c: torch.nonzero(target == c).flatten() for c in classes}
    smallest = min(len(v) for v in by_class.values())
    if shots + query > smallest:
        raise ValueError(f"shots + query ({shots + query}) must be <= {smallest}, the fewest images of a class")
    gen = torch.Generator().manual_seed(seed)
    support, queries = [], []
    for _ in range(n_tasks):
        chosen = [classes[int(j)] for j in torch.randperm(len(classes), generator=gen)[:ways]]
        picks = [by_class[c][torch.randperm(len(by_class[c]), generator=gen)[: shots + query]] for c in chosen]
        support.append(torch.cat([p[:shots] for p in picks]))
        queries.append(torch.cat([p[shots:] for p in picks]))
    return TaskBatch(
        images[torch.stack(support)].to(dtype),
        _labels(n_tasks, ways, shots),
        images[torch.stack(queries)].to(dtype),
        _labels(n_tasks, ways, query),
    )

"""Meta-training to accuracy on few-shot tasks: fresh task batches per outer step, accuracy on held-out tasks.

For outer step t = 0..T-1, on B fresh episodes of the source's ``"train"`` split (seeded by ``seed`` and t)::

    problem_t = the template problem (network, formulation, lam / reg, loss) on those episodes
    g_t       = algorithm.hypergradient(problem_t, theta_t, state_t)        (counted by the oracle)
    theta_{t+1} = Opt(theta_t, g_t)                                          (Adam or SGD, lr = outer_lr)

**Validation** at t = 0, every ``eval_every`` steps and at t = T: on ``eval_tasks`` fixed episodes of the
``"val"`` split, each task adapts phi_i from phi0_i(theta_t) with the algorithm's own inner solver for its
``inner_steps`` steps on the support set (no graph to theta), and the accuracy is the fraction of query
inputs whose largest logit is the label, averaged over episodes (the query loss is kept too, and is the
only measure for a regression loss). **Test** after step T: ``test_tasks`` episodes of the ``"test"`` split,
``fine_tune_steps`` steps of the same solver (20 by default: RM-MetaL's Table 1 measure), query accuracy.

**Measured**: per outer step the seconds of the hypergradient and the optimizer step (validation is
timed apart, ``eval_wall_time_s``), cumulative oracle calls (inner + outer gradients + HVPs + JVPs, per
task); the peak live-tensor bytes of one outer step (the first, called again under ``LiveTensorTracker``
outside the clock), the process RSS peak over the run, and on CUDA the allocator's peak.
RM-MetaL's Table 2 measure (wall time to reach 0.9 x the best validation accuracy among compared methods)
needs several runs: the report computes it from these trajectories (:func:`time_to_fraction`).

A run that diverges (a ``DivergenceError``, a non-finite theta) stops there with ``status = "diverged"``, one
whose linear solver breaks down (``SolverBreakdown``: CG meeting non-positive curvature, as iMAML's CG does on
BatchNorm or GroupNorm nets at lam = 2) with ``status = "failed"``; what was measured until then is kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from metabench._checks import check_int, check_real
from metabench.algorithms import Algorithm
from metabench.algorithms.inner_loop import run_inner_loop
from metabench.errors import DivergenceError, SolverBreakdown
from metabench.measure import LiveTensorTracker
from metabench.measure.memory import RSSSampler
from metabench.measure.timing import synchronize
from metabench.oracle import Oracle
from metabench.problems.few_shot import network
from metabench.problems.task_sources import TaskSource

__all__ = ["MetaTrainResult", "adapted_accuracy", "episode_seed", "meta_train", "time_to_fraction"]

_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass
class MetaTrainResult:
    """A meta-training run: per-step and per-evaluation lists, and the run's peaks."""

    theta: torch.Tensor
    step_wall_time_s: list[float] = field(default_factory=list)  # cumulative, t = 1..T
    oracle_calls: list[float] = field(default_factory=list)  # cumulative per task, t = 1..T
    eval_steps: list[int] = field(default_factory=list)
    eval_wall_time_s: list[float] = field(default_factory=list)  # training seconds at each evaluation
    val_accuracy: list[float | None] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    test_accuracy: float | None = None
    test_loss: float | None = None
    step_live_peak_bytes: int | None = None
    rss_peak_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    eval_seconds: float = 0.0
    cg_truncated_steps: int = 0  # outer steps whose CG met non-positive curvature (cg_breakdown 'stop' / 'continue')
    info: dict = field(default_factory=dict)  # the first outer step's hypergradient info (features, task_chunk, ...)
    status: str = "ok"
    error: str | None = None


def episode_seed(seed: int, step: int) -> int:
    """The seed of outer step ``step``'s training episodes: distinct per (seed, step), never a val/test seed."""
    return (seed * 1_000_003 + step + 1) % (2**62)


def adapted_accuracy(problem, algorithm: Algorithm, theta: torch.Tensor, steps: int) -> tuple[float | None, float]:
    """(mean query accuracy, mean query loss) over the problem's tasks after ``steps`` steps of the algorithm's
    inner solver from phi0(theta) on each support set; accuracy None for a regression loss."""
    theta = theta.detach()
    index = problem.task_index(None)
    oracle = Oracle(problem, index)
    phi0 = oracle.inner_init(theta).detach()
    phi = run_inner_loop(oracle, theta, phi0, algorithm.inner, steps, backprop_steps=0).detach()
    with torch.no_grad():
        loss = float(problem.outer_loss(theta, phi, index).mean())
        if problem.loss != "cross_entropy":
            return None, loss
        data = problem.batch_data(theta, index)
        buffers = problem._buffers_like(theta)
        correct = []
        for i in range(len(index)):
            weights = {**problem.named_weights(theta, phi[i]), **buffers}
            logits = network.forward(problem.model, weights, data["X_query"][i])
            correct.append((logits.argmax(-1) == data["y_query"][i]).to(torch.float64).mean())
    return float(torch.stack(correct).mean()), loss


def _evaluate(template, source, split, episodes, seed, algorithm, theta, steps, episode):
    batch = source.tasks(split, *episode, episodes, seed=seed, dtype=theta.dtype)
    return adapted_accuracy(template.with_tasks(*batch), algorithm, theta, steps)


def meta_train(
    template,
    source: TaskSource,
    algorithm: Algorithm,
    theta0: torch.Tensor,
    *,
    outer_steps: int,
    outer_lr: float,
    optimizer: str = "adam",
    meta_batch: int = 4,
    eval_every: int = 10,
    eval_tasks: int = 20,
    fine_tune_steps: int = 20,
    test_tasks: int = 50,
    seed: int = 0,
    progress=None,
) -> MetaTrainResult:
    """Meta-train ``theta0`` on episodes of ``source`` shaped like ``template``'s (module docstring).

    ``template`` is a few-shot problem (its ways, shots and query, network, formulation and lam / reg are
    used; its own tasks are not); ``progress(t, result)`` is called after every outer step when given.
    """
    outer_steps = check_int("outer_steps", outer_steps, low=0)
    outer_lr = check_real("outer_lr", outer_lr, low=0.0, low_open=True)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    meta_batch = check_int("meta_batch (task_batch)", meta_batch, low=1)
    eval_every = check_int("eval_every", eval_every, low=1)
    eval_tasks = check_int("eval_tasks", eval_tasks, low=1)
    fine_tune_steps = check_int("fine_tune_steps", fine_tune_steps, low=0)
    test_tasks = check_int("test_tasks", test_tasks, low=1)
    seed = check_int("seed", seed, low=0)
    template.check_theta(theta0)
    described = template.describe()
    episode = (described["ways"], described["shots"], described["query"])
    if None in episode:
        raise ValueError("meta-training to accuracy needs classification episodes (ways, shots, query)")
    steps = int(algorithm.options.get("inner_steps") or 0)

    theta = theta0.detach().clone().requires_grad_(True)
    opt = _OPTIMIZERS[optimizer]([theta], lr=outer_lr)
    result = MetaTrainResult(theta=theta.detach())
    elapsed, calls, state = 0.0, 0.0, None
    device = theta.device

    def evaluate(t: int) -> None:
        start = time.perf_counter()
        acc, loss = _evaluate(template, source, "val", eval_tasks, seed, algorithm, theta.detach(), steps, episode)
        result.eval_seconds += time.perf_counter() - start
        result.eval_steps.append(t)
        result.eval_wall_time_s.append(elapsed)
        result.val_accuracy.append(acc)
        result.val_loss.append(loss)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with RSSSampler() as rss:
        try:
            evaluate(0)
            for t in range(outer_steps):
                batch = source.tasks("train", *episode, meta_batch, seed=episode_seed(seed, t), dtype=theta.dtype)
                problem = template.with_tasks(*batch)
                if t == 0:  # the memory of one outer step, outside the clock (the result is dropped)
                    with LiveTensorTracker() as tracker:
                        algorithm.hypergradient(problem, theta.detach())
                    result.step_live_peak_bytes = int(tracker.peak_bytes)
                synchronize(device)
                start = time.perf_counter()
                hg = algorithm.hypergradient(problem, theta.detach(), state=state)
                opt.zero_grad(set_to_none=True)
                theta.grad = hg.grad.to(theta)
                opt.step()
                synchronize(device)
                elapsed += time.perf_counter() - start
                state = hg.state
                if t == 0:
                    result.info = {k: hg.info.get(k) for k in ("features", "task_chunk", "compile")}
                result.cg_truncated_steps += bool(hg.info.get("cg_truncated_tasks"))
                calls += sum(hg.counts.as_tuple()) / meta_batch
                result.step_wall_time_s.append(elapsed)
                result.oracle_calls.append(calls)
                if not bool(torch.isfinite(theta).all()):
                    raise DivergenceError(f"theta is not finite after outer step {t}")
                if (t + 1) % eval_every == 0 or t + 1 == outer_steps:
                    evaluate(t + 1)
                if progress is not None:
                    progress(t + 1, result)
            start = time.perf_counter()
            result.test_accuracy, result.test_loss = _evaluate(
                template, source, "test", test_tasks, seed, algorithm, theta.detach(), fine_tune_steps, episode
            )
            result.eval_seconds += time.perf_counter() - start
        except DivergenceError as err:
            where = f"outer step {len(result.step_wall_time_s)}"
            result.status, result.error = "diverged", f"DivergenceError at {where}: {err}"
        except SolverBreakdown as err:  # e.g. CG meeting the negative curvature of a normalised net
            where = f"outer step {len(result.step_wall_time_s)}"
            result.status, result.error = "failed", f"solver breakdown at {where}: {err}"
    result.rss_peak_bytes = int(rss.peak_bytes)
    if cuda:
        result.cuda_max_allocated_bytes = int(torch.cuda.max_memory_allocated(device))
    result.theta = theta.detach()
    return result


def time_to_fraction(eval_wall_time_s, val_accuracy, target: float) -> float | None:
    """The training seconds at the first evaluation whose accuracy reaches ``target`` (None if none does)."""
    for seconds, accuracy in zip(eval_wall_time_s, val_accuracy):
        if accuracy is not None and math.isfinite(accuracy) and accuracy >= target:
            return float(seconds)
    return None

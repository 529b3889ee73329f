"""One case of a sweep: build the problem and algorithm, compute, measure, and return a record.

A hypergradient case (``mode = "hypergradient"``) computes one hypergradient, then measures it
with the requested instruments, plus, with ``"memory"``, the live-tensor peak of one batched inner
gradient (iMAML's Mem(grad), ``inner_grad_peak_bytes``). A training case (``mode = "train"``)
runs ``metabench.train`` for ``outer_steps`` and records its trajectory instead; the time, memory
and FLOP instruments do not apply to it (those fields are absent).

Every outcome is a record: a case the algorithm does not apply to is ``skipped``, a non-finite
result ``diverged`` (for a training case: a non-finite value anywhere in its trajectory, or a
final objective gap over ``TRAIN_DIVERGENCE_FACTOR`` times max(initial gap, |F(theta_0)|)), an
out-of-memory ``oom``, any other error ``failed`` (with its text), and whatever was measured
before a failure stays in the record.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import traceback
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

import metabench
from metabench.algorithms import get_algorithm
from metabench.errors import DivergenceError, SolverBreakdown
from metabench.measure import LiveTensorTracker, git_commit, machine_info, measure_call
from metabench.problems import available_problems
from metabench.results import SCHEMA_VERSION
from metabench.sweep.training import train_record, training_params

__all__ = [
    "PreparedCase",
    "build_problem",
    "inner_grad_peak_bytes",
    "prepare_case",
    "run_case",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_OOM = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


@lru_cache(maxsize=16)
def _cached_problem(problem: str, params_json: str, seed: int, dtype: str):
    cls = available_problems()[problem]
    return cls.generate(**json.loads(params_json), seed=seed, dtype=_dtype(dtype))


def build_problem(case: dict):
    """The case's problem (generated once per distinct parameters, then cached)."""
    params = json.dumps(case["problem_params"], sort_keys=True)
    return _cached_problem(case["problem"], params, int(case["seed"]), case["dtype"])


def _theta(case: dict, problem) -> torch.Tensor:
    """theta of a case: "zeros", or "random" — a network's own seeded initial weights where the problem
    has them (``initial_theta``), N(0, 1) entries seeded by ``seed`` otherwise."""
    device = torch.device(case["device"])
    if case["theta"] == "zeros":
        theta = torch.zeros(problem.theta_shape, dtype=torch.float64)
    elif case["theta"] == "random" and hasattr(problem, "initial_theta"):
        theta = problem.initial_theta(dtype=torch.float64)
    elif case["theta"] == "random":
        gen = torch.Generator().manual_seed(int(case["seed"]))
        theta = torch.randn(problem.theta_shape, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"theta must be 'random' or 'zeros', got {case['theta']!r}")
    return theta.to(device=device, dtype=_dtype(case["dtype"]))


def _resolve_options(options: dict, problem) -> dict:
    """Replace ``"auto"``: inner_lr = 1/L, momentum = (sqrt(kappa) - 1)/(sqrt(kappa) + 1), kappa = L/mu."""
    resolved = dict(options)
    if "auto" in resolved.values():
        mu, L = problem.inner_hessian_bounds()
        if resolved.get("inner_lr") == "auto":
            resolved["inner_lr"] = 1.0 / L
        if resolved.get("momentum") == "auto":
            root = math.sqrt(L / mu)
            resolved["momentum"] = (root - 1.0) / (root + 1.0)
    return resolved


def _rel_error(grad: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.to(device=grad.device, dtype=torch.float64)
    return float((grad.double() - reference).norm() / reference.norm().clamp_min(1e-300))


def _errors(problem, algorithm, theta, tasks, grad) -> dict:
    out: dict[str, Any] = {"grad_norm": float(grad.norm()), "rel_error_exact": None, "rel_error_algorithm": None}
    if hasattr(problem, "exact_hypergradient") and problem.inner_strongly_convex:
        out["rel_error_exact"] = _rel_error(grad, problem.exact_hypergradient(theta, tasks=tasks))
    spec = algorithm.differentiated_objective()
    if spec is not None and hasattr(problem, "exact_algorithm_gradient"):
        out["rel_error_algorithm"] = _rel_error(grad, problem.exact_algorithm_gradient(theta, **spec, tasks=tasks))
    return out


@lru_cache(maxsize=1)
def _provenance() -> dict:
    return {
        "metabench_version": metabench.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "machine": machine_info(),
    }


def _base_record(case: dict) -> dict:
    params = case["problem_params"]
    options = case["options"]
    return {
        "schema_version": SCHEMA_VERSION,
        "case_id": case.get("case_id"),
        "sweep": case.get("sweep"),
        "status": None,
        "error": None,
        "algorithm": case["algorithm"],
        "options": options,
        "problem": case["problem"],
        "problem_params": params,
        **{
            k: options.get(k)
            for k in ("inner_steps", "inner_lr", "inner_solver", "truncate", "cg_iters", "neumann_iters")
        },
        "kappa": params.get("kappa"),
        "lam": params.get("lam"),
        "dim": params.get("dim", params.get("q")),
        "n_tasks": params.get("n_tasks"),
        "task_batch": case.get("task_batch"),
        "task_chunk": None,
        "device": case["device"],
        "dtype": case["dtype"],
        "seed": case["seed"],
        "threads": case.get("threads"),
        "mode": case.get("mode", "hypergradient"),
        **{k: case.get(k) for k in ("outer_steps", "outer_lr", "optimizer")},
        "trajectory": None,
        "final_objective_gap": None,
        "total_wall_time_s": None,
    }


def _status_of(err: BaseException) -> str:
    if isinstance(err, DivergenceError):
        return "diverged"
    if isinstance(err, _OOM):
        return "oom"
    return "failed"


def run_case(case: dict, instruments=("time", "memory", "flops")) -> dict:
    """Measure one case; always returns a record (see ``metabench.results.RECORD_FIELDS``).

    With ``threads`` set, torch's intra-op thread count is that number during the case only.
    """
    threads, previous = case.get("threads"), torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        record = _measure_case(case, instruments)
    finally:
        torch.set_num_threads(previous)
    return record | {"threads": torch.get_num_threads() if threads is None else int(threads)}


@dataclass
class PreparedCase:
    """What a case computes: ``algorithm.hypergradient(problem, theta, tasks=tasks)``."""

    problem: Any
    algorithm: Any
    theta: torch.Tensor
    tasks: list[int] | None

    def __call__(self):
        return self.algorithm.hypergradient(self.problem, self.theta, tasks=self.tasks)


def prepare_case(case: dict) -> PreparedCase:
    """Build the problem (cached), theta, the algorithm (``"auto"`` options resolved) and the task batch.

    Raises ValueError/TypeError for a bad case; applicability (``check_problem``) is not checked here.
    """
    problem = build_problem(case)
    theta = _theta(case, problem)
    algorithm = get_algorithm(case["algorithm"], **_resolve_options(case["options"], problem))
    batch = case.get("task_batch")
    tasks = None if batch is None else list(range(min(int(batch), problem.n_tasks)))
    return PreparedCase(problem, algorithm, theta, tasks)


def inner_grad_peak_bytes(problem, theta: torch.Tensor, tasks=None) -> int:
    """Exact live-tensor peak (``LiveTensorTracker``) of ONE batched inner gradient: iMAML's Mem(grad).

    The gradient is ``torch.autograd.grad(problem.inner_loss(theta, phi0, tasks).sum(), phi0)`` at
    phi0 = ``problem.inner_init(theta, tasks)``, detached (a materialised copy, like an inner
    iterate) with ``requires_grad``; theta and phi0 exist before the measured block, so they count
    zero. One untracked call first fills the problem's caches. It does not depend on the algorithm.
    """
    index = problem.task_index(tasks)
    theta = theta.detach()
    phi0 = problem.inner_init(theta, index).detach().clone().requires_grad_(True)

    def inner_grad() -> torch.Tensor:
        with torch.enable_grad():
            return torch.autograd.grad(problem.inner_loss(theta, phi0, index).sum(), phi0)[0]

    inner_grad()
    tracker = LiveTensorTracker()
    with tracker:
        inner_grad()
    return int(tracker.peak_bytes)


def _failure(record: dict, err: Exception) -> dict:
    status = _status_of(err)
    kind = "solver breakdown" if isinstance(err, SolverBreakdown) else type(err).__name__
    out = record | {"status": status, "error": f"{kind}: {err}"}
    if status == "failed":
        out["traceback"] = traceback.format_exc(limit=4)
    return out


def _measure_case(case: dict, instruments) -> dict:
    record, instruments = _base_record(case), tuple(case.get("instruments") or instruments)
    try:
        if record["mode"] not in ("hypergradient", "train"):
            raise ValueError(f"mode must be 'hypergradient' or 'train', got {record['mode']!r}")
        prepared = prepare_case(case)
        problem, algorithm, theta, tasks = prepared.problem, prepared.algorithm, prepared.theta, prepared.tasks
        record.update(options=algorithm.options, **{k: algorithm.options.get(k) for k in ("inner_lr", "inner_solver")})
        record["dim"] = problem.phi_shape[0]
        record["task_batch"] = problem.n_tasks if tasks is None else len(tasks)
    except (ValueError, TypeError) as err:
        return record | {"status": "failed", "error": f"bad case: {err}"} | _provenance() | _stamp()
    try:
        algorithm.check_problem(problem)
    except ValueError as err:
        return record | {"status": "skipped", "error": str(err)} | _provenance() | _stamp()
    if record["mode"] == "train":
        try:
            outer_steps, outer_lr, optimizer = training_params(case, problem, tasks)
        except ValueError as err:
            return record | {"status": "failed", "error": f"bad case: {err}"} | _provenance() | _stamp()
        record.update(outer_steps=outer_steps, outer_lr=outer_lr, optimizer=optimizer)
        try:
            record = train_record(record, prepared, outer_steps, outer_lr, optimizer)
        except Exception as err:  # a failure is a result
            record = _failure(record, err)
        return record | _provenance() | _stamp()
    try:
        result = prepared()
        record.update(result.counts.as_dict())
        record["task_chunk"] = result.info.get("task_chunk")
        record.update(_errors(problem, algorithm, theta, result.tasks, result.grad))
        del result
        measures, _ = measure_call(
            prepared,
            theta.device,
            min_run_time=float(case.get("min_run_time", 0.1)),
            warmup=False,  # the call above was the warm-up
            instruments=instruments,
        )
        record.update(measures)
        record["status"] = "ok"
    except Exception as err:  # a failure is a result: keep what was measured, say what happened
        record = _failure(record, err)
    if "memory" in instruments:
        try:
            record["inner_grad_peak_bytes"] = inner_grad_peak_bytes(problem, theta, tasks)
        except Exception:  # an extra measure: its failure must not cost the others
            record["inner_grad_peak_bytes"] = None
    return record | _provenance() | _stamp()


def _stamp() -> dict:
    return {"timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

"""One case of a sweep: build the problem and algorithm, compute, judge, measure, and return a record.

A hypergradient case (``mode = "hypergradient"``) computes one hypergradient, judges it against the
problem's truth (``metabench.evaluate``: exact closed forms, or a float64 reference), then measures it
with the requested instruments, plus, with ``"memory"``, the live-tensor peak of one batched inner
gradient (iMAML's Mem(grad), ``inner_grad_peak_bytes``). A training case (``mode = "train"``) runs
``metabench.train`` for ``outer_steps`` and records its trajectory instead; the time, memory and FLOP
instruments do not apply to it (those fields are absent).

**Every outcome is a record; nothing a case does can stop the sweep** (only Ctrl-C, KeyboardInterrupt,
goes through). Statuses, decided by what was raised where:

- ``invalid``: the case's parameters were refused before it ran (a bad value, a seed that is not an
  integer, ``threads = 0``, ``inner_lr = "auto"`` on a problem whose spectrum is unknown, ...);
- ``skipped``: the case does not apply here: the algorithm refuses the problem (``check_problem``), or
  the device it names does not exist on this machine (``cuda`` on a CPU-only torch);
- ``diverged``: a non-finite or growing inner loop, a non-finite result, a diverging training run;
- ``oom``: an allocation failed (``MemoryError``, ``torch.OutOfMemoryError``, or the CPU allocator's
  "can't allocate memory");
- ``failed``: any other exception, with its text and the last frames of its traceback;
- ``ok``: measured.
Whatever was measured before a failure stays in the record.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

import metabench
from metabench.algorithms import get_algorithm
from metabench.errors import DivergenceError, SolverBreakdown
from metabench.evaluate import TRUTH_FIELDS, evaluate
from metabench.measure import INSTRUMENTS, LiveTensorTracker, git_commit, machine_info, measure_call
from metabench.options import HEADLINE_OPTIONS
from metabench.problems import PROBLEMS, BilevelProblem
from metabench.problems.contract import ProblemContractError, check_contract
from metabench.results import SCHEMA_VERSION
from metabench.sweep.training import (
    ACCURACY_FIELDS,
    ACCURACY_TRAIN_DEFAULTS,
    accuracy_train_record,
    accuracy_training_params,
    task_source_of,
    train_record,
    training_params,
    trains_to_accuracy,
)
from metabench.vmap_check import verify_vmap

__all__ = [
    "CaseNotApplicable",
    "InvalidCase",
    "crashed_record",
    "PreparedCase",
    "build_problem",
    "inner_grad_peak_bytes",
    "prepare_case",
    "run_case",
    "status_of",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_OOM = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
#: what the allocators put in the RuntimeError they raise when an allocation fails
_OOM_TEXT = ("can't allocate memory", "out of memory", "not enough memory", "DefaultCPUAllocator")


class InvalidCase(ValueError):
    """The case's parameters are refused: it cannot run anywhere as given."""


class CaseNotApplicable(Exception):
    """The case does not apply here (the algorithm refuses the problem, the device does not exist)."""


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise InvalidCase(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


@lru_cache(maxsize=16)
def _cached_problem(problem: str, params_json: str, seed: int, dtype: str):
    cls = PROBLEMS.get(problem)
    built = cls.generate(**json.loads(params_json), seed=seed, dtype=_dtype(dtype))
    if not isinstance(built, BilevelProblem):
        raise ProblemContractError(
            f"problem {problem!r}: {cls.__qualname__}.generate must return a BilevelProblem, got {type(built).__name__}"
        )
    check_contract(built, problem)  # a plugin's broken problem is a record that says so, not a wrong number
    return built


def build_problem(case: dict):
    """The case's problem (generated once per distinct parameters, then cached)."""
    params = json.dumps(case["problem_params"], sort_keys=True)
    return _cached_problem(case["problem"], params, case["seed"], case["dtype"])


def _device(case: dict) -> torch.device:
    """The case's device; ``CaseNotApplicable`` where this machine does not have it."""
    try:
        device = torch.device(case["device"])
    except (RuntimeError, TypeError, ValueError) as err:
        raise InvalidCase(f"device must be a torch device such as 'cpu' or 'cuda:0', got {case['device']!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise CaseNotApplicable(f"device {case['device']!r} is not available on this machine ({why})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CaseNotApplicable(f"device {case['device']!r} is not available: {torch.cuda.device_count()} GPU(s)")
    if device.type != "cpu":
        try:  # the one test that holds for every backend (mps, xpu, ...): can a tensor live there?
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CaseNotApplicable(f"device {case['device']!r} is not available on this machine ({why})") from None
    return device


def _theta(case: dict, problem, device: torch.device) -> torch.Tensor:
    """theta of a case: "zeros", or "random" — a network's own seeded initial weights where the problem
    has them (``initial_theta``), N(0, 1) entries seeded by ``seed`` otherwise."""
    if case["theta"] == "zeros":
        theta = torch.zeros(problem.theta_shape, dtype=torch.float64)
    elif case["theta"] == "random" and hasattr(problem, "initial_theta"):
        theta = problem.initial_theta(dtype=torch.float64)
    elif case["theta"] == "random":
        gen = torch.Generator().manual_seed(int(case["seed"]))
        theta = torch.randn(problem.theta_shape, generator=gen, dtype=torch.float64)
    else:
        raise InvalidCase(f"theta must be 'random' or 'zeros', got {case['theta']!r}")
    return theta.to(device=device, dtype=_dtype(case["dtype"]))


def _resolve_options(options: dict, problem) -> dict:
    """Replace ``"auto"``: inner_lr = 1/L, momentum = (sqrt(kappa) - 1)/(sqrt(kappa) + 1), kappa = L/mu."""
    resolved = dict(options)
    if "auto" not in resolved.values():
        return resolved
    try:
        mu, L = problem.inner_hessian_bounds()
    except NotImplementedError as err:
        auto = sorted(k for k, v in options.items() if v == "auto")
        raise InvalidCase(
            f"{', '.join(auto)} = 'auto' needs the inner Hessian's spectrum: {err}; give numbers"
        ) from None
    if not (math.isfinite(mu) and math.isfinite(L) and 0 < L):
        raise InvalidCase(f"'auto' options need a finite inner spectrum, got mu = {mu:g}, L = {L:g}")
    if resolved.get("inner_lr") == "auto":
        resolved["inner_lr"] = 1.0 / L
    if resolved.get("momentum") == "auto":
        if not mu > 0:
            raise InvalidCase(f"momentum = 'auto' needs mu > 0 (a strongly convex inner problem), got mu = {mu:g}")
        root = math.sqrt(L / mu)
        resolved["momentum"] = (root - 1.0) / (root + 1.0)
    return resolved


@lru_cache(maxsize=1)
def _provenance() -> dict:
    return {
        "metabench_version": metabench.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "machine": machine_info(),
    }


def _base_record(case: dict) -> dict:
    params = case.get("problem_params") or {}
    options = case.get("options") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "case_id": case.get("case_id"),
        "sweep": case.get("sweep"),
        "status": None,
        "error": None,
        "algorithm": case.get("algorithm"),
        "options": options,
        "problem": case.get("problem"),
        "problem_params": params,
        **{k: options.get(k) for k in HEADLINE_OPTIONS},
        "kappa": params.get("kappa"),
        "lam": params.get("lam"),
        "dim": params.get("dim", params.get("q")),
        "n_tasks": params.get("n_tasks"),
        "task_batch": case.get("task_batch"),
        "task_chunk": None,
        "features": None,
        "compile": None,
        "compile_s": None,
        "device": case.get("device"),
        "executor": None,
        "worker": None,
        "gpu": None,
        "dtype": case.get("dtype"),
        "seed": case.get("seed"),
        "threads": case.get("threads"),
        "mode": case.get("mode", "hypergradient"),
        **{k: case.get(k) for k in ("outer_steps", "outer_lr", "optimizer", *ACCURACY_TRAIN_DEFAULTS)},
        "trajectory": None,
        "final_objective_gap": None,
        "total_wall_time_s": None,
        **dict.fromkeys(ACCURACY_FIELDS),
        **dict.fromkeys(TRUTH_FIELDS),
    }


def status_of(err: BaseException) -> str:
    """The record status of an exception raised by a case (module docstring)."""
    if isinstance(err, InvalidCase):
        return "invalid"
    if isinstance(err, CaseNotApplicable):
        return "skipped"
    if isinstance(err, DivergenceError):
        return "diverged"
    if isinstance(err, _OOM) or (isinstance(err, RuntimeError) and any(t in str(err) for t in _OOM_TEXT)):
        return "oom"
    return "failed"


def _failure(record: dict, err: BaseException) -> dict:
    status = status_of(err)
    if isinstance(err, SolverBreakdown):
        text = f"solver breakdown: {err}"
    elif status in ("invalid", "skipped"):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    out = record | {"status": status, "error": text}
    if status == "failed":
        out["traceback"] = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-6))
    return out


def _set_threads(threads) -> None:
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidCase(f"threads must be None or an integer >= 1, got {threads!r}")
    torch.set_num_threads(threads)


def run_case(case: dict, instruments=("time", "memory", "flops")) -> dict:
    """Measure one case; always returns a record (see ``metabench.results.RECORD_FIELDS``), never raises
    except KeyboardInterrupt. With ``threads`` set, torch's intra-op thread count is that number during
    the case only."""
    previous = torch.get_num_threads()
    start = time.perf_counter()
    try:
        record = _base_record(case)
    except Exception as err:  # a case too malformed to describe is still a record
        record = {"schema_version": SCHEMA_VERSION, "case_id": case.get("case_id"), "sweep": case.get("sweep")}
        return _failure(record, InvalidCase(f"malformed case: {err}")) | _provenance() | _stamp()
    try:
        if case.get("invalid"):
            raise InvalidCase(case["invalid"])
        _set_threads(case.get("threads"))
        record["threads"] = torch.get_num_threads()  # what the case ran with (torch's default when None)
        record = _measure_case(case, record, instruments)
    except Exception as err:  # a failure is a result: keep what was measured, say what happened
        record = _failure(record, err)
    finally:
        provenance = _provenance()  # before the threads go back: machine.torch_num_threads is the case's
        torch.set_num_threads(previous)
    record["case_wall_s"] = time.perf_counter() - start
    return record | provenance | _stamp()


def crashed_record(case: dict, deaths: int) -> dict:
    """The ``failed`` record of a case that was in flight when ``deaths`` runs died (see ``sweep.runner``)."""
    record = _base_record(case)
    text = (
        f"the process died {deaths} times while running this case (a crash inside a library, such as a "
        "segmentation fault, or the kernel's out-of-memory killer): recorded as failed so the sweep goes on; "
        "delete this record from the store to try the case again"
    )
    return record | {"status": "failed", "error": text} | _provenance() | _stamp()


def worker_lost_record(case: dict, reason: str, executor: str) -> dict:
    """The ``failed`` record of a case whose worker died running it (``sweep.executors``): ``reason`` says how."""
    record = _base_record(case) | {"executor": executor}
    text = (
        f"the worker died while running this case: {reason}; it was run again alone and its worker died again "
        "(a crash inside a library, such as a segmentation fault, or an out-of-memory kill): recorded as failed "
        "so the sweep goes on; delete this record from the store to try the case again"
    )
    return record | {"status": "failed", "error": text} | _provenance() | _stamp()


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

    Raises ``InvalidCase`` for parameters that are refused (a ValueError or TypeError raised while building
    is one), ``CaseNotApplicable`` for a device this machine lacks; ``check_problem`` is not run here.
    """
    if case.get("invalid"):
        raise InvalidCase(case["invalid"])
    device = _device(case)
    try:
        problem = build_problem(case)
        theta = _theta(case, problem, device)
        algorithm = get_algorithm(case["algorithm"], **_resolve_options(case["options"], problem))
    except InvalidCase:
        raise
    except (ValueError, TypeError) as err:
        raise InvalidCase(str(err)) from err
    batch = case.get("task_batch")
    tasks = None if batch is None else list(range(min(int(batch), problem.n_tasks)))
    _check_vmap_path(problem, theta, tasks)
    return PreparedCase(problem, algorithm, theta, tasks)


#: The tasks (the first of the case's batch) a sweep's vmap check runs on.
VMAP_CHECK_TASKS = 4


def _check_vmap_path(problem, theta: torch.Tensor, tasks) -> None:
    """Give a few-shot problem that may use ``torch.func.vmap`` (``path="vmap"``, or ``"auto"`` on CUDA) its
    verdict before it runs: the vmap and loop meta-gradients compared once per device and dtype
    (``metabench.vmap_check``); the problem then uses vmap only if they agree (``"vmap"`` raises otherwise)."""
    path = getattr(problem, "path", None)
    if path not in ("vmap", "auto") or problem.vmap_check(theta) is not None:
        return
    if path == "auto" and theta.device.type != "cuda":
        return
    index = problem.task_index(tasks)[:VMAP_CHECK_TASKS]
    verify_vmap(problem, theta.detach(), tasks=index)


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


def _instruments(case: dict, default) -> tuple[str, ...]:
    chosen = case.get("instruments")
    if chosen is None:
        return tuple(default)
    if not isinstance(chosen, (list, tuple)) or not all(isinstance(i, str) for i in chosen):
        raise InvalidCase(f"instruments must be None or a list of names from {list(INSTRUMENTS)}, got {chosen!r}")
    unknown = sorted(set(chosen) - set(INSTRUMENTS))
    if unknown:
        raise InvalidCase(f"unknown instrument(s) {unknown}; choose from {list(INSTRUMENTS)}")
    return tuple(chosen)


def _measure_case(case: dict, record: dict, instruments) -> dict:
    instruments = _instruments(case, instruments)
    if record["mode"] not in ("hypergradient", "train"):
        raise InvalidCase(f"mode must be 'hypergradient' or 'train', got {record['mode']!r}")
    prepared = prepare_case(case)
    problem, algorithm, theta, tasks = prepared.problem, prepared.algorithm, prepared.theta, prepared.tasks
    described = algorithm.describe()
    record.update(options=described, **{k: described.get(k) for k in HEADLINE_OPTIONS})
    record["dim"] = problem.phi_shape[0]
    record["task_batch"] = problem.n_tasks if tasks is None else len(tasks)
    try:
        algorithm.check_problem(problem)
    except ValueError as err:
        raise CaseNotApplicable(str(err)) from None
    if record["mode"] == "train" and trains_to_accuracy(problem):
        try:
            params, source = accuracy_training_params(case, problem), task_source_of(case)
        except ValueError as err:
            raise InvalidCase(str(err)) from None
        try:
            return accuracy_train_record(record, prepared, params, source)
        except Exception as err:
            return _failure(record, err)
    if record["mode"] == "train":
        try:
            outer_steps, outer_lr, optimizer = training_params(case, problem, tasks)
        except ValueError as err:
            raise InvalidCase(str(err)) from None
        record.update(outer_steps=outer_steps, outer_lr=outer_lr, optimizer=optimizer)
        try:
            return train_record(record, prepared, outer_steps, outer_lr, optimizer)
        except Exception as err:
            return _failure(record, err)
    try:
        result = prepared()
        record.update(result.counts.as_dict())
        record["task_chunk"] = result.info.get("task_chunk")
        record["features"] = result.info.get("features")
        record["compile"], record["compile_s"] = result.info.get("compile"), result.info.get("compile_s")
        if case.get("truth", "auto") == "skip":
            record.update(grad_norm=float(result.grad.norm()), truth_status="skipped: the case says truth = 'skip'")
        else:
            record.update(evaluate(problem, algorithm, theta, result.tasks, result.grad))
        del result
        if instruments:  # instruments = []: the counts and errors of the one call above are the record
            measures, _ = measure_call(
                prepared,
                theta.device,
                min_run_time=float(case.get("min_run_time", 0.1)),
                warmup=False,  # the call above was the warm-up
                instruments=instruments,
            )
            record.update(measures)
        record["status"] = "ok"
    except Exception as err:  # keep what was measured, say what happened
        record = _failure(record, err)
    if "memory" in instruments:
        try:
            record["inner_grad_peak_bytes"] = inner_grad_peak_bytes(problem, theta, tasks)
        except Exception:  # an extra measure: its failure must not cost the others
            record["inner_grad_peak_bytes"] = None
    return record


def _stamp() -> dict:
    return {"timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

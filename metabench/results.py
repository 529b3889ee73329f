"""Records and the results store: one tidy row per measured case, append-only JSON Lines.

Each record is a flat dict (``RECORD_FIELDS`` documents every column). The store appends one
line per case and flushes it to disk at once, so a killed sweep loses at most the case in
flight; a torn last line (a kill mid-write) is cut off when the store is next opened. Cases
are identified by ``case_id`` (a hash of the case's parameters), so a rerun skips finished
cases and never writes a duplicate. ``load_records`` gives a pandas DataFrame in one call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["RECORD_FIELDS", "SCHEMA_VERSION", "STATUSES", "ResultsStore", "case_id", "load_records", "read_records"]

SCHEMA_VERSION = 2  # 2: training cases (mode, trajectory, ...) and inner_grad_peak_bytes

STATUSES = {
    "ok": "measured",
    "failed": "raised an error (text in `error`), including a linear-solver breakdown",
    "diverged": (
        "a non-finite iterate or result (e.g. a too-large inner_lr), "
        "or a training run whose objective gap grew a million-fold"
    ),
    "oom": "ran out of memory",
    "skipped": "the algorithm does not apply to this problem (reason in `error`)",
}

RECORD_FIELDS: dict[str, str] = {
    # identity
    "schema_version": "version of this schema",
    "case_id": "hash of the case parameters; unique within a store",
    "sweep": "name of the sweep that produced the record",
    "status": "one of " + ", ".join(STATUSES),
    "error": "error text for a status other than ok, else null",
    "traceback": "the last frames of the traceback, for status failed only",
    # the case
    "algorithm": "registered algorithm name",
    "options": "the algorithm's options after defaults and 'auto' were resolved (dict)",
    "problem": "problem name",
    "problem_params": "the problem's parameters (dict: n_tasks, dim, kappa, lam, ...)",
    "inner_steps": "K (copied from options for pivots)",
    "inner_lr": "alpha (resolved)",
    "inner_solver": "gd or nesterov",
    "truncate": "T for truncated, else null",
    "cg_iters": "CG iterations for imaml / rm_metal, else null",
    "neumann_iters": "N for neumann, else null",
    "kappa": "condition number of the inner problem (from problem_params)",
    "lam": "proximal weight of the MAML family, else null",
    "dim": "dimension of phi",
    "n_tasks": "tasks in the problem",
    "task_batch": "tasks per hypergradient call",
    "task_chunk": "tasks per autograd graph within the call (the task_chunk option, resolved; null if not run)",
    "device": "torch device of theta",
    "dtype": "float32 or float64",
    "seed": "seed of the problem and of theta",
    "threads": "torch intra-op threads during the case",
    "mode": "hypergradient (measure one hypergradient) or train (meta-train and record the trajectory)",
    "outer_steps": "training cases: outer steps T, else null",
    "outer_lr": "training cases: outer step size (resolved; 'auto' is 1/L_F, L_F = largest eigenvalue of F's Hessian)",
    "optimizer": "training cases: sgd or adam, else null",
    # measures
    "time_median_s": "median wall time of one hypergradient (synchronised), seconds",
    "time_iqr_s": "interquartile range of the timed runs, seconds",
    "time_runs": "number of timed runs",
    "live_peak_bytes": "peak bytes of tensors allocated and alive during the call (exact)",
    "live_allocated_bytes": "total bytes allocated during the call",
    "saved_bytes": "bytes saved for backward during the call (null when unavailable)",
    "saved_status": "ok, or why saved_bytes is unavailable",
    "rss_peak_bytes": "process RSS peak during the call (sampled)",
    "rss_peak_delta_bytes": "RSS peak minus RSS before the call (sampled)",
    "cuda_max_allocated_bytes": "torch.cuda.max_memory_allocated during the call, null off CUDA",
    "cuda_status": "ok, or 'unavailable: reason'",
    "nvml_peak_bytes": "device used-memory peak from NVML (sampled), null where unavailable",
    "nvml_status": "ok, or 'unavailable: reason'",
    "inner_grad_peak_bytes": "memory of one inner gradient (iMAML's Mem(grad)), exact live-tensor peak",
    "matmul_flops": "FLOPs of matmul/convolution-class ops (torch FlopCounterMode), HVPs included",
    "inner_grads": "oracle count: inner gradients",
    "outer_grads": "oracle count: outer gradients",
    "hvps": "oracle count: Hessian-vector products",
    "jvps": "oracle count: mixed second-derivative products",
    "grad_norm": "l2 norm of the computed hypergradient",
    "rel_error_exact": "norm(grad - exact hypergradient) / norm(exact), null where no closed form",
    "rel_error_algorithm": "norm(grad - exact derivative of the algorithm run) / norm(that), null where undefined",
    # training cases (null for hypergradient cases)
    "trajectory": (
        "training cases: dict of lists over outer steps t = 0..T: objective_gap (F(theta_t) - F*, null where "
        "unavailable), exact_grad_norm, wall_time_s (cumulative hypergradient seconds), oracle_calls (cumulative "
        "inner + outer gradients + HVPs + JVPs per task)"
    ),
    "final_objective_gap": "training cases: F(theta_T) - F*, null where unavailable",
    "total_wall_time_s": "training cases: seconds spent in the T hypergradients",
    # provenance
    "metabench_version": "installed metabench version",
    "git_commit": "git commit of the metabench checkout (+dirty), null outside git",
    "torch_version": "torch.__version__",
    "machine": "machine description (dict)",
    "timestamp": "UTC time the record was written (ISO 8601)",
}


def case_id(case: dict) -> str:
    """A stable 16-hex-digit id of a case's parameters (key order does not matter)."""
    blob = json.dumps(case, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _clean(value):
    """JSON-safe value: non-finite floats become null, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a JSON Lines store (a torn last line is ignored), without writing."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.endswith("\n") and line.strip()]


class ResultsStore:
    """Append-only JSON Lines file of records, one per case id."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()
        self._ids = {r["case_id"] for r in self.records()}

    def _repair_torn_tail(self) -> None:
        """Cut a partial last line left by a process killed mid-write."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            fh.truncate(data.rfind(b"\n") + 1)

    def records(self) -> list[dict]:
        """Every complete record in the file, in write order."""
        return read_records(self.path)

    def __contains__(self, cid: str) -> bool:
        return cid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def append(self, record: dict) -> None:
        """Write one record and flush it to disk; a second record with the same case_id is refused."""
        cid = record["case_id"]
        if cid in self._ids:
            raise ValueError(f"case {cid} is already in {self.path}; the store never holds duplicates")
        line = json.dumps(_clean(record), sort_keys=False, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._ids.add(cid)


def load_records(paths: str | os.PathLike | Iterable[str | os.PathLike]):
    """Records from JSON Lines files (or folders of ``*.jsonl``) as one pandas DataFrame."""
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.jsonl")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"no results at {p}")
    rows = [r for f in files for r in read_records(f)]
    return pd.DataFrame(rows, columns=None if rows else list(RECORD_FIELDS))

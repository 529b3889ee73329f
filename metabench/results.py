"""Records and the results store: one tidy row per measured case, append-only JSON Lines.

Each record is a flat dict (``RECORD_FIELDS`` documents every column); a record is a JSON object with at
least ``schema_version``, ``case_id`` (a hash of the case's parameters) and ``status``. The store is a
plain JSON Lines file (``pandas.read_json(path, lines=True)`` reads it) with these guarantees:

- One record per case id, across processes. Writers take a lock file next to the store
  (``<store>.lock``); under it they read the lines other writers appended since they last looked
  (from the last byte offset parsed, not the whole file again) and append only a case id still
  absent, so concurrent sweeps on one folder write each case once.
- A record is either fully written or not at all: one line per record, fsynced before ``append``
  returns; a write interrupted in this process (KeyboardInterrupt) is truncated away before the
  exception goes on. A process killed mid-write leaves a fragment without its newline: the next writer
  moves it, with a header saying where it came from, to ``<store>.rejected`` and cuts it from the
  store. A complete last record that only lacks its newline is kept (the newline is added).
  No byte is ever silently dropped.
- Reading never fails on one bad line. The file is read as bytes and split on newlines; a line that is
  not UTF-8, not JSON, JSON but not a record, a repeat of an earlier case id (stores written by older
  versions can hold those: the first is kept), or a record of another ``schema_version`` is set aside
  and reported as ``path:line: reason`` (a ``StoreWarning``, and in a ``problems`` list on request),
  and the rest is read. A UTF-8 byte-order mark is tolerated. Readers ignore a torn last line without a
  word, since a writer may be mid-append.
- Records of another schema version are never mixed in: readers skip them with one warning per file,
  and a writer refuses to open (ValueError) a store that holds any, so a sweep never resumes into it.

``load_records`` gives a pandas DataFrame in one call. A store may also be kept gzip-compressed
(``<store>.jsonl.gz``, e.g. the records committed beside a report): readers decompress it and parse its
lines exactly as a plain store's (a stream that ends early or is corrupt is reported and the lines before it
read); writers append to plain ``.jsonl`` files only.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import math
import os
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "RECORD_FIELDS",
    "SCHEMA_VERSION",
    "STATUSES",
    "ReadProblem",
    "ResultsStore",
    "StoreWarning",
    "RUN_DEPENDENT_FIELDS",
    "case_id",
    "comparable",
    "load_records",
    "read_records",
]

SCHEMA_VERSION = 3  # 3: oracle-counted calls, truth and reference errors, statuses invalid

STATUSES = {
    "ok": "measured",
    "failed": "raised an error (text in `error`), including a linear-solver breakdown",
    "diverged": (
        "a non-finite iterate or result, an inner loop whose objective grew (e.g. inner_lr > 2/L), a Neumann "
        "series whose terms grew, or a training run that diverged"
    ),
    "oom": "an allocation failed (out of memory)",
    "skipped": "does not apply here: the algorithm refuses the problem, or the device is absent (reason in `error`)",
    "invalid": "the case's parameters were refused before it ran (reason in error)",
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
    "features": "where phi is a head on theta's features: 'once' (backbone run once per task) or 'recompute' "
    "(in every loss); null where the problem has no such structure or the case did not run",
    "compile": "what the compile option ran for the untracked inner gradients: 'off', 'compiled' (checked against "
    "eager first), 'unused' (none in the call) or 'eager: <reason>' (compile raised or disagreed); null if not run",
    "compile_s": "seconds of the first compiled call (tracing and code generation, absorbed by the warm-up), else null",
    "device": "torch device of theta",
    "executor": "where the case ran: serial, local, dask or submitit (null: run_case called directly)",
    "worker": "the process that ran it: host:pid, with the dask worker's name (null: run_case called directly)",
    "gpu": "CUDA_VISIBLE_DEVICES of that worker, null where unset",
    "dtype": "float32 or float64",
    "seed": "seed of the problem and of theta",
    "threads": "torch intra-op threads during the case",
    "mode": "hypergradient (measure one hypergradient) or train (meta-train and record the trajectory)",
    "outer_steps": "training cases: outer steps T, else null",
    "outer_lr": "training cases: outer step size (resolved; 'auto' is 1/L_F, L_F = largest eigenvalue of F's Hessian)",
    "optimizer": "training cases: sgd or adam, else null",
    "eval_every": "few-shot training cases: outer steps between validation accuracies, else null",
    "eval_tasks": "few-shot training cases: validation episodes (fixed, from the val split), else null",
    "fine_tune_steps": "few-shot training cases: inner steps of adaptation before the test accuracy, else null",
    "test_tasks": "few-shot training cases: test episodes (from the test split), else null",
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
    "truth": "what the errors are measured against: exact (closed forms), reference (float64), null (none)",
    "reference_kind": "reference problems: implicit (converged inner solve) or unrolled (K-step GD, lam = 0)",
    "truth_status": "ok, or which truth could not be had and why (e.g. a reference whose inner solve did not converge)",
    "rel_error_exact": "norm(grad - exact hypergradient) / norm(exact), null where no closed form",
    "rel_error_reference": "networks: norm(grad - float64 reference hypergradient) / norm(reference)",
    "rel_error_algorithm": (
        "norm(grad - derivative of the algorithm run) / norm(that): exact (closed forms) or float64 reference "
        "(networks); null where the algorithm is not such a derivative"
    ),
    "rel_error_damped_reference": "damped linear solves: norm(grad - damped reference) / norm(damped reference)",
    "damping_bias": "damped linear solves: norm(damped reference - reference) / norm(reference)",
    # training cases (null for hypergradient cases)
    "trajectory": (
        "training cases: dict of lists over outer steps t = 0..T: objective_gap (F(theta_t) - F*, null where "
        "unavailable), exact_grad_norm, wall_time_s (cumulative hypergradient seconds), oracle_calls (cumulative "
        "inner + outer gradients + HVPs + JVPs per task); few-shot training cases instead: wall_time_s and "
        "oracle_calls over t = 0..T, and at each validation eval_step, eval_wall_time_s (training seconds so far), "
        "val_accuracy, val_loss"
    ),
    "final_objective_gap": "training cases: F(theta_T) - F*, null where unavailable",
    "total_wall_time_s": "training cases: seconds spent in the T hypergradients (few-shot: and optimizer steps)",
    "task_source": "few-shot training cases: the task source (name, image shape, classes per split, the splits)",
    "val_accuracy_best": "few-shot training cases: the best validation accuracy of the run",
    "val_accuracy_final": "few-shot training cases: the validation accuracy after the last outer step",
    "test_accuracy": "few-shot training cases: query accuracy on test episodes after fine_tune_steps of adaptation",
    "test_loss": "few-shot training cases: query loss on those test episodes",
    "eval_seconds": "few-shot training cases: seconds spent in validation and test (outside wall_time_s)",
    "cg_truncated_steps": (
        "few-shot training cases: outer steps whose CG met non-positive curvature (truncated there with "
        "cg_breakdown = 'stop', gone through with 'continue')"
    ),
    # provenance
    "case_wall_s": "seconds the case took in its worker, set-up and every instrument pass included (for ETAs)",
    "metabench_version": "installed metabench version",
    "git_commit": "git commit of the metabench checkout (+dirty), null outside git",
    "torch_version": "torch.__version__",
    "machine": "machine description (dict)",
    "timestamp": "UTC time the record was written (ISO 8601)",
}

#: fields that differ between two runs of one case on one machine (timings, RSS and NVML samples, where and
#: when it ran); every other field of a record is a function of the case and the machine: the same whichever
#: executor ran it (``tests/test_executors.py`` checks exactly that)
RUN_DEPENDENT_FIELDS = frozenset(
    {
        "time_median_s",
        "time_iqr_s",
        "time_runs",
        "rss_peak_bytes",
        "rss_peak_delta_bytes",
        "nvml_peak_bytes",
        "case_wall_s",
        "compile_s",
        "total_wall_time_s",
        "eval_seconds",
        "timestamp",
        "executor",
        "worker",
        "gpu",
    }
)


def comparable(record: dict) -> dict:
    """``record`` without its run-dependent fields (and a training trajectory without its wall times)."""
    out = {k: v for k, v in record.items() if k not in RUN_DEPENDENT_FIELDS}
    if isinstance(out.get("trajectory"), dict):
        out["trajectory"] = {k: v for k, v in out["trajectory"].items() if not k.endswith("wall_time_s")}
    return out


REQUIRED_FIELDS = ("schema_version", "case_id", "status")  # what makes a JSON object a record

_BOM = b"\xef\xbb\xbf"


class StoreWarning(UserWarning):
    """A line of a results store was set aside (or a torn fragment moved); the message says where and why."""


class ReadProblem(NamedTuple):
    """One thing set aside while reading a store: ``str()`` gives ``path:lineno: reason``.

    ``lineno`` is 1-based; it is None for a problem of the whole file (records of another schema version).
    """

    path: str
    lineno: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.lineno is None else f"{self.path}:{self.lineno}: {self.reason}"


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


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _decode(raw: bytes):
    """``(value, None)`` for a JSON line, ``(None, reason)`` for a bad one; a blank line gives ``(None, None)``."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    if not text.strip():
        return None, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} (column {exc.colno})"


def _missing(record: dict) -> list[str]:
    return [k for k in REQUIRED_FIELDS if record.get(k) is None or record.get(k) == ""]


def _version_key(value):
    return value if isinstance(value, (int, float, str, bool)) else json.dumps(value)


def _versions_message(versions: collections.Counter) -> str:
    """What a reader says of the records of other schema versions in one file (the file's path goes first)."""
    parts = [f"{n} record{'s' if n != 1 else ''} of schema_version {v}" for v, n in versions.most_common()]
    return (
        f"{', '.join(parts)} skipped; this metabench reads version {SCHEMA_VERSION}: re-run the sweep into a new --out"
    )


class _Scan:
    """Parse state of one store file, fed its bytes in order: offset and line number reached, case ids seen."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0  # bytes parsed so far; always just after a newline
        self.lineno = 0  # lines parsed so far
        self.ids: dict[str, int] = {}  # case id -> line of its (first) record
        self.versions: collections.Counter = collections.Counter()  # other schema versions -> records

    def feed(self, data: bytes, *, final: bool = False) -> tuple[list[dict], list[ReadProblem]]:
        """Parse the complete lines of ``data`` (the bytes from ``offset`` on); with ``final`` also a last line
        without its newline when it is JSON (else it is a torn write and ignored)."""
        end = data.rfind(b"\n") + 1
        records: list[dict] = []
        problems: list[ReadProblem] = []
        for raw in data[:end].split(b"\n")[:-1]:
            self.lineno += 1
            self._line(raw, records, problems)
        self.offset += end
        if final and end < len(data):
            value, reason = _decode(data[end:])
            if reason is None and value is not None:
                self._line(data[end:], records, problems, lineno=self.lineno + 1)
        return records, problems

    def _line(self, raw: bytes, records: list, problems: list, lineno: int | None = None) -> None:
        lineno = self.lineno if lineno is None else lineno
        value, reason = _decode(raw)
        if reason is None and value is None:
            return  # a blank line
        if reason is None and not isinstance(value, dict):
            reason = f"JSON but not a record ({_kind(value)})"
        elif reason is None and _missing(value):
            reason = f"a record without {'/'.join(_missing(value))}"
        elif reason is None and not isinstance(value["case_id"], str):
            reason = f"a record whose case_id is not a string ({_kind(value['case_id'])})"
        if reason is not None:
            problems.append(ReadProblem(str(self.path), lineno, reason))
            return
        if value["schema_version"] != SCHEMA_VERSION:
            self.versions[_version_key(value["schema_version"])] += 1
            return
        cid = value["case_id"]
        if cid in self.ids:
            first = self.ids[cid]
            problems.append(
                ReadProblem(str(self.path), lineno, f"case_id {cid} again (first at line {first}): kept the first")
            )
            return
        self.ids[cid] = lineno
        records.append(value)


def _report(problems: Iterable[ReadProblem], into: list | None, warn: bool, stacklevel: int = 3) -> None:
    for problem in problems:
        if into is not None:
            into.append(problem)
        if warn:
            warnings.warn(str(problem), StoreWarning, stacklevel=stacklevel)


_GZIP_SUFFIX = ".gz"
_GZIP_CHUNK = 1 << 16


def _gunzip(data: bytes) -> tuple[bytes, str | None]:
    """The bytes of a gzip file (all its members) and None, or the bytes decoded before a fault and why.

    Decompressed a chunk at a time, so the bytes before a corrupt or missing part are kept.
    """
    out: list[bytes] = []
    rest = data
    while rest:
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # a gzip header and trailer
        consumed = 0
        try:
            while consumed < len(rest) and not stream.eof:
                out.append(stream.decompress(rest[consumed : consumed + _GZIP_CHUNK]))
                consumed += _GZIP_CHUNK
        except zlib.error as exc:
            return b"".join(out), f"not a readable gzip stream ({exc})"
        if not stream.eof:
            out.append(stream.flush())
            return b"".join(out), "the gzip stream ends early (a truncated file?)"
        rest = stream.unused_data + rest[consumed:]  # the next member, if any
        if rest and not rest.strip(b"\0"):  # zero padding after the last member (tape, some tools)
            break
    return b"".join(out), None


def _store_bytes(path: Path) -> tuple[bytes, str | None]:
    """The JSON Lines bytes of a store file, decompressed for ``*.gz``; and why the rest could not be read."""
    data = path.read_bytes()
    return _gunzip(data) if path.name.endswith(_GZIP_SUFFIX) else (data, None)


def read_records(path: str | os.PathLike, *, problems: list | None = None, warn: bool = True) -> list[dict]:
    """The records of a JSON Lines store in write order, each case id once, without writing.

    Lines that are not records of this schema version are set aside: each is reported as a ``StoreWarning``
    (unless ``warn`` is false) and, when ``problems`` is a list, appended to it as a ``ReadProblem``. A torn
    last line (a writer mid-append) is ignored silently; a complete last record without its newline is read.

    A ``*.jsonl.gz`` file is decompressed and read line by line the same way. Nobody appends to a compressed
    store, so there a last line that is not JSON is reported rather than ignored, and so is a gzip stream that
    is corrupt or ends early (the lines before the fault are read).
    """
    path = Path(path)
    if not path.exists():
        return []
    data, fault = _store_bytes(path)
    scan = _Scan(path)
    records, found = scan.feed(data, final=fault is None)
    compressed = path.name.endswith(_GZIP_SUFFIX)
    if compressed and fault is None and scan.offset < len(data) and _decode(data[scan.offset :])[1] is not None:
        found.append(ReadProblem(str(path), scan.lineno + 1, "an unfinished last line in a compressed store"))
    if fault is not None:
        found.append(ReadProblem(str(path), None, f"{fault}; read the {scan.lineno} complete lines before it"))
    if scan.versions:
        found.append(ReadProblem(str(path), None, _versions_message(scan.versions)))
    _report(found, problems, warn)
    return records


class ResultsStore:
    """Append-only JSON Lines file of records, one per case id, shared safely by concurrent writers.

    Opening takes the lock once: it reads the file, refuses (ValueError) a store holding records of another
    schema version, and repairs a last line without its newline (kept if complete, else moved to
    ``<store>.rejected``). ``refresh()`` picks up, without the lock, what other writers appended since;
    ``append`` writes a record under the lock only if its case id is still absent.
    """

    def __init__(self, path: str | os.PathLike, *, lock_timeout: float = 120.0):
        from filelock import FileLock

        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self.problems: list[ReadProblem] = []  # lines set aside so far, in file order
        self.lock_timeout = lock_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.lock_path), timeout=lock_timeout)
        self._scan = _Scan(self.path)
        with self._locked():
            self.refresh()
            self._refuse_other_versions()
            self._repair_tail()
            self._refuse_other_versions()

    # reading

    def refresh(self) -> int:
        """Read the complete lines appended since this store last looked; return how many new records it found.

        Cheap (one ``stat`` when nothing changed) and lock-free: a line being written is not read until whole.
        """
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if size < self._scan.offset:  # the file was replaced or cut below what was read: read it again
            self._scan = _Scan(self.path)
        if size == self._scan.offset:
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(self._scan.offset)
            data = fh.read(size - self._scan.offset)
        records, found = self._scan.feed(data)
        _report(found, self.problems, warn=True)
        return len(records)

    def records(self) -> list[dict]:
        """Every record in the file, in write order (read afresh, each case id once)."""
        return read_records(self.path, warn=False)

    def __contains__(self, cid: str) -> bool:
        """Whether the case id was in the store at the last ``refresh`` (or write by this store)."""
        return cid in self._scan.ids

    def __len__(self) -> int:
        return len(self._scan.ids)

    # writing

    def append(self, record: dict) -> bool:
        """Write one record and fsync it, unless its case id is already in the store; True if it was written.

        Under the lock, lines other writers appended are read first, so a case written by any process is never
        written again (False). A record lacking case_id, schema_version or status, or of another schema version,
        is refused (ValueError), as is any append to a store into which records of another version were written.
        """
        missing = _missing(record)
        if missing:
            raise ValueError(f"a record needs {', '.join(REQUIRED_FIELDS)}; this one lacks {'/'.join(missing)}")
        if record["schema_version"] != SCHEMA_VERSION:
            raise ValueError(
                f"record {record['case_id']} has schema_version {record['schema_version']}; "
                f"{self.path} holds version {SCHEMA_VERSION}"
            )
        cid = record["case_id"]
        if not isinstance(cid, str):
            raise ValueError(f"case_id must be a string, not {cid!r}")
        line = (json.dumps(_clean(record), allow_nan=False) + "\n").encode("utf-8")
        with self._locked():
            self.refresh()
            self._repair_tail()
            self._refuse_other_versions()
            if cid in self._scan.ids:
                return False
            self._write(self.path, line)
            self._scan.offset += len(line)
            self._scan.lineno += 1
            self._scan.ids[cid] = self._scan.lineno
        return True

    def _locked(self):
        from filelock import Timeout

        try:
            return self._lock.acquire()
        except Timeout:
            raise TimeoutError(
                f"{self.lock_path} stayed locked for {self.lock_timeout:g} s: another writer holds it"
            ) from None

    def _refuse_other_versions(self) -> None:
        if self._scan.versions:
            raise ValueError(f"{self.path}: {_versions_message(self._scan.versions)}")

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Append ``data`` and fsync; if anything (a KeyboardInterrupt) stops it, cut the file back and re-raise."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)
                os.fsync(fd)
                raise
        finally:
            os.close(fd)

    def _repair_tail(self) -> None:
        """Under the lock: end a complete last line with its newline, or move a torn one to ``<store>.rejected``."""
        while True:
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                return
            offset = self._scan.offset
            if size <= offset:
                return
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                tail = fh.read(size - offset)
            if b"\n" in tail:  # complete lines arrived from a writer that does not lock: read them first
                self.refresh()
                continue
            value, reason = _decode(tail)
            if reason is None:  # complete JSON (or blank) lacking only its newline: keep it
                self._write(self.path, b"\n")
                self.refresh()
                return
            lineno = self._scan.lineno + 1
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            header = (
                f"# {len(tail)} bytes cut from {self.path}:{lineno} (byte {offset}) at {stamp} by pid {os.getpid()}: "
                f"an unfinished last line (a writer killed mid-write?), {reason}\n"
            )
            self._write(self.rejected_path, header.encode("utf-8") + tail + b"\n")
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            problem = ReadProblem(
                str(self.path), lineno, f"an unfinished last line ({len(tail)} bytes) moved to {self.rejected_path}"
            )
            _report([problem], self.problems, warn=True)
            return


def _store_files(folder: Path) -> tuple[list[Path], list[ReadProblem]]:
    """The stores in ``folder`` (``*.jsonl`` and ``*.jsonl.gz``, by name), and the compressed copies left out.

    Where both ``NAME.jsonl`` and ``NAME.jsonl.gz`` are there, only the plain file is read (reading both
    would count each record twice); the compressed one is reported.
    """
    plain = {p.name for p in folder.glob("*.jsonl") if p.is_file()}
    files, skipped = [], []
    for p in sorted(list(folder.glob("*.jsonl")) + list(folder.glob("*.jsonl.gz")), key=lambda p: p.name):
        if not p.is_file():
            continue
        if p.name.endswith(_GZIP_SUFFIX) and p.name[: -len(_GZIP_SUFFIX)] in plain:
            reason = f"not read: {p.name[: -len(_GZIP_SUFFIX)]} beside it holds the same store uncompressed"
            skipped.append(ReadProblem(str(p), None, reason))
            continue
        files.append(p)
    return files, skipped


def load_records(paths: str | os.PathLike | Iterable[str | os.PathLike], *, problems: list | None = None):
    """Records from JSON Lines files (or folders of ``*.jsonl`` and ``*.jsonl.gz``) as one pandas DataFrame.

    Each file is read as ``read_records`` reads it (each case id once per file, bad lines set aside with a
    warning and, when ``problems`` is a list, appended to it). A folder's stores are read in name order.
    """
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found, skipped = _store_files(p)
            files.extend(found)
            _report(skipped, problems, warn=True)
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"no results at {p}")
    rows = [r for f in files for r in read_records(f, problems=problems)]
    return pd.DataFrame(rows, columns=None if rows else list(RECORD_FIELDS))

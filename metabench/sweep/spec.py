"""Sweep specifications: blocks of grids over case parameters, expanded into cases.

A sweep is a name, ``defaults`` (one value per parameter) and a list of ``grid`` blocks (a list of
values per parameter). Each block is the cartesian product of its lists over the defaults; the
sweep is the union of its blocks, without duplicates. A case has three kinds of parameters:

- run parameters (``RUN_DEFAULTS``): algorithm, problem, device, dtype, seed, task_batch, theta,
  min_run_time (seconds of timed runs), threads (torch intra-op threads; None keeps torch's default),
  instruments (a list of "time", "memory", "flops"; None for all three; [] for none: the oracle counts and
  errors of one call only), truth ("auto": errors against the problem's truth; "skip": none, for a
  memory-only sweep on a network where the float64 references cost more than the measurements),
  mode (``"hypergradient"``: measure one hypergradient; ``"train"``: run ``metabench.train`` and
  keep the trajectory), and for training cases only (``TRAIN_DEFAULTS``) outer_steps, outer_lr
  (a float, or ``"auto"`` = 1/L_F, L_F the largest eigenvalue of the meta-objective's Hessian)
  and optimizer (``"sgd"`` or ``"adam"``); few-shot training cases (meta-training to accuracy,
  ``metabench.meta_train``) take ``ACCURACY_TRAIN_DEFAULTS`` too: eval_every, eval_tasks, fine_tune_steps,
  test_tasks (and ``task_batch`` is their meta-batch of fresh episodes, 4 when None);
- the problem's generator parameters (e.g. dim, kappa, lam for linear_meta_regression);
- the algorithm's options (e.g. inner_steps, cg_iters).
A parameter the case's problem or algorithm does not take is dropped (cg_iters means nothing to
maml, lam nothing to quadratic_bilevel), so one block can sweep several algorithms and problems;
a parameter that no run, problem or algorithm takes is an error. Likewise the training parameters
are dropped from a hypergradient case, and ``mode = "hypergradient"`` (the default) is left out of
the hash, so every hypergradient case keeps the ``case_id`` it had before training cases existed.

``inner_lr = "auto"`` means 1/L and ``momentum = "auto"`` means (sqrt(kappa) - 1)/(sqrt(kappa) + 1),
both read off the generated problem. Cases that cannot exist (truncate > inner_steps) are dropped.
Sweeps load from Python dicts, TOML files, or YAML files (with PyYAML installed).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from metabench.algorithms import available_algorithms
from metabench.algorithms.registry import algorithm_class
from metabench.measure.instruments import INSTRUMENTS
from metabench.problems import PROBLEMS, available_problems, problem_params
from metabench.results import case_id
from metabench.sweep.training import ACCURACY_TRAIN_DEFAULTS, trains_to_accuracy

__all__ = ["MODES", "RUN_DEFAULTS", "TRAIN_DEFAULTS", "Sweep", "case_identity", "normalise_case"]

RUN_DEFAULTS: dict[str, Any] = {
    "algorithm": "maml",
    "problem": "linear_meta_regression",
    "device": "cpu",
    "dtype": "float64",
    "seed": 0,
    "task_batch": None,
    "theta": "random",
    "min_run_time": 0.1,
    "threads": None,
    "mode": "hypergradient",
    "instruments": None,
    "truth": "auto",
}
#: Run parameters added after the first records were written: left out of the case_id at their default
#: value, so stores written before them keep resuming.
_LATER_RUN_KEYS = ("mode", "instruments", "truth")
#: Run parameters of training cases (``mode = "train"``) only; dropped from hypergradient cases.
TRAIN_DEFAULTS: dict[str, Any] = {"outer_steps": 50, "outer_lr": "auto", "optimizer": "sgd"}
MODES = ("hypergradient", "train")
AUTO = "auto"
DTYPES = ("float32", "float64")
THETAS = ("random", "zeros")
#: "auto": judge every record against the truth its problem has; "skip": no errors (a memory-only sweep on a
#: network, where the float64 references would cost more than the measurements)
TRUTHS = ("auto", "skip")
#: the longest min_run_time a case may ask for (seconds)
MAX_RUN_TIME = 3600.0


@cache
def _problem_params(problem: str) -> dict[str, Any]:
    """The generator's keyword parameters (except seed and dtype, which are run parameters) and defaults."""
    return problem_params(PROBLEMS.get(problem))


def _option_names(algorithm: str) -> frozenset[str]:
    return frozenset(algorithm_class(algorithm).options_spec)


def _all_option_names() -> frozenset[str]:
    return frozenset().union(*(_option_names(a) for a in available_algorithms()))


def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _run_problems(run: dict[str, Any]) -> list[str]:
    """What is wrong with the run parameters' values (an empty list when nothing is)."""
    problems = []
    if not isinstance(run["device"], str) or not run["device"]:
        problems.append(f"device must be a torch device name such as 'cpu' or 'cuda:0', got {run['device']!r}")
    if run["dtype"] not in DTYPES:
        problems.append(f"dtype must be one of {list(DTYPES)}, got {run['dtype']!r}")
    if not _is_int(run["seed"], 0):
        problems.append(f"seed must be an integer >= 0, got {run['seed']!r}")
    if run["task_batch"] is not None and not _is_int(run["task_batch"], 1):
        problems.append(f"task_batch must be None or an integer >= 1, got {run['task_batch']!r}")
    if run["theta"] not in THETAS:
        problems.append(f"theta must be one of {list(THETAS)}, got {run['theta']!r}")
    if run["threads"] is not None and not _is_int(run["threads"], 1):
        problems.append(f"threads must be None or an integer >= 1, got {run['threads']!r}")
    if "min_run_time" in run:
        t = run["min_run_time"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t <= MAX_RUN_TIME):
            problems.append(f"min_run_time must be a number of seconds in (0, {MAX_RUN_TIME:g}], got {t!r}")
    if run["truth"] not in TRUTHS:
        problems.append(f"truth must be one of {list(TRUTHS)}, got {run['truth']!r}")
    chosen = run["instruments"]
    if chosen is not None:
        if not isinstance(chosen, list) or not all(isinstance(i, str) for i in chosen):
            problems.append(f"instruments must be None or a list of names from {list(INSTRUMENTS)}, got {chosen!r}")
        elif set(chosen) - set(INSTRUMENTS):
            unknown = sorted(set(chosen) - set(INSTRUMENTS))
            problems.append(f"unknown instrument(s) {unknown}; choose from {list(INSTRUMENTS)}")
    return problems


def _name(kind: str, value: Any, available) -> str:
    if not isinstance(value, str) or value not in available:
        raise ValueError(f"unknown {kind} {value!r}; available: {sorted(available)}")
    return value


def normalise_case(flat: dict[str, Any]) -> dict[str, Any] | None:
    """A structured case from flat parameters, or None if the case cannot exist.

    Raises ValueError for a parameter that neither the run, the problem nor the algorithm takes, for an
    unknown algorithm, problem or mode, and for a problem parameter left without a value: the sweep itself
    is wrong. A run parameter with a bad value (seed = 1.5, threads = 0, ...) makes an *invalid* case
    instead: it keeps its id and carries ``"invalid": reason``, and its record says so without running.
    ``instruments`` given as one name (``"memory"``) means a list of that name.
    """
    run = {k: flat.get(k, v) for k, v in RUN_DEFAULTS.items()}
    if isinstance(run["instruments"], str):  # one instrument by name, not a list of its letters
        run["instruments"] = [run["instruments"]]
    if not isinstance(run["mode"], str) or run["mode"] not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {run['mode']!r}")
    _name("algorithm", run["algorithm"], available_algorithms())
    if not isinstance(run["problem"], str):
        raise ValueError(f"unknown problem {run['problem']!r}; available: {sorted(available_problems())}")
    PROBLEMS.get(run["problem"])  # unknown: a ValueError listing the names; a plugin that failed to load: why
    if run["mode"] == "train":  # no timed runs: min_run_time means nothing to a training case
        del run["min_run_time"]
        run.update({k: flat.get(k, v) for k, v in TRAIN_DEFAULTS.items()})
        if trains_to_accuracy(PROBLEMS.get(run["problem"])):
            run.update({k: flat.get(k, v) for k, v in ACCURACY_TRAIN_DEFAULTS.items()})
    problem_params = _problem_params(run["problem"])
    options = _option_names(run["algorithm"])
    all_options = _all_option_names()
    all_problem_params = set().union(*(_problem_params(p) for p in available_problems()))
    training = set(TRAIN_DEFAULTS) | set(ACCURACY_TRAIN_DEFAULTS)
    unknown = set(flat) - set(RUN_DEFAULTS) - training - all_problem_params - all_options
    if unknown:
        raise ValueError(
            f"unknown sweep parameter(s) {sorted(unknown)}; run parameters: {sorted(RUN_DEFAULTS)}, "
            f"training parameters: {sorted(training)}, "
            f"problem parameters: {sorted(all_problem_params)}, algorithm options: {sorted(all_options)}"
        )
    params = {}
    for name, default in problem_params.items():
        value = flat.get(name, default)
        if value is inspect.Parameter.empty:
            raise ValueError(f"sweep parameter {name!r} is required for problem {run['problem']!r}")
        params[name] = value
    opts = {k: v for k, v in flat.items() if k in options}
    steps, truncate = opts.get("inner_steps"), opts.get("truncate")
    if _is_int(steps, 0) and _is_int(truncate, 0) and truncate > steps:
        return None
    case = {**run, "options": opts, "problem_params": params}
    problems = _run_problems(run)
    if problems:
        case["invalid"] = "; ".join(problems)
    return case


def case_identity(case: dict[str, Any]) -> str:
    """The ``case_id`` of a normalised case: the hash of its parameters, with ``mode`` and
    ``instruments`` left out at their defaults, and so are the problem's ``later_params`` (so cases keep the
    ids they had before those existed).
    The hash tells types apart: seed 1, 1.0 and true are three cases (the last two invalid)."""
    kept = {k: v for k, v in case.items() if k != "invalid" and not (k in _LATER_RUN_KEYS and v == RUN_DEFAULTS[k])}
    later = _later_problem_params(case.get("problem"))
    if later and isinstance(case.get("problem_params"), dict):
        params = case["problem_params"]
        kept["problem_params"] = {k: v for k, v in params.items() if not (k in later and v == later[k])}
    return case_id(kept)


def _later_problem_params(problem) -> dict[str, Any]:
    """The problem's parameters added after records of it existed (``later_params``: name -> default)."""
    try:
        cls = available_problems()[problem]
    except (KeyError, TypeError):
        return {}
    return dict(getattr(cls, "later_params", {}))


@dataclass
class Sweep:
    """A named list of grid blocks over ``defaults``."""

    name: str
    grid: list[dict[str, list]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: where to run it (``[executor]`` in a sweep file: name and options, see ``sweep.executors``); flags win
    executor: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"sweep 'name' must be a string, got {self.name!r} ({_kind(self.name)})")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"sweep name must be a non-empty word (letters, digits, - and _), got {self.name!r}")
        if not isinstance(self.grid, list) or not self.grid:
            hint = " (in TOML, write [[grid]] for each block, not [grid])" if isinstance(self.grid, dict) else ""
            raise ValueError(
                "grid must be a non-empty list of blocks (dicts of parameter -> list of values), "
                f"got {_kind(self.grid)}{hint}"
            )
        if not isinstance(self.defaults, dict):
            raise ValueError(f"defaults must be a mapping of parameter -> value, got {_kind(self.defaults)}")
        for key in self.defaults:
            if not isinstance(key, str):
                raise ValueError(f"defaults: parameter names must be strings, got {key!r}")
        for i, block in enumerate(self.grid):
            if not isinstance(block, dict):
                raise ValueError(f"grid[{i}] must be a dict of parameter -> list of values, got {_kind(block)}")
            for key, values in block.items():
                if not isinstance(key, str):
                    raise ValueError(f"grid[{i}]: parameter names must be strings, got {key!r}")
                if not isinstance(values, list) or not values:
                    raise ValueError(f"grid[{i}].{key} must be a non-empty list, got {values!r}")

    def cases(self) -> list[dict[str, Any]]:
        """Every case of the sweep, in grid order, each once, with its ``case_id``."""
        seen, out = set(), []
        for block in self.grid:
            keys = list(block)
            for values in itertools.product(*(block[k] for k in keys)):
                case = normalise_case({**self.defaults, **dict(zip(keys, values))})
                if case is None:
                    continue
                cid = case_identity(case)
                if cid not in seen:
                    seen.add(cid)
                    out.append({**case, "sweep": self.name, "case_id": cid})
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Sweep:
        """A sweep from a mapping with ``name`` and ``grid`` (and optionally ``defaults``, ``description``)."""
        if not isinstance(spec, dict):
            raise ValueError(f"a sweep must be a mapping with 'name' and 'grid', got {_kind(spec)}")
        unknown = set(spec) - {"name", "grid", "defaults", "description", "executor"}
        if unknown:
            raise ValueError(
                f"unknown sweep key(s) {sorted(unknown, key=str)}; accepted: name, description, defaults, grid, "
                "executor"
            )
        executor = spec.get("executor", {})
        if not isinstance(executor, dict):
            raise ValueError(f"executor must be a mapping (name = ..., workers = ..., ...), got {_kind(executor)}")
        if "name" not in spec or "grid" not in spec:
            missing = " and ".join(repr(k) for k in ("name", "grid") if k not in spec)
            raise ValueError(f"a sweep needs 'name' and 'grid' (a list of blocks); {missing} missing")
        defaults = spec.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ValueError(f"defaults must be a mapping of parameter -> value, got {_kind(defaults)}")
        return cls(
            name=spec["name"],
            grid=spec["grid"],
            defaults=dict(defaults),
            description=spec.get("description", ""),
            executor=dict(executor),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Sweep:
        """Load a sweep from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file.

        Every problem with the file is a ValueError naming it (a missing file a FileNotFoundError).
        """
        path = Path(path)
        if path.suffix not in (".toml", ".yaml", ".yml"):
            raise ValueError(f"sweep file must end in .toml, .yaml or .yml, got {path.name}")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"sweep file {path} not found") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise ValueError(
                f"{path} is not UTF-8 text: byte {data[err.start]:#04x} at offset {err.start} (line {line}) "
                "cannot be decoded"
            ) from None
        if text.startswith("\ufeff"):  # a byte-order mark some editors write
            text = text[1:]
        if not text.strip():
            raise ValueError(f"{path} is empty")
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            try:
                spec = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path} is not valid TOML: {err}") from None
        else:
            try:
                import yaml
            except ModuleNotFoundError:
                raise ValueError("reading a YAML sweep needs PyYAML (pip install pyyaml); or use TOML") from None
            try:
                spec = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"{path} is not valid YAML: {_yaml_message(err)}") from None
        if spec is None or spec == {}:
            raise ValueError(f"{path} is empty (it holds only comments)")
        if not isinstance(spec, dict):
            raise ValueError(f"sweep file {path} must hold a mapping with 'name' and 'grid', got {_kind(spec)}")
        try:
            return cls.from_dict(spec)
        except ValueError as err:
            raise ValueError(f"sweep file {path}: {err}") from None


def _kind(value: Any) -> str:
    """'a list', 'a string', ... : what a value is, in words."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    words = {str: "a string", list: "a list", dict: "a mapping", tuple: "a list"}
    for kind, word in words.items():
        if isinstance(value, kind):
            return word
    return f"a {type(value).__name__}"


def _yaml_message(err: Exception) -> str:
    """One line from a PyYAML error: what is wrong and where (1-based line and column)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem is None:
        return " ".join(str(err).split())
    context = getattr(err, "context", None)
    text = f"{context}, {problem}" if context else problem
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return text

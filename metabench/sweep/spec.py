"""Sweep specifications: blocks of grids over case parameters, expanded into cases.

A sweep is a name, ``defaults`` (one value per parameter) and a list of ``grid`` blocks (a list of
values per parameter). Each block is the cartesian product of its lists over the defaults; the
sweep is the union of its blocks, without duplicates. A case has three kinds of parameters:

- run parameters (``RUN_DEFAULTS``): algorithm, problem, device, dtype, seed, task_batch, theta,
  min_run_time (seconds of timed runs), threads (torch intra-op threads; None keeps torch's default),
  instruments (a list of "time", "memory", "flops"; None for all three),
  mode (``"hypergradient"``: measure one hypergradient; ``"train"``: run ``metabench.train`` and
  keep the trajectory), and for training cases only (``TRAIN_DEFAULTS``) outer_steps, outer_lr
  (a float, or ``"auto"`` = 1/L_F, L_F the largest eigenvalue of the meta-objective's Hessian)
  and optimizer (``"sgd"`` or ``"adam"``);
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
from metabench.problems import available_problems
from metabench.results import case_id

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
}
#: Run parameters added after the first records were written: left out of the case_id at their default
#: value, so stores written before them keep resuming.
_LATER_RUN_KEYS = ("mode", "instruments")
#: Run parameters of training cases (``mode = "train"``) only; dropped from hypergradient cases.
TRAIN_DEFAULTS: dict[str, Any] = {"outer_steps": 50, "outer_lr": "auto", "optimizer": "sgd"}
MODES = ("hypergradient", "train")
AUTO = "auto"


@cache
def _problem_params(problem: str) -> dict[str, Any]:
    """The generator's keyword parameters (except seed and dtype, which are run parameters) and defaults."""
    try:
        cls = available_problems()[problem]
    except KeyError:
        raise ValueError(f"unknown problem {problem!r}; available: {sorted(available_problems())}") from None
    params = inspect.signature(cls.generate).parameters
    return {k: p.default for k, p in params.items() if k not in ("seed", "dtype")}


def _option_names(algorithm: str) -> frozenset[str]:
    return frozenset(algorithm_class(algorithm).options_spec)


def _all_option_names() -> frozenset[str]:
    return frozenset().union(*(_option_names(a) for a in available_algorithms()))


def normalise_case(flat: dict[str, Any]) -> dict[str, Any] | None:
    """A structured case from flat parameters, or None if the case cannot exist.

    Raises ValueError for a parameter that neither the run, the problem nor the algorithm takes,
    and for a problem parameter left without a value.
    """
    run = {k: flat.get(k, v) for k, v in RUN_DEFAULTS.items()}
    if run["mode"] not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {run['mode']!r}")
    if run["mode"] == "train":  # no timed runs: min_run_time means nothing to a training case
        del run["min_run_time"]
        run.update({k: flat.get(k, v) for k, v in TRAIN_DEFAULTS.items()})
    problem_params = _problem_params(run["problem"])
    options = _option_names(run["algorithm"])
    all_options = _all_option_names()
    all_problem_params = set().union(*(_problem_params(p) for p in available_problems()))
    unknown = set(flat) - set(RUN_DEFAULTS) - set(TRAIN_DEFAULTS) - all_problem_params - all_options
    if unknown:
        raise ValueError(
            f"unknown sweep parameter(s) {sorted(unknown)}; run parameters: {sorted(RUN_DEFAULTS)}, "
            f"training parameters: {sorted(TRAIN_DEFAULTS)}, "
            f"problem parameters: {sorted(all_problem_params)}, algorithm options: {sorted(all_options)}"
        )
    params = {}
    for name, default in problem_params.items():
        value = flat.get(name, default)
        if value is inspect.Parameter.empty:
            raise ValueError(f"sweep parameter {name!r} is required for problem {run['problem']!r}")
        params[name] = value
    opts = {k: v for k, v in flat.items() if k in options}
    if "truncate" in opts and "inner_steps" in opts and opts["truncate"] > opts["inner_steps"]:
        return None
    return {**run, "options": opts, "problem_params": params}


def case_identity(case: dict[str, Any]) -> str:
    """The ``case_id`` of a normalised case: the hash of its parameters, with ``mode`` and
    ``instruments`` left out at their defaults (so cases keep the ids they had before those existed)."""
    return case_id({k: v for k, v in case.items() if not (k in _LATER_RUN_KEYS and v == RUN_DEFAULTS[k])})


@dataclass
class Sweep:
    """A named list of grid blocks over ``defaults``."""

    name: str
    grid: list[dict[str, list]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not self.name or not str(self.name).replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"sweep name must be a non-empty word (letters, digits, - and _), got {self.name!r}")
        if not isinstance(self.grid, list) or not self.grid:
            raise ValueError("grid must be a non-empty list of blocks (dicts of parameter -> list of values)")
        for i, block in enumerate(self.grid):
            if not isinstance(block, dict):
                raise ValueError(f"grid[{i}] must be a dict of parameter -> list of values")
            for key, values in block.items():
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
        unknown = set(spec) - {"name", "grid", "defaults", "description"}
        if unknown:
            raise ValueError(f"unknown sweep key(s) {sorted(unknown)}; accepted: name, description, defaults, grid")
        if "name" not in spec or "grid" not in spec:
            raise ValueError("a sweep needs 'name' and 'grid' (a list of blocks)")
        return cls(
            name=spec["name"],
            grid=spec["grid"],
            defaults=dict(spec.get("defaults", {})),
            description=spec.get("description", ""),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Sweep:
        """Load a sweep from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            spec = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise ValueError("reading a YAML sweep needs PyYAML (pip install pyyaml); or use TOML") from None
            spec = yaml.safe_load(text)
        else:
            raise ValueError(f"sweep file must end in .toml, .yaml or .yml, got {path.name}")
        return cls.from_dict(spec)

"""Seeded, cached builders shared by the suites: every case goes through metabench's own sweep API."""

from __future__ import annotations

import os

import torch

from metabench.sweep import normalise_case, prepare_case, run_case
from metabench.sweep.sizes import problem_case

# One intra-op thread: the problems are small dense matrices, where threads only add contention
# (and the sweep presets measure the same way).
torch.set_num_threads(1)

#: METABENCH_ASV_TINY=1 shrinks every grid to one small point per axis (CI's discover-and-run-once check).
TINY = os.environ.get("METABENCH_ASV_TINY") == "1"


def grid(full: tuple, tiny: tuple) -> tuple:
    """The parameter grid of a suite: ``full``, or ``tiny`` under METABENCH_ASV_TINY=1."""
    return tiny if TINY else full


# The standard sizes of the presets (metabench.sweep.sizes): a full asv run stays within minutes on 2 cores.
LINEAR = problem_case("linear_meta_regression")
BILEVEL = problem_case("quadratic_bilevel")
RUN = {"inner_lr": "auto", "threads": 1, "seed": 0}


def case(**params) -> dict:
    """A normalised case from flat parameters (problem defaults + run defaults + ``params``)."""
    base = LINEAR if params.get("problem", LINEAR["problem"]) == LINEAR["problem"] else BILEVEL
    built = normalise_case({**base, **RUN, **params})
    if built is None:
        raise NotImplementedError(f"no such case: {params}")
    return built


def prepared(**params):
    """The zero-argument hypergradient call of a case (problem generated once per process)."""
    return prepare_case(case(**params))


def record(**params) -> dict:
    """The case's metabench record without timing (memory, FLOPs, counts, errors)."""
    result = run_case(case(**params), instruments=("memory", "flops"))
    if result["status"] != "ok":
        raise RuntimeError(f"case {params} ended {result['status']}: {result['error']}")
    return result

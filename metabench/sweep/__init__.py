"""Sweeps: grids of cases (``spec``), named presets, running one case (``case``) and many (``runner``)."""

from metabench.sweep.case import (
    PreparedCase,
    build_problem,
    inner_grad_peak_bytes,
    prepare_case,
    run_case,
    training_params,
)
from metabench.sweep.presets import PRESETS, get_preset
from metabench.sweep.runner import SweepSummary, run_sweep
from metabench.sweep.spec import RUN_DEFAULTS, TRAIN_DEFAULTS, Sweep, case_identity, normalise_case

__all__ = [
    "PRESETS",
    "RUN_DEFAULTS",
    "TRAIN_DEFAULTS",
    "PreparedCase",
    "Sweep",
    "SweepSummary",
    "build_problem",
    "case_identity",
    "get_preset",
    "inner_grad_peak_bytes",
    "normalise_case",
    "prepare_case",
    "run_case",
    "run_sweep",
    "training_params",
]

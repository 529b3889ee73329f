"""Sweeps: grids of cases (``spec``), named presets, running one case (``case``, ``training``) and many (``runner``)."""

from metabench.sweep.case import (
    PreparedCase,
    build_problem,
    inner_grad_peak_bytes,
    prepare_case,
    run_case,
)
from metabench.sweep.presets import PRESETS, get_preset
from metabench.sweep.runner import SweepSummary, run_sweep
from metabench.sweep.spec import RUN_DEFAULTS, TRAIN_DEFAULTS, Sweep, case_identity, normalise_case
from metabench.sweep.training import TRAIN_DIVERGENCE_FACTOR, train_record, training_params

__all__ = [
    "PRESETS",
    "RUN_DEFAULTS",
    "TRAIN_DEFAULTS",
    "TRAIN_DIVERGENCE_FACTOR",
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
    "train_record",
    "training_params",
]

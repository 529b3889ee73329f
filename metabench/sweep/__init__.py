"""Sweeps: grids of cases (``spec``), named presets, running one case (``case``) and many (``runner``)."""

from metabench.sweep.case import PreparedCase, build_problem, prepare_case, run_case
from metabench.sweep.presets import PRESETS, get_preset
from metabench.sweep.runner import SweepSummary, run_sweep
from metabench.sweep.spec import RUN_DEFAULTS, Sweep, normalise_case

__all__ = [
    "PRESETS",
    "RUN_DEFAULTS",
    "PreparedCase",
    "Sweep",
    "SweepSummary",
    "build_problem",
    "get_preset",
    "normalise_case",
    "prepare_case",
    "run_case",
    "run_sweep",
]

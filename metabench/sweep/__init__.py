"""Sweeps: grids of cases (``spec``), named presets, running one case (``case``) and many (``runner``)."""

from metabench.sweep.case import build_problem, run_case
from metabench.sweep.presets import PRESETS, get_preset
from metabench.sweep.runner import SweepSummary, run_sweep
from metabench.sweep.spec import RUN_DEFAULTS, Sweep

__all__ = ["PRESETS", "RUN_DEFAULTS", "Sweep", "SweepSummary", "build_problem", "get_preset", "run_case", "run_sweep"]

"""Reports from stored records (tables, fits, figures); they never re-run a case."""

from metabench.report.build import build_report
from metabench.report.fitting import fit_power_law, least_compute, memory_per_step, table1
from metabench.report.summary import summary_markdown

__all__ = ["build_report", "fit_power_law", "least_compute", "memory_per_step", "summary_markdown", "table1"]

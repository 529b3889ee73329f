"""A plain summary of stored records: status counts and one Markdown table per sweep.

Reports never re-run anything: they read the tidy records alone. Record text is escaped by
``metabench.report.document.md_text`` wherever it goes into the Markdown.
"""

from __future__ import annotations

import re

import pandas as pd

from metabench.options import HEADLINE_OPTIONS, OPTIONS
from metabench.report.document import md_text

__all__ = ["summary_markdown"]

_COLUMNS = {
    "algorithm": "algorithm",
    **{name: OPTIONS[name].short for name in HEADLINE_OPTIONS if name != "inner_lr"},  # solver, K, T, CG, N
    "kappa": "kappa",
    "status": "status",
    "rel_error_exact": "rel. error",
    "hvps": "HVPs",
    "time_median_s": "time (ms)",
    "live_peak_bytes": "live peak (KiB)",
    "matmul_flops": "MFLOP",
}


def _format(column: str, value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if column == "rel_error_exact":
        return f"{value:.2e}"
    if column == "time_median_s":
        return f"{1e3 * value:.2f}"
    if column == "live_peak_bytes":
        return f"{value / 1024:.1f}"
    if column == "matmul_flops":
        return f"{value / 1e6:.3f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return md_text(value)


def _sweep_title(sweep) -> str:
    """A sweep name as inline code when it is a plain word (as sweep specs require), else escaped text."""
    text = str(sweep)
    return f"`{text}`" if re.fullmatch(r"[\w.-]+", text, flags=re.ASCII) else md_text(text)


def summary_markdown(records: pd.DataFrame, max_rows: int = 200) -> str:
    """Status counts and a table of the first ``max_rows`` records of each sweep, as Markdown."""
    if records.empty:
        return "# metabench results\n\nNo records.\n"
    lines = ["# metabench results", ""]
    for sweep, group in records.groupby("sweep", sort=False, dropna=False):
        counts = group["status"].value_counts().to_dict()
        by_status = ", ".join(f"{md_text(k)} {v}" for k, v in counts.items())
        lines += [f"## Sweep {_sweep_title(sweep)}", "", "Cases by status: " + by_status, ""]
        machine = group["machine"].iloc[0] if "machine" in group else None
        if isinstance(machine, dict):
            cpu, cores = md_text(machine.get("cpu_model")), md_text(machine.get("cpu_logical_cores"))
            torch, cuda = md_text(machine.get("torch_version")), md_text(machine.get("cuda_available"))
            lines += [f"Machine: {cpu}, {cores} cores, torch {torch}, CUDA available: {cuda}", ""]
        cols = [c for c in _COLUMNS if c in group]
        lines.append("| " + " | ".join(_COLUMNS[c] for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, row in group.head(max_rows).iterrows():
            lines.append("| " + " | ".join(_format(c, row[c]) for c in cols) + " |")
        if len(group) > max_rows:
            lines.append(f"\n({len(group) - max_rows} more records not shown)")
        failures = group[group["status"] != "ok"]
        if not failures.empty:
            lines += ["", "Cases that did not end ok:", ""]
            for _, row in failures.head(20).iterrows():
                algorithm, status = md_text(row["algorithm"]), md_text(row["status"])
                lines.append(f"- {algorithm} ({status}): {_format('error', row.get('error'))}")
        lines.append("")
    return "\n".join(lines)

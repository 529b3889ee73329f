"""A plain summary of stored records: status counts and one table per sweep.

Reports never re-run anything: they read the tidy records alone. ``sweep_tables`` gives the tables as
plain text; ``summary_markdown`` writes them as ``summary.md`` (record text escaped by
``metabench.report.document.md_text``) and ``summary_blocks`` as blocks of the report's document model
(escaped there, for Markdown and for HTML), so ``report.html`` shows the same tables as ``summary.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from metabench.options import HEADLINE_OPTIONS, OPTIONS
from metabench.report.document import Heading, Table, Text, md_text

__all__ = ["SweepTable", "summary_blocks", "summary_markdown", "sweep_tables"]

_COLUMNS = {
    "algorithm": "algorithm",
    "problem": "problem",
    **{name: OPTIONS[name].short for name in HEADLINE_OPTIONS if name != "inner_lr"},  # solver, K, T, CG, N
    "kappa": "kappa",
    "status": "status",
    "rel_error_exact": "rel. error (exact)",
    "rel_error_reference": "rel. error (reference)",
    "truth_status": "truth",
    "hvps": "HVPs",
    "time_median_s": "time (ms)",
    "live_peak_bytes": "live peak (KiB)",
    "matmul_flops": "MFLOP",
}
# shown only where a sweep has them: a reference error somewhere, a truth that was not "ok"
_WHERE_PRESENT = {
    "rel_error_reference": lambda column: column.notna().any(),
    "truth_status": lambda column: column.map(lambda v: isinstance(v, str) and v != "ok").any(),
}


@dataclass
class SweepTable:
    """One sweep's part of the summary, as plain (unescaped) text."""

    sweep: object
    counts: list[tuple[str, int]]  # status, records: most first, then by name
    machine: dict | None
    header: list[str]
    rows: list[list[str]]
    more: int = 0  # records beyond the rows shown
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # algorithm, status, error


def _problem(row) -> str:
    """A record's problem, with its formulation where it has one (two imaml rows can differ only there)."""
    if not isinstance(row["problem"], str):
        return _format("problem", row["problem"])
    params = row.get("problem_params")
    formulation = params.get("formulation") if isinstance(params, dict) else None
    return f"{row['problem']} ({formulation})" if formulation else str(row["problem"])


def _format(column: str, value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if column in ("rel_error_exact", "rel_error_reference"):
        return f"{value:.2e}"
    if column == "time_median_s":
        return f"{1e3 * value:.2f}"
    if column == "live_peak_bytes":
        return f"{value / 1024:.1f}"
    if column == "matmul_flops":
        return f"{value / 1e6:.3f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sweep_title(sweep) -> str:
    """A sweep name as inline code when it is a plain word (as sweep specs require), else escaped text."""
    text = str(sweep)
    return f"`{text}`" if re.fullmatch(r"[\w.-]+", text, flags=re.ASCII) else md_text(text)


def sweep_tables(records: pd.DataFrame, max_rows: int = 200) -> list[SweepTable]:
    """Per sweep (in the order the records hold them): status counts, machine, the first ``max_rows`` records."""
    tables = []
    for sweep, group in records.groupby("sweep", sort=False, dropna=False):
        counts = group["status"].value_counts(dropna=False)
        ordered = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
        machine = group["machine"].iloc[0] if "machine" in group else None
        cols = [c for c in _COLUMNS if c in group and (c not in _WHERE_PRESENT or _WHERE_PRESENT[c](group[c]))]
        rows = [
            [_problem(row) if c == "problem" else _format(c, row[c]) for c in cols]
            for _, row in group.head(max_rows).iterrows()
        ]
        failures = [
            (str(row["algorithm"]), str(row["status"]), _format("error", row.get("error")))
            for _, row in group[group["status"] != "ok"].head(20).iterrows()
        ]
        tables.append(
            SweepTable(
                sweep=sweep,
                counts=ordered,
                machine=machine if isinstance(machine, dict) else None,
                header=[_COLUMNS[c] for c in cols],
                rows=rows,
                more=max(len(group) - max_rows, 0),
                failures=failures,
            )
        )
    return tables


def summary_markdown(records: pd.DataFrame, max_rows: int = 200) -> str:
    """Status counts and a table of the first ``max_rows`` records of each sweep, as Markdown."""
    if records.empty:
        return "# metabench results\n\nNo records.\n"
    lines = ["# metabench results", ""]
    for table in sweep_tables(records, max_rows):
        by_status = ", ".join(f"{md_text(k)} {v}" for k, v in table.counts)
        lines += [f"## Sweep {_sweep_title(table.sweep)}", "", "Cases by status: " + by_status, ""]
        if table.machine is not None:
            machine = table.machine
            cpu, cores = md_text(machine.get("cpu_model")), md_text(machine.get("cpu_logical_cores"))
            torch, cuda = md_text(machine.get("torch_version")), md_text(machine.get("cuda_available"))
            lines += [f"Machine: {cpu}, {cores} cores, torch {torch}, CUDA available: {cuda}", ""]
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|" + "---|" * len(table.header))
        lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in table.rows]
        if table.more:
            lines.append(f"\n({table.more} more records not shown)")
        if table.failures:
            lines += ["", "Cases that did not end ok:", ""]
            for algorithm, status, error in table.failures:
                lines.append(f"- {md_text(algorithm)} ({md_text(status)}): {md_text(error)}")
        lines.append("")
    return "\n".join(lines)


def summary_blocks(records: pd.DataFrame, max_rows: int = 200) -> list:
    """The tables of ``summary_markdown`` as document blocks (a heading, the counts and a table per sweep)."""
    blocks: list = []
    for table in sweep_tables(records, max_rows):
        blocks.append(Heading("Sweep {sweep}", {"sweep": table.sweep}))
        blocks.append(Text("Cases by status: {counts}.", {"counts": ", ".join(f"{k} {v}" for k, v in table.counts)}))
        if table.machine is not None:
            machine = table.machine
            values = {k: machine.get(k) for k in ("cpu_model", "cpu_logical_cores", "torch_version", "cuda_available")}
            blocks.append(
                Text(
                    "Machine: {cpu_model}, {cpu_logical_cores} cores, torch {torch_version}, "
                    "CUDA available: {cuda_available}.",
                    values,
                )
            )
        if table.more:
            caption = f"The first {len(table.rows)} of {len(table.rows) + table.more} records"
        else:
            caption = f"All {len(table.rows)} records"
        blocks.append(Table(table.header, table.rows, caption=caption + ", in the order they were written."))
    return blocks

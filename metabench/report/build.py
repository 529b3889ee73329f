"""Build the report from stored records alone: iMAML Table 1 re-derived, memory laws, figures, failures, tables.

``build_report(records, out_dir)`` writes ``report.md``, ``report.html`` (self-contained) and
``figures/*.png|svg`` under ``out_dir``, plus ``summary.md`` (every record in one table per sweep; the same
tables close the report). Each part appears when the records hold what it needs (a Table 1 sweep, a bilevel
sweep, training runs, few-shot runs meta-trained to accuracy).

The text of the report depends on the records alone (and their order): no time of day, no absolute path, no
dict or set order, so a report committed with its records (``reports/NAME/results/*.jsonl[.gz]``) is rebuilt
identically by ``metabench report reports/NAME/results --out reports/NAME``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from metabench.report import figures
from metabench.report.accuracy import accuracy_section
from metabench.report.document import Figure, Link, Report, Section, Table, Text, fmt_number
from metabench.report.figure2 import fig2a_section, fig2b_section
from metabench.report.summary import summary_blocks, summary_markdown
from metabench.report.table1 import TARGETS, table1_section

__all__ = ["FIGURES", "TARGETS", "build_report"]

#: the report's figures by file name, in the order they appear
FIGURES = (
    "error_vs_steps",
    "compute_memory_vs_steps",
    "least_compute_vs_kappa",
    "memory_vs_steps_bilevel",
    "convergence",
)


def _first(records: pd.DataFrame, column: str):
    return records[column].iloc[0] if column in records else None


def _draw(name: str, records: pd.DataFrame) -> figures.Plot | None:
    if name == "error_vs_steps":
        return figures.error_vs_steps(records)
    if name == "compute_memory_vs_steps":
        return figures.compute_memory_vs_steps(records)
    if name == "least_compute_vs_kappa":
        linear = records[records["problem"] == figures.LINEAR] if "problem" in records else records.iloc[0:0]
        if linear.empty or linear["kappa"].nunique() < 3:
            return None
        return figures.least_compute_vs_kappa(linear, TARGETS)
    if name == "memory_vs_steps_bilevel":
        return figures.memory_vs_steps_bilevel(records)
    return figures.convergence(records)


def _figures_section(records: pd.DataFrame, fig_dir: Path, bar) -> Section:
    section = Section("Figures")
    for name in FIGURES:
        bar.set_postfix_str(name)
        plot = _draw(name, records)
        if plot is not None:
            section.blocks.append(Figure(figures.save(plot.figure, fig_dir, name), plot.caption))
        else:  # a figure of an earlier report into this folder that these records no longer give
            for ext in ("png", "svg"):
                (fig_dir / f"{name}.{ext}").unlink(missing_ok=True)
        bar.update()
    if not section.blocks:
        section.blocks.append("No figure applies to these records.")
    return section


def _overview(records: pd.DataFrame) -> Section:
    section = Section("Records")
    rows = []
    for (sweep, status), group in records.groupby(["sweep", "status"], dropna=False):
        rows.append([fmt_number(sweep), fmt_number(status), len(group)])
    section.blocks.append(Table(["sweep", "status", "records"], rows))
    section.blocks.append(
        Link(
            "summary.md",
            "summary.md",
            before="Every record, one table per sweep: ",
            after=" (the same tables close this report, under 'Results tables').",
        )
    )
    machines = records["machine"].dropna() if "machine" in records else pd.Series(dtype=object)
    if len(machines) and isinstance(machines.iloc[0], dict):
        m = machines.iloc[0]
        section.blocks.append(
            Text(
                "Machine: {cpu}, {cores} logical cores, {ram} GiB RAM, torch {torch}, CUDA available: {cuda}. "
                "metabench {version}, commit {commit}.",
                {
                    "cpu": m.get("cpu_model"),
                    "cores": m.get("cpu_logical_cores"),
                    "ram": fmt_number((m.get("ram_total_bytes") or 0) / 2**30),
                    "torch": m.get("torch_version"),
                    "cuda": m.get("cuda_available"),
                    "version": fmt_number(_first(records, "metabench_version")),
                    "commit": fmt_number(_first(records, "git_commit")),
                },
            )
        )
    return section


def _failures(records: pd.DataFrame) -> Section | None:
    bad = records[records["status"] != "ok"]
    if bad.empty:
        return None
    rows = [
        [
            fmt_number(r["sweep"]),
            r["algorithm"],
            fmt_number(r.get("inner_steps")),
            fmt_number(r.get("kappa")),
            r["status"],
            fmt_number(r.get("error"))[:300],
        ]
        for _, r in bad.iterrows()
    ]
    section = Section("Cases that did not end ok")
    section.blocks.append(Table(["sweep", "algorithm", "K", "kappa", "status", "error"], rows[:200]))
    return section


def _tables(records: pd.DataFrame) -> Section:
    section = Section("Results tables")
    section.blocks.append(
        Link("summary.md", "summary.md", before="The tables of ", after=", one per sweep (at most 200 rows each).")
    )
    section.blocks += summary_blocks(records)
    return section


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(progress: bool | None, total: int):
    """A tqdm bar on stderr: always for ``progress=True``, never for False, for None when stderr is a terminal."""
    stream = sys.stderr
    enabled = bool(getattr(stream, "isatty", lambda: False)()) if progress is None else bool(progress)
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="report", unit="part", file=stream, leave=False)


def build_report(
    records: pd.DataFrame,
    out_dir: str | Path,
    title: str = "metabench report",
    progress: bool | None = None,
) -> dict[str, Path]:
    """Write the report for ``records`` into ``out_dir``; return the written paths by kind.

    ``progress``: None shows a bar on stderr when stderr is a terminal (drawing the figures is the slow
    part), True always, False never.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.md", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    bar = _bar(progress, total=len(FIGURES) + 2)
    try:
        bar.set_postfix_str("summary")
        paths["summary"].write_text(summary_markdown(records))
        bar.update()
        report = Report(title)
        if records.empty:
            report.sections.append(Section("Records", ["No records."]))
            bar.update(len(FIGURES))
        else:
            report.sections.append(_overview(records))
            table1 = table1_section(records)
            fig2 = (fig2a_section(records), fig2b_section(records))
            accuracy = accuracy_section(records, out_dir / "figures")
            figure_section = _figures_section(records, out_dir / "figures", bar)
            for part in (table1, *fig2, accuracy, figure_section, _failures(records), _tables(records)):
                if part is not None:
                    report.sections.append(part)
        bar.set_postfix_str("report")
        paths["markdown"].write_text(report.to_markdown(out_dir))
        paths["html"].write_text(report.to_html())
        bar.update()
    finally:
        bar.close()
    return paths

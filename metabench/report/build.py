"""Build the report from stored records alone: iMAML Table 1 re-derived, memory laws, figures, failures.

``build_report(records, out_dir)`` writes ``report.md``, ``report.html`` (self-contained) and
``figures/*.png|svg`` under ``out_dir``, plus ``summary.md`` (every record in one table). Each part
appears when the records hold what it needs (a Table 1 sweep, a bilevel sweep, training runs).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from metabench.report import figures
from metabench.report.document import Figure, Report, Section, Table, Text
from metabench.report.fitting import least_compute
from metabench.report.summary import summary_markdown
from metabench.report.table1 import TARGETS, table1_section

__all__ = ["TARGETS", "build_report"]


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _first(records: pd.DataFrame, column: str):
    return records[column].iloc[0] if column in records else None


def _figures_section(records: pd.DataFrame, fig_dir: Path) -> Section:
    section = Section("Figures")
    kappas = sorted(records["kappa"].dropna().unique()) if "kappa" in records else []
    kappa = 100.0 if 100.0 in kappas else (kappas[len(kappas) // 2] if kappas else None)
    linear = records[records["problem"] == "linear_meta_regression"]
    made = []
    if kappa is not None and not linear.empty:
        made.append(
            (
                "error_vs_steps",
                figures.error_vs_steps(linear, kappa),
                f"Relative error to the exact meta-gradient vs inner GD steps, MAML and iMAML with several CG "
                f"iteration counts (kappa = {kappa:g}; iMAML Figure 2a).",
            )
        )
        made.append(
            (
                "compute_memory_vs_steps",
                figures.compute_memory_vs_steps(linear, kappa),
                f"Oracle calls and peak live-tensor memory vs inner steps (kappa = {kappa:g}; iMAML Figure 2b).",
            )
        )
        if linear["kappa"].nunique() >= 3:
            best = least_compute(linear, TARGETS)
            made.append(
                (
                    "least_compute_vs_kappa",
                    figures.least_compute_vs_kappa(best, 0.1),
                    "Least oracle calls per task reaching relative error 0.1 vs kappa, with fitted power laws "
                    "(solid: GD inner solver, dashed: Nesterov).",
                )
            )
    made.append(
        (
            "memory_vs_steps_bilevel",
            figures.memory_vs_steps_bilevel(records),
            "Peak live-tensor memory vs inner steps (RM-MetaL Figure 2), per problem setting; maml and itd_bio "
            "run the same computation, and so do imaml and rm_metal on a single (cold) call.",
        )
    )
    made.append(
        (
            "convergence",
            figures.convergence(records),
            "Meta-training: exact objective gap F(theta_t) - F* against hypergradient wall time and oracle calls.",
        )
    )
    for name, fig, caption in made:
        if fig is not None:
            section.blocks.append(Figure(figures.save(fig, fig_dir, name), caption))
    if not section.blocks:
        section.blocks.append("No figure applies to these records.")
    return section


def _overview(records: pd.DataFrame) -> Section:
    section = Section("Records")
    rows = []
    for (sweep, status), group in records.groupby(["sweep", "status"], dropna=False):
        rows.append([_fmt(sweep), _fmt(status), len(group)])
    section.blocks.append(Table(["sweep", "status", "records"], rows))
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
                    "ram": _fmt((m.get("ram_total_bytes") or 0) / 2**30),
                    "torch": m.get("torch_version"),
                    "cuda": m.get("cuda_available"),
                    "version": _fmt(_first(records, "metabench_version")),
                    "commit": _fmt(_first(records, "git_commit")),
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
            _fmt(r["sweep"]),
            r["algorithm"],
            _fmt(r.get("inner_steps")),
            _fmt(r.get("kappa")),
            r["status"],
            _fmt(r.get("error"))[:300],
        ]
        for _, r in bad.iterrows()
    ]
    section = Section("Cases that did not end ok")
    section.blocks.append(Table(["sweep", "algorithm", "K", "kappa", "status", "error"], rows[:200]))
    return section


def build_report(records: pd.DataFrame, out_dir: str | Path, title: str = "metabench report") -> dict[str, Path]:
    """Write the report for ``records`` into ``out_dir``; return the written paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.md", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["summary"].write_text(summary_markdown(records))
    report = Report(title)
    if records.empty:
        report.sections.append(Section("Records", ["No records."]))
    else:
        report.sections.append(_overview(records))
        for part in (table1_section(records), _figures_section(records, out_dir / "figures"), _failures(records)):
            if part is not None:
                report.sections.append(part)
    paths["markdown"].write_text(report.to_markdown(out_dir))
    paths["html"].write_text(report.to_html())
    return paths

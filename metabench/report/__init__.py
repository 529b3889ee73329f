"""Reports from stored records (tables, later plots); they never re-run a case."""

from metabench.report.summary import summary_markdown

__all__ = ["summary_markdown"]

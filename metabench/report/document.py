"""A small document model rendered to Markdown and to self-contained HTML.

Blocks are text paragraphs, tables (lists of rows) and figures (PNG + SVG files). Every string that
comes from records is escaped: ``|`` and newlines in Markdown tables, HTML entities in HTML. The
HTML embeds its figures as base64 PNG, so the one file can be mailed or attached to a paper.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "Report", "Section", "Table"]


@dataclass
class Table:
    header: list[str]
    rows: list[list[object]]
    caption: str = ""


@dataclass
class Figure:
    paths: dict[str, Path]
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


def _md_cell(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def to_markdown(self, relative_to: Path) -> str:
        lines = [f"# {self.title}", ""]
        for section in self.sections:
            lines += [f"## {section.title}", ""]
            for block in section.blocks:
                if isinstance(block, Table):
                    if block.caption:
                        lines += [block.caption, ""]
                    lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                    lines.append("|" + "---|" * len(block.header))
                    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                elif isinstance(block, Figure):
                    png = block.paths["png"].relative_to(relative_to).as_posix()
                    svg = block.paths["svg"].relative_to(relative_to).as_posix()
                    lines.append(f"![{_md_cell(block.caption)}]({png})")
                    lines += ["", f"*{block.caption}* ([SVG]({svg}))"]
                else:
                    lines.append(block)
                lines.append("")
        return "\n".join(lines)

    def to_html(self) -> str:
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
            "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
            "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}"
            "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-style:italic;font-size:0.9em}</style>",
            "</head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for section in self.sections:
            parts.append(f"<h2>{e(section.title)}</h2>")
            for block in section.blocks:
                if isinstance(block, Table):
                    if block.caption:
                        parts.append(f"<p>{e(block.caption)}</p>")
                    parts.append("<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in block.header))
                    parts.append("</tr></thead><tbody>")
                    for row in block.rows:
                        parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
                    parts.append("</tbody></table>")
                elif isinstance(block, Figure):
                    data = base64.b64encode(block.paths["png"].read_bytes()).decode("ascii")
                    parts.append(
                        f'<figure><img alt="{e(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{e(block.caption)}</figcaption></figure>"
                    )
                else:
                    parts.append(f"<p>{e(block)}</p>")
        parts.append("</body></html>")
        return "\n".join(parts)

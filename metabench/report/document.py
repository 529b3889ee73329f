"""A small document model rendered to Markdown and to self-contained HTML.

Blocks are text paragraphs, headings within a section, links to files beside the report, tables (lists
of rows) and figures (PNG + SVG files). Every string that comes from records is escaped: by ``md_text`` in
Markdown (table cells, list items, the values of a ``Text`` paragraph or a ``Heading``), by HTML entities in
HTML. A plain ``str`` block is the report's own text and goes into Markdown as written. The HTML embeds
its figures as base64 PNG, so the one file can be mailed or attached to a paper.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "Heading", "Link", "Report", "Section", "Table", "Text", "fmt_number", "md_text"]


_MD_ESCAPES = {
    "\\": "\\\\",
    "|": "\\|",
    "`": "\\`",
    "*": "\\*",
    "_": "\\_",
    "[": "\\[",
    "]": "\\]",
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
}
_MD_SPECIAL = re.compile("|".join(re.escape(c) for c in _MD_ESCAPES))
_NEWLINES = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")


def fmt_number(value, digits: int = 3) -> str:
    """A table cell for a measured value: "-" for None, NaN or inf, a float to ``digits`` significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def md_text(value: object) -> str:
    """Record text made safe for one Markdown table cell or list item.

    Line breaks become spaces; ``\\ | ` * _ [ ]`` get a backslash; ``& < >`` become HTML entities, so
    no raw HTML survives and the text renders as written.
    """
    text = _NEWLINES.sub(" ", str(value))
    return _MD_SPECIAL.sub(lambda m: _MD_ESCAPES[m.group()], text)


def _md_header(value: object) -> str:
    """A table header: the report's own words, kept as written but for what would break the table."""
    return _NEWLINES.sub(" ", str(value)).replace("|", "\\|")


@dataclass
class Text:
    """A paragraph of the report's own words with record values filled in: ``template`` with ``{name}``
    fields, ``values`` by name. Each value is escaped for the output (Markdown or HTML), the words are not."""

    template: str
    values: dict[str, object] = field(default_factory=dict)

    def render(self, escape) -> str:
        return self.template.format(**{k: escape(v) for k, v in self.values.items()})


@dataclass
class Heading(Text):
    """A heading inside a section (level 3 by default), written like a ``Text``: own words, escaped values."""

    level: int = 3


@dataclass
class Link:
    """A paragraph linking a file beside the report (``href`` relative to it), in the report's own words."""

    text: str
    href: str
    before: str = ""
    after: str = ""


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
    blocks: list[str | Text | Heading | Link | Table | Figure] = field(default_factory=list)


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
                    lines.append("| " + " | ".join(_md_header(h) for h in block.header) + " |")
                    lines.append("|" + "---|" * len(block.header))
                    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in block.rows]
                elif isinstance(block, Figure):
                    png = block.paths["png"].relative_to(relative_to).as_posix()
                    svg = block.paths["svg"].relative_to(relative_to).as_posix()
                    lines.append(f"![{md_text(block.caption)}]({png})")
                    lines += ["", f"*{md_text(block.caption)}* ([SVG]({svg}))"]
                elif isinstance(block, Heading):
                    lines.append("#" * block.level + " " + block.render(md_text))
                elif isinstance(block, Text):
                    lines.append(block.render(md_text))
                elif isinstance(block, Link):
                    lines.append(f"{block.before}[{block.text}]({block.href}){block.after}")
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
                elif isinstance(block, Heading):
                    parts.append(f"<h{block.level}>{e(block.render(str))}</h{block.level}>")
                elif isinstance(block, Link):
                    parts.append(
                        f'<p>{e(block.before)}<a href="{e(block.href)}">{e(block.text)}</a>{e(block.after)}</p>'
                    )
                else:
                    text = block.render(lambda v: str(v)) if isinstance(block, Text) else block
                    parts.append(f"<p>{e(text)}</p>")
        parts.append("</body></html>")
        return "\n".join(parts)

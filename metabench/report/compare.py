"""Compare two sets of stored records case by case: what got slower, bigger, less accurate, or stopped working.

Records are matched by ``case_id`` (a hash of the case's parameters: one sweep file gives the same ids on every
run). For each case that is ``ok`` on both sides the ratios B/A of time and memory are taken, errors are judged
against round-off, and the oracle counts are compared exactly::

    from metabench.results import load_records
    from metabench.report.compare import compare_records, to_markdown
    result = compare_records(load_records("before"), load_records("after"), factor=1.25)
    print(to_markdown(result)); raise SystemExit(1 if result.regressions else 0)

The rules (``factor`` f, default 1.25, as ``asv compare --factor``):

- time (``time_median_s``) and memory (``live_peak_bytes``, ``rss_peak_delta_bytes``, ``cuda_max_allocated_bytes``
  where both sides have them): a regression when B > f x A, an improvement when A > f x B. RSS is sampled (psutil),
  so its change also has to exceed ``RSS_FLOOR_BYTES``.
- errors (``rel_error_exact``, ``rel_error_reference``, ``rel_error_algorithm``): a ratio means nothing at
  round-off, so an error is worse only when B > max(f x A, A + 1e-12) (better: the same with A and B swapped).
- oracle counts (``inner_grads``, ``outer_grads``, ``hvps``, ``jvps``) are deterministic: any change is a regression.
- a case whose status changed to one other than ok is a regression (mark ``!``); one that became ok an improvement.

Marks as ``asv compare``: ``+`` regression, ``-`` improvement, ``!`` a status that is no longer ok.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from metabench.report.document import md_text

__all__ = [
    "COUNT_FIELDS",
    "DEFAULT_FACTOR",
    "ERROR_FLOOR",
    "METRICS",
    "METRIC_GROUPS",
    "RSS_FLOOR_BYTES",
    "CaseInfo",
    "CompareResult",
    "CompareRow",
    "MetricChange",
    "compare_records",
    "to_html",
    "to_markdown",
]

DEFAULT_FACTOR = 1.25
#: Errors at or below this are round-off: no ratio is shown and no change is flagged within it.
ERROR_FLOOR = 1e-12
#: A sampled RSS peak has page and allocator noise: a change smaller than this is never flagged.
RSS_FLOOR_BYTES = 1 << 20


@dataclass(frozen=True)
class _Metric:
    field: str
    title: str  # column header
    group: str  # time, memory or error
    floor: float  # an absolute change at or below this is never flagged


METRICS: tuple[_Metric, ...] = (
    _Metric("time_median_s", "time", "time", 0.0),
    _Metric("live_peak_bytes", "live peak", "memory", 0.0),
    _Metric("rss_peak_delta_bytes", "RSS delta", "memory", float(RSS_FLOOR_BYTES)),
    _Metric("cuda_max_allocated_bytes", "CUDA max", "memory", 0.0),
    _Metric("rel_error_exact", "err exact", "error", ERROR_FLOOR),
    _Metric("rel_error_reference", "err ref", "error", ERROR_FLOOR),
    _Metric("rel_error_algorithm", "err alg", "error", ERROR_FLOOR),
)
COUNT_FIELDS = ("inner_grads", "outer_grads", "hvps", "jvps")
#: ``--metric`` names: a group or one field.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "time": tuple(m.field for m in METRICS if m.group == "time"),
    "memory": tuple(m.field for m in METRICS if m.group == "memory"),
    "error": tuple(m.field for m in METRICS if m.group == "error"),
    "counts": COUNT_FIELDS,
}


@dataclass(frozen=True)
class CaseInfo:
    """What names a case in the output: its label (algorithm and headline options), problem, kappa, status."""

    case_id: str
    label: str
    problem: str | None
    kappa: float | None
    status: str | None


@dataclass(frozen=True)
class MetricChange:
    """One metric of one case: A's and B's values, B/A, and ``verdict`` worse, better or '' (within the factor)."""

    field: str
    a: float
    b: float
    ratio: float | None  # None for errors within round-off on both sides
    verdict: str


@dataclass
class CompareRow:
    """One matched case. ``metrics`` and ``counts`` are filled for cases ok on both sides; ``reasons`` says why
    the case is a regression or an improvement, in words."""

    case: CaseInfo
    status_a: str | None
    status_b: str | None
    metrics: dict[str, MetricChange] = field(default_factory=dict)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    error_b: str | None = None  # B's error text, for a status change
    worse: list[str] = field(default_factory=list)
    better: list[str] = field(default_factory=list)

    @property
    def status_changed(self) -> bool:
        return self.status_a != self.status_b

    @property
    def regression(self) -> bool:
        return bool(self.worse)

    @property
    def improvement(self) -> bool:
        return bool(self.better) and not self.worse

    @property
    def mark(self) -> str:
        if self.status_changed and self.status_b != "ok":
            return "!"
        return "+" if self.worse else "-" if self.better else ""


@dataclass
class CompareResult:
    """Every matched case ok on both sides (``rows``), those of them and the status changes that regressed
    or improved, the cases only one side has, and what was not compared."""

    factor: float
    metrics: tuple[str, ...]  # the fields compared (ratio metrics and counts)
    n_a: int
    n_b: int
    rows: list[CompareRow]
    status_changes: list[CompareRow]
    only_a: list[CaseInfo]
    only_b: list[CaseInfo]
    not_ok_both: list[CompareRow]  # the same status other than ok on both sides: nothing to compare
    notes: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return len(self.rows) + len(self.status_changes) + len(self.not_ok_both)

    @property
    def regressions(self) -> list[CompareRow]:
        return [r for r in self.status_changes if r.regression] + [r for r in self.rows if r.regression]

    @property
    def improvements(self) -> list[CompareRow]:
        return [r for r in self.status_changes if r.improvement] + [r for r in self.rows if r.improvement]


# --- comparing ---------------------------------------------------------------------------------------------------


def _scalar(value):
    """A DataFrame cell as a plain Python value: NaN/NA -> None, numpy scalars -> int/float/str."""
    if value is None or isinstance(value, (dict, list, tuple, str, bool)):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        value = item()
    try:
        if value != value:  # NaN, and pandas.NA raises below
            return None
    except TypeError:
        return None
    return value


def _records(frame, side: str, notes: list[str]) -> dict[str, dict]:
    """The records of one side by case id (the first of a repeated id kept, with a note)."""
    if frame is None or len(frame) == 0:
        raise ValueError(f"{side} holds no records")
    if "case_id" not in frame:
        raise ValueError(f"the records of {side} have no case_id column: not metabench results")
    out: dict[str, dict] = {}
    repeats = 0
    for raw in frame.to_dict("records"):
        record = {str(k): _scalar(v) for k, v in raw.items()}
        cid = record.get("case_id")
        if not isinstance(cid, str) or not cid:
            continue
        if cid in out:
            repeats += 1
            continue
        out[cid] = record
    if repeats:
        notes.append(f"{side}: {repeats} record(s) repeat a case_id of an earlier file; the first of each was kept")
    return out


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _info(record: dict) -> CaseInfo:
    from metabench.options import label

    kappa = _number(record.get("kappa"))
    problem = record.get("problem")
    return CaseInfo(
        case_id=record["case_id"],
        label=label(record.get("algorithm"), record),
        problem=None if problem is None else str(problem),
        kappa=kappa,
        status=None if record.get("status") is None else str(record.get("status")),
    )


def _selected(metrics) -> tuple[str, ...]:
    known = [m.field for m in METRICS] + list(COUNT_FIELDS)
    if not metrics:
        return tuple(known)
    chosen: set[str] = set()
    for name in metrics:
        if name in METRIC_GROUPS:
            chosen.update(METRIC_GROUPS[name])
        elif name in known:
            chosen.add(name)
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {[*METRIC_GROUPS, *known]}")
    return tuple(f for f in known if f in chosen)


def _judge(metric: _Metric, a: float, b: float, factor: float) -> MetricChange:
    worse = b > max(factor * a, a + metric.floor)
    better = a > max(factor * b, b + metric.floor)
    if metric.group == "error" and max(abs(a), abs(b)) <= metric.floor:
        ratio = None  # both at round-off: a ratio would be noise
    elif a > 0:
        ratio = b / a
    else:
        ratio = 1.0 if b == a else math.inf
    return MetricChange(metric.field, a, b, ratio, "worse" if worse else "better" if better else "")


def _compare_case(row: CompareRow, a: dict, b: dict, fields: tuple[str, ...], factor: float) -> None:
    for metric in METRICS:
        if metric.field not in fields:
            continue
        va, vb = _number(a.get(metric.field)), _number(b.get(metric.field))
        if va is None or vb is None:
            continue
        change = _judge(metric, va, vb, factor)
        row.metrics[metric.field] = change
        if change.verdict:
            text = f"{metric.title} {_value(metric.field, va)} to {_value(metric.field, vb)}"
            if change.ratio is not None:
                text += f" ({_ratio(change.ratio)}x)"
            (row.worse if change.verdict == "worse" else row.better).append(text)
    for name in COUNT_FIELDS:
        if name not in fields:
            continue
        ca, cb = _number(a.get(name)), _number(b.get(name))
        if ca is None or cb is None:
            continue
        row.counts[name] = (int(ca), int(cb))
        if ca != cb:
            row.worse.append(f"{name} {int(ca)} to {int(cb)} ({int(cb) - int(ca):+d}; counts are deterministic)")


def compare_records(a, b, factor: float = DEFAULT_FACTOR, *, metrics=None) -> CompareResult:
    """Compare the records of ``b`` against those of ``a`` (DataFrames, as ``load_records`` gives).

    ``factor`` (>= 1) is the ratio past which a time or memory change counts; ``metrics`` limits the comparison
    to some groups (``time``, ``memory``, ``error``, ``counts``) or fields (default: all). A side without records,
    or a factor below 1, is a ValueError. Cases only one side has are reported, not compared.
    """
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"factor must be a number >= 1, got {factor!r}") from None
    if not math.isfinite(factor) or factor < 1:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    fields = _selected(metrics)
    notes: list[str] = []
    ra, rb = _records(a, "A", notes), _records(b, "B", notes)
    rows, changes, not_ok = [], [], []
    for cid, rec_a in ra.items():
        rec_b = rb.get(cid)
        if rec_b is None:
            continue
        info = _info(rec_b)
        row = CompareRow(info, rec_a.get("status"), rec_b.get("status"))
        if row.status_a == "ok" and row.status_b == "ok":
            _compare_case(row, rec_a, rec_b, fields, factor)
            rows.append(row)
        elif row.status_changed:
            row.error_b = rec_b.get("error")
            if row.status_b == "ok":
                row.better.append(f"status {row.status_a} to ok")
            else:
                row.worse.append(f"status {row.status_a} to {row.status_b}")
            changes.append(row)
        else:
            not_ok.append(row)
    only_a = [_info(r) for cid, r in ra.items() if cid not in rb]
    only_b = [_info(r) for cid, r in rb.items() if cid not in ra]
    order = {"+": 0, "!": 0, "-": 1, "": 2}

    def key(row):
        return (order[row.mark], row.case.label, row.case.problem or "", row.case.kappa or 0.0, row.case.case_id)

    return CompareResult(
        factor=factor,
        metrics=fields,
        n_a=len(ra),
        n_b=len(rb),
        rows=sorted(rows, key=key),
        status_changes=sorted(changes, key=key),
        only_a=sorted(only_a, key=lambda c: (c.label, c.problem or "", c.kappa or 0.0, c.case_id)),
        only_b=sorted(only_b, key=lambda c: (c.label, c.problem or "", c.kappa or 0.0, c.case_id)),
        not_ok_both=sorted(not_ok, key=key),
        notes=notes,
    )


# --- formatting --------------------------------------------------------------------------------------------------


def _ratio(ratio: float) -> str:
    return "inf" if math.isinf(ratio) else f"{ratio:.2f}"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _seconds(s: float) -> str:
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _value(name: str, value: float) -> str:
    if name == "time_median_s":
        return _seconds(value)
    if name.endswith("_bytes"):
        return _bytes(value)
    return f"{value:.3g}"


def _kappa(kappa: float | None) -> str:
    return "" if kappa is None else f"{kappa:g}"


def _cell(change: MetricChange | None) -> str:
    if change is None:
        return ""
    if change.ratio is None:
        return "round-off"
    return _ratio(change.ratio)


def _counts_cell(row: CompareRow) -> str:
    changed = [f"{k} {b - a:+d}" for k, (a, b) in row.counts.items() if a != b]
    if changed:
        return ", ".join(changed)
    return "same" if row.counts else ""


_CLASS = {"+": "worse", "!": "worse", "-": "better", "": ""}


def _blocks(result: CompareResult, a_name: str, b_name: str, only_changed: bool) -> list[tuple]:
    """The document as blocks: ("p", template, values) of own words with record values, ("table", header,
    [(css class, cells)]) whose cells are all record values, and ("h2", title)."""
    f = result.factor
    regressions, improvements = result.regressions, result.improvements
    blocks: list[tuple] = [
        ("p", "A: {a} ({n} records)", {"a": a_name, "n": result.n_a}),
        ("p", "B: {b} ({n} records)", {"b": b_name, "n": result.n_b}),
        (
            "p",
            "Result: {r} regression(s), {i} improvement(s) among {m} case(s) in both (compared: {c} ok on both "
            "sides); {sc} status change(s), {oa} only in A, {ob} only in B, {no} not ok on both (not compared).",
            {
                "r": len(regressions),
                "i": len(improvements),
                "m": result.matched,
                "c": len(result.rows),
                "sc": len(result.status_changes),
                "oa": len(result.only_a),
                "ob": len(result.only_b),
                "no": len(result.not_ok_both),
            },
        ),
        (
            "p",
            "Ratios are B/A. With factor {f}: a time or memory ratio above {f} is a regression (+), below "
            "1/{f} = {inv} an improvement (-); an error is worse only when B's exceeds max({f} x A's, A's + "
            "{floor}) (both at or below {floor}: round-off, no ratio); any change of an oracle count "
            "(inner_grads, outer_grads, hvps, jvps) is a regression; ! marks a status that is no longer ok.",
            {"f": f"{f:g}", "inv": f"{1 / f:.3g}", "floor": f"{ERROR_FLOOR:g}"},
        ),
        (
            "p",
            "Noise: each time ratio compares one median per side (time_median_s, the median of that record's "
            "timed runs, on its own machine and moment), so it carries run-to-run noise: rerun before trusting "
            "a ratio near the factor. live_peak_bytes, cuda_max_allocated_bytes and the oracle counts are exact "
            "(deterministic); rss_peak_delta_bytes is sampled and flagged only when it moves by more than {rss}.",
            {"rss": _bytes(RSS_FLOOR_BYTES)},
        ),
        (
            "p",
            "Columns: time = time_median_s, live peak = live_peak_bytes, RSS delta = rss_peak_delta_bytes, CUDA max "
            "= cuda_max_allocated_bytes, err exact / ref / alg = rel_error_exact / rel_error_reference / "
            "rel_error_algorithm; counts: the oracle counts that changed (B - A).",
            {},
        ),
    ]
    blocks += [("p", "Note: {note}", {"note": note}) for note in result.notes]
    if result.status_changes:
        blocks.append(("h2", "Status changes"))
        header = ["", "case", "problem", "kappa", "status A", "status B", "error in B", "case_id"]
        body = [
            (
                _CLASS[r.mark],
                [
                    r.mark,
                    r.case.label,
                    r.case.problem or "",
                    _kappa(r.case.kappa),
                    r.status_a,
                    r.status_b,
                    _short(r.error_b),
                    r.case.case_id,
                ],
            )
            for r in result.status_changes
        ]
        blocks.append(("table", header, body))
    rows = [r for r in result.rows if r.mark] if only_changed else result.rows
    title = "Changed cases (ok on both sides)" if only_changed else "Cases ok on both sides"
    blocks.append(("h2", title))
    if rows:
        shown = [m for m in METRICS if any(m.field in r.metrics for r in rows)]
        with_counts = any(r.counts for r in rows)
        header = ["", "case", "problem", "kappa", *[m.title for m in shown]]
        header += ["counts"] * with_counts + ["why", "case_id"]
        body = []
        for r in rows:
            cells = [r.mark, r.case.label, r.case.problem or "", _kappa(r.case.kappa)]
            cells += [_cell(r.metrics.get(m.field)) for m in shown]
            cells += [_counts_cell(r)] * with_counts
            cells += ["; ".join(r.worse + r.better), r.case.case_id]
            body.append((_CLASS[r.mark], cells))
        blocks.append(("table", header, body))
    else:
        blocks.append(("p", "None.", {}))
    for title, cases in (("Only in A", result.only_a), ("Only in B", result.only_b)):
        if cases:
            blocks.append(("h2", title))
            body = [("", [c.label, c.problem or "", _kappa(c.kappa), c.status, c.case_id]) for c in cases]
            blocks.append(("table", ["case", "problem", "kappa", "status", "case_id"], body))
    return blocks


def _short(text, width: int = 160) -> str:
    if text is None:
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


_TITLE = "metabench compare"


def to_markdown(result: CompareResult, a_name: str = "A", b_name: str = "B", *, only_changed: bool = False) -> str:
    """The comparison as Markdown: a header (sources, counts, rules, noise), then tables; every record string
    (labels, problems, statuses, error texts, paths) escaped with ``md_text``."""
    lines = [f"# {_TITLE}", ""]
    for block in _blocks(result, a_name, b_name, only_changed):
        if block[0] == "h2":
            lines += [f"## {block[1]}", ""]
        elif block[0] == "p":
            lines += [block[1].format(**{k: md_text(v) for k, v in block[2].items()}), ""]
        else:
            _, header, body = block
            lines.append("| " + " | ".join(md_text(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(md_text(c) for c in cells) + " |" for _, cells in body]
            lines.append("")
    return "\n".join(lines)


def to_html(result: CompareResult, a_name: str = "A", b_name: str = "B", *, only_changed: bool = False) -> str:
    """The comparison as one self-contained HTML page (inline style, nothing fetched); every string escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(_TITLE)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}"
        "tr.worse{background:#fde2e1}tr.better{background:#e3f4e1}</style>",
        "</head><body>",
        f"<h1>{e(_TITLE)}</h1>",
    ]
    for block in _blocks(result, a_name, b_name, only_changed):
        if block[0] == "h2":
            parts.append(f"<h2>{e(block[1])}</h2>")
        elif block[0] == "p":
            parts.append(f"<p>{e(block[1].format(**{k: str(v) for k, v in block[2].items()}))}</p>")
        else:
            _, header, body = block
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr></thead>")
            parts.append("<tbody>")
            for css, cells in body:
                attr = f' class="{css}"' if css else ""
                parts.append(f"<tr{attr}>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
            parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

"""The report's figures, drawn with seaborn from records alone; each is saved as PNG and SVG.

No measured value goes missing unseen:

- What varies is faceted or marked. Condition number kappa, inner solver and problem setting are panels
  (rows and columns of a seaborn ``FacetGrid``); CG iterations, truncation length T, Neumann terms N and any
  other option that differs between otherwise equal cases are separate curves, each with its own marker and
  dash pattern. Colours are one per algorithm (``variants.colour_of``), so the curves of one algorithm share
  a colour and differ in marker and dashes.
- A dimension is drawn once instead of faceted only where the values were checked to agree across it within
  1e-12 relative (memory does not depend on kappa), and the caption says so. Curves that coincide (maml and
  itd_bio, imaml and rm_metal on a cold call) keep distinct hollow markers and dashes; the caption names
  them, again only where their values agree within 1e-12 relative.
- What a figure leaves out (records that did not end ok, values not measured, points a log axis cannot show,
  algorithms outside the figure) is named in its caption.
- Legible: log axes carry ticks at the measured values (K = 1, 3, 10, ...; kappa = 10, 100, ...), memory
  axes read in B/KiB/MiB/GiB, and legends sit right of the panels, outside the data.

Each figure function returns a ``Plot`` (the figure and its caption) or None where the records hold nothing
for it. Every drawn curve is a ``Line2D`` labelled with its curve's name (fitted lines: ``"fit: NAME"``), and
every panel's title names its facet (``"kappa = 10"``), so tests and readers can check what was drawn.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from metabench.report.fitting import fit_power_law, least_compute  # noqa: E402
from metabench.report.variants import ALGORITHM_COLOURS, colour_of, variant_label, with_variants  # noqa: E402

__all__ = [
    "RTOL",
    "Plot",
    "compute_memory_vs_steps",
    "convergence",
    "error_vs_steps",
    "format_bytes",
    "least_compute_vs_kappa",
    "memory_vs_steps_bilevel",
    "save",
]

sns.set_theme(context="paper", style="whitegrid")
matplotlib.rcParams["svg.hashsalt"] = "metabench"  # the same SVG ids on every run

#: relative tolerance under which two measured values count as equal (coinciding curves, collapsed facets)
RTOL = 1e-12

LINEAR = "linear_meta_regression"
_MAX_FIXED_TICKS = 12  # more distinct measured values than this: decade ticks instead
_MARKERS = ["o", "s", "X", "D", "^", "v", "P", "*", "<", ">", "p", "h", "d", "8", "H"]
_DASHES = [(), (4, 1.5), (1, 1.2), (3, 1, 1, 1), (6, 2), (2, 2), (5, 1, 1, 1, 1, 1), (8, 2, 2, 2)]
# options that are a figure's own coordinates (axes, panels, curve names), never a "setting"
_CURVE_OPTIONS = {"inner_steps", "inner_solver", "truncate", "cg_iters", "neumann_iters"}
_RECORD_SETTING_FIELDS = ("dtype", "device", "task_batch", "seed", "sweep")  # after the problem's parameters
# coinciding curves, first to last: each a smaller marker and a thinner line over the one before
_NESTED = [(10.0, 3.2), (7.0, 1.9), (4.5, 1.0), (3.0, 0.6)]
_CASE_KEYS = ["algorithm", "inner_solver", "truncate", "cg_iters", "neumann_iters", "inner_steps"]


@dataclass
class Plot:
    """A drawn figure and its caption (which names whatever the figure leaves out, and why)."""

    figure: plt.Figure
    caption: str


def save(fig, out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``fig`` as ``name.png`` (150 dpi) and ``name.svg``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("png", "svg")}
    fig.savefig(paths["png"], dpi=150, bbox_inches="tight")
    fig.savefig(paths["svg"], bbox_inches="tight", metadata={"Date": None})  # no time of day in the file
    plt.close(fig)
    return paths


# --- words and numbers --------------------------------------------------------------------------------------


def format_bytes(value: float) -> str:
    """``512 B``, ``4 KiB``, ``1.5 MiB``, ``2 GiB``: three significant digits in the largest unit that fits."""
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


def _num(value) -> str:
    """A measured number as a reader writes it: 1, 30, 10000, 0.5, 1e+05."""
    value = float(value)
    if not math.isfinite(value):
        return "none"
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _text(value) -> str:
    """A parameter value as short, stable text (for labels and for telling cases apart)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _num(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def _listing(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _column(data: pd.DataFrame, name: str, default=None) -> pd.Series:
    return data[name] if name in data else pd.Series([default] * len(data), index=data.index, dtype=object)


def _finite(values) -> np.ndarray:
    values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _agree(a, b) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= RTOL * max(abs(a), abs(b))


# --- what a figure draws, and what it says it leaves out ----------------------------------------------------


def _status_note(scope: pd.DataFrame, notes: list[str]) -> None:
    bad = scope[scope["status"] != "ok"]
    if len(bad):
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(bad["status"].astype(str).value_counts().items()))
        notes.append(
            f"Not drawn: {_count(len(bad), 'record')} that did not end ok ({statuses}; listed under "
            f"'Cases that did not end ok')."
        )


def _ok(scope: pd.DataFrame) -> pd.DataFrame:
    """The ok records of ``scope`` with ``variant`` and ``oracle_calls`` (per task) columns."""
    return with_variants(scope[scope["status"] == "ok"])


def _measured(data: pd.DataFrame, column: str, what: str, notes: list[str], log: bool = True) -> pd.DataFrame:
    """Rows with a finite (and, for a log axis, positive) ``column``; the caption counts the others."""
    values = pd.to_numeric(_column(data, column), errors="coerce")
    missing = ~np.isfinite(values.to_numpy(dtype=float))
    if missing.any():
        notes.append(f"Not drawn: {_count(int(missing.sum()), 'ok record')} without {what} (not measured).")
    data = data[~missing]
    if log:
        low = pd.to_numeric(data[column]) <= 0
        if low.any():
            notes.append(f"Not drawn: {_count(int(low.sum()), 'value')} of {what} at 0 or below (log axis).")
        data = data[~low]
    return data


def _spectrum_words(params: dict) -> dict:
    """A problem's spectrum in words ("clustered, 5 distinct eigenvalues"), one descriptor instead of two."""
    if "spectrum" not in params:
        return params
    out = {k: v for k, v in params.items() if k not in ("spectrum", "distinct")}
    spectrum, distinct = params.get("spectrum") or "geometric", params.get("distinct")
    count = distinct if distinct is not None else params.get("dim")
    out["spectrum"] = f"{spectrum}, {count} distinct eigenvalues" if count is not None else spectrum
    return out


def _descriptors(data: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a record was run on and with, one text column per parameter: (the problem's, the options')."""
    params = [_spectrum_words(p) if isinstance(p, dict) else {} for p in _column(data, "problem_params")]
    problem = {k: [_text(p.get(k)) for p in params] for k in sorted({k for p in params for k in p} - {"formulation"})}
    for name in _RECORD_SETTING_FIELDS:
        if name in data:
            problem[name] = [_text(v) for v in data[name]]
    options = [o if isinstance(o, dict) else {} for o in _column(data, "options")]
    option = {k: [_text(o.get(k)) for o in options] for k in sorted({k for o in options for k in o} - _CURVE_OPTIONS)}
    return pd.DataFrame(problem, index=data.index), pd.DataFrame(option, index=data.index)


def _distinguish(data: pd.DataFrame, keys: list[str]) -> tuple[pd.Series, pd.Series]:
    """Labels telling apart records that share ``keys`` (a figure's panels, curves and x): (setting, option).

    Parameters are added one at a time, the problem's first (dimensions, lam, ...: they make a panel), then
    the options' (damping, inner_lr, ...: they make a curve), each only if it differs within a group of
    records that would otherwise be drawn as one point; so the labels stay empty where nothing clashes.
    """
    work = pd.DataFrame({f"key{i}": _column(data, k).map(_text) for i, k in enumerate(keys)}, index=data.index)
    problem, option = _descriptors(data)
    labels = []
    for frame in (problem, option):
        chosen = []
        for name in frame.columns:
            clash = work.duplicated(keep=False)
            if not clash.any():
                break
            groups = pd.concat([work[clash], frame.loc[clash, [name]]], axis=1).groupby(list(work.columns))
            if groups[name].nunique().max() > 1:
                chosen.append(name)
                work[f"{len(work.columns)}"] = frame[name]
        labels.append(pd.Series([", ".join(f"{n}={frame.at[i, n]}" for n in chosen) for i in data.index], data.index))
    return labels[0], labels[1]


#: the sweep whose linear records are least-compute points found by search (``metabench/sweep/table1.py``): they
#: are read in the Table 1 section, not drawn against K (three neighbouring K per point are no curve)
SEARCH_SWEEP = "table1"


def _without_search_points(scope: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    if "sweep" not in scope:
        return scope
    search = scope["sweep"] == SEARCH_SWEEP
    if search.any():
        notes.append(
            f"The {_count(int(search.sum()), 'record')} of the {SEARCH_SWEEP} sweep (least-compute points, their "
            "neighbours, floors and a memory block) are read in the Table 1 section, not drawn against K here."
        )
    return scope[~search]


def _median_of_repeats(data: pd.DataFrame, keys: list[str], ys: list[str], notes: list[str]) -> pd.DataFrame:
    """One row per ``keys``: records that still coincide are repeats of one case; draw their median."""
    counts = data.groupby(keys, sort=False)[keys[0]].transform("size")
    if (counts <= 1).all():
        return data
    repeated = data[counts > 1]
    points = repeated.groupby(keys, sort=False).ngroups
    notes.append(
        f"{_count(points, 'point')} {'is the median' if points == 1 else 'are medians'} of {len(repeated)} "
        "records of identical cases (repeated runs)."
    )
    medians = data.groupby(keys, sort=False)[ys].transform("median")
    data = data.assign(**{y: medians[y] for y in ys})
    return data.drop_duplicates(keys)


def _same_across(data: pd.DataFrame, dim: str, keys: list[str], ys: list[str]) -> bool:
    """Whether every curve point has the same values (within ``RTOL``) at every level of ``dim`` it has."""
    if data[dim].nunique() < 2:
        return False
    for _, group in data.groupby([data[k].map(_text) for k in keys], sort=False):
        for y in ys:
            values = pd.to_numeric(group[y], errors="coerce").to_numpy(dtype=float)
            if not all(_agree(values[0], v) for v in values[1:]):
                return False
    return True


def _algorithm_rank(algorithm: str) -> tuple[int, str]:
    order = list(ALGORITHM_COLOURS)
    return (order.index(algorithm) if algorithm in order else len(order), str(algorithm))


def _solver_name(solver) -> str:
    return variant_label("x", solver if isinstance(solver, str) else None)[3:-1]  # "GD", "Nesterov", ...


def _curves(data: pd.DataFrame, *, solver: bool, steps: bool = False, extra: pd.Series | None = None) -> pd.Series:
    """Curve names: the algorithm and what it was run with (``imaml, CG 5``; ``truncated, T = 10``)."""
    names = []
    for i, row in data.iterrows():
        parts = [str(row["algorithm"])]
        if solver and isinstance(row.get("inner_solver"), str) and row["inner_solver"] != "gd":
            parts.append(_solver_name(row["inner_solver"]))
        if steps:
            parts.append(f"K = {_num(row['inner_steps'])}")
        for column, template in (("truncate", "T = {}"), ("cg_iters", "CG {}"), ("neumann_iters", "N = {}")):
            value = pd.to_numeric(pd.Series([row.get(column)]), errors="coerce").iloc[0]
            if np.isfinite(value):
                parts.append(template.format(_num(value)))
        if extra is not None and extra[i]:
            parts.append(extra[i])
        names.append(", ".join(parts))
    return pd.Series(names, index=data.index, dtype=object)


def _curve_order(data: pd.DataFrame) -> list[str]:
    """Curve names in a stable order: algorithm (the colour table's order), solver, then T, CG, N, name."""

    def key(row):
        numbers = [pd.to_numeric(pd.Series([row.get(c)]), errors="coerce").iloc[0] for c in _CASE_KEYS[2:]]
        numbers = [(0, v) if np.isfinite(v) else (1, 0.0) for v in numbers]
        return (_algorithm_rank(row["algorithm"]), _text(row.get("inner_solver")), numbers, row["curve"])

    firsts = data.drop_duplicates("curve")
    return [row["curve"] for _, row in sorted(firsts.iterrows(), key=lambda item: key(item[1]))]


def _coinciding(data: pd.DataFrame, order: list[str], x: str, y: str, panels: list[str]) -> list[list[str]]:
    """Groups of curves whose points agree within ``RTOL`` at every (panel, x) they share (2 at least)."""
    points: dict[str, dict[tuple, dict]] = {}
    for keys, group in data.groupby(panels + ["curve"], sort=False):
        *panel, name = keys
        points.setdefault(name, {})[tuple(panel)] = dict(zip(group[x].astype(float), group[y].astype(float)))

    def same(a: str, b: str) -> bool:
        common = [(p, x) for p in set(points[a]) & set(points[b]) for x in points[a][p].keys() & points[b][p].keys()]
        return len(common) >= 2 and all(_agree(points[a][p][x], points[b][p][x]) for p, x in common)

    names = [n for n in order if n in points]
    groups: list[list[str]] = []
    for name in names:
        for group in groups:
            if all(same(name, member) for member in group):
                group.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def _coincidences(data: pd.DataFrame, order: list[str], x: str, y: str) -> dict[tuple[str, str], list[list[str]]]:
    """Per panel (``row``, ``col``), the groups of curves that coincide there."""
    found = {}
    for (row, col), part in data.groupby(["row", "col"], sort=False):
        groups = _coinciding(part, order, x, y, [])
        if groups:
            found[(row, col)] = groups
    return found


def _coincide_note(found: dict[tuple[str, str], list[list[str]]], data: pd.DataFrame, x_name: str) -> str | None:
    """The caption's words for coinciding curves: each group once, with the panels it holds in unless it holds
    in every panel that draws all of its curves."""
    if not found:
        return None
    held: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for panel, groups in found.items():
        for group in groups:
            held.setdefault(tuple(group), []).append(panel)
    drawn = {panel: set(part["curve"]) for panel, part in data.groupby(["row", "col"], sort=False)}
    parts = []
    for group, panels in held.items():
        everywhere = [p for p, curves in drawn.items() if set(group) <= curves]
        text = " = ".join(group)
        if set(panels) != set(everywhere):
            text += " (in " + "; ".join(" | ".join(t for t in p if t) for p in sorted(panels)) + ")"
        parts.append(text)
    return (
        f"Coinciding curves (equal within {RTOL:g} relative at every {x_name} they share; distinct markers and "
        f"dashes keep each visible): {'; '.join(parts)}."
    )


# --- drawing ------------------------------------------------------------------------------------------------


def _styles(order: list[str]) -> dict[str, tuple[str, tuple]]:
    """A marker and a dash pattern per curve, no two curves of a figure alike."""
    return {name: (_MARKERS[i % len(_MARKERS)], _DASHES[i % len(_DASHES)]) for i, name in enumerate(order)}


def _linestyle(dashes: tuple):
    return "-" if not dashes else (0, dashes)


def _draw(
    data: pd.DataFrame,
    *,
    x: str,
    y: str,
    order: list[str],
    colours: dict[str, str],
    row_order: list[str],
    col_order: list[str],
    sharex=True,
    sharey=True,
    sort: bool = True,
    lines: bool = True,
    markevery=None,
    height: float = 2.8,
    aspect: float = 1.3,
    legend_title: str = "curve",
    legend_linestyle=None,
    coinciding: dict[tuple[str, str], list[list[str]]] | None = None,
):
    """A grid of panels (``row``/``col`` columns of ``data``), one seaborn line per curve and panel.

    ``coinciding`` (groups of curves by panel, as ``_coincidences`` gives them): each later member of a group
    gets a smaller marker and a thinner line, so that the shapes nest instead of hiding one another.
    """
    sizes: dict[tuple[str, str, str], tuple[float, float]] = {}  # (marker size, line width)
    for (row, col), groups in (coinciding or {}).items():
        for group in groups:
            for k, name in enumerate(group):
                sizes[(row, col, name)] = _NESTED[min(k, len(_NESTED) - 1)]
    grid = sns.FacetGrid(
        data,
        row="row",
        col="col",
        row_order=row_order,
        col_order=col_order,
        sharex=sharex,
        sharey=sharey,
        height=height,
        aspect=aspect,
        despine=False,
    )
    styles = _styles(order)
    for i, row in enumerate(row_order):
        for j, col in enumerate(col_order):
            ax = grid.axes[i, j]
            part = data[(data["row"] == row) & (data["col"] == col)]
            title = " | ".join(t for t in (row, col) if t)
            if len(title) > 50:  # row and column on lines of their own, wrapped: a title must not run into the legend
                title = "\n".join(line for t in (row, col) if t for line in textwrap.wrap(t, 42))
            ax.set_title(title)
            if part.empty:
                ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", color="0.5")
            for name in order:
                curve = part[part["curve"] == name]
                if curve.empty:
                    continue
                marker, dashes = styles[name]
                size = sizes.get((row, col, name), (6.0, 1.5))
                sns.lineplot(
                    data=curve,
                    x=x,
                    y=y,
                    ax=ax,
                    estimator=None,
                    sort=sort,
                    legend=False,
                    color=colours[name],
                    marker=marker,
                    linestyle=_linestyle(dashes) if lines else "none",
                    markerfacecolor="none",
                    markeredgecolor=colours[name],
                    markeredgewidth=1.1,
                    markersize=size[0],
                    linewidth=size[1],
                    markevery=markevery,
                    alpha=0.9,
                )
                ax.lines[-1].set_label(name)
    drawn = [name for name in order if name in set(data["curve"])]
    handles = {
        name: Line2D(
            [],
            [],
            color=colours[name],
            marker=styles[name][0],
            linestyle=legend_linestyle(name) if legend_linestyle else _linestyle(styles[name][1]),
            markerfacecolor="none",
            markeredgecolor=colours[name],
            markeredgewidth=1.1,
        )
        for name in drawn
    }
    return grid, lambda: _finish(grid, handles, drawn, legend_title)


def _finish(grid, handles: dict, order: list[str], title: str):
    """The legend right of the panels, outside the data; last, so the layout accounts for every label."""
    grid.add_legend(legend_data=handles, label_order=order, title=title)
    grid.tight_layout()  # within the room add_legend kept on the right
    return grid.figure


def _tick(value: float) -> str:
    """A log-axis tick label short enough for neighbours not to collide: 316, 3.2e3, 1e4."""
    if value < 1000 or not math.isfinite(value):
        return _num(value)
    exponent = int(math.floor(math.log10(value)))
    mantissa = float(f"{value / 10**exponent:.2g}")
    return f"{mantissa:g}e{exponent}" if mantissa != 1 else f"1e{exponent}"


def _log_ticks(axes, axis: str, values) -> None:
    """Log scale with ticks at the measured values (decades where there are too many of them)."""
    ticks = sorted(set(v for v in _finite(values) if v > 0))
    for ax in np.ravel(axes):
        which = ax.xaxis if axis == "x" else ax.yaxis
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        if 0 < len(ticks) <= _MAX_FIXED_TICKS:
            which.set_major_locator(FixedLocator(ticks))
            which.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
            which.set_minor_locator(NullLocator())


def _byte_ticks(axes, values) -> None:
    """A log memory axis with ticks at powers of two, labelled in B/KiB/MiB/GiB."""
    values = [v for v in _finite(values) if v > 0]
    if not values:
        return
    low, high = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    step = next(s for s in (1, 2, 5, 10, 20) if (high - low) / s <= 7)
    low, high = step * math.floor(low / step), step * math.ceil(high / step)
    high = high if high > low else low + step
    ticks = [2.0**e for e in range(low, high + 1, step)]
    for ax in np.ravel(axes):
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(ticks[0] / 2**0.25, ticks[-1] * 2**0.25)


def _sortable(value) -> float:
    value = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(value) if np.isfinite(value) else math.inf


def _kappa_label(kappa) -> str:
    return f"kappa = {_text(kappa)}"


def _ordered(labels: pd.Series, by: pd.Series | None = None) -> list[str]:
    """Distinct labels, ordered by ``by`` (numbers) where given, else by text."""
    if by is None:
        return sorted(set(labels))
    pairs = sorted({(_sortable(b), lab) for lab, b in zip(labels, by)})
    return list(dict.fromkeys(lab for _, lab in pairs))


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def _setting(problem: str, params) -> str:
    """A problem's label in figures: its name, and its formulation where it has one."""
    formulation = params.get("formulation") if isinstance(params, dict) else None
    return f"{problem} ({formulation})" if formulation else str(problem)


def _colours(data: pd.DataFrame) -> dict[str, str]:
    return {curve: colour_of(str(alg)) for curve, alg in zip(data["curve"], data["algorithm"])}


def _caption(*parts) -> str:
    return " ".join(p for p in parts if p)


def _hypergradient(records: pd.DataFrame) -> pd.DataFrame:
    """Records of one hypergradient each (training runs are drawn in the convergence figure only)."""
    if "mode" in records:
        records = records[records["mode"].fillna("hypergradient") != "train"]
    return records


def _linear(records: pd.DataFrame) -> pd.DataFrame:
    records = _hypergradient(records)
    return records[records["problem"] == LINEAR] if "problem" in records else records.iloc[0:0]


# --- the figures --------------------------------------------------------------------------------------------


def error_vs_steps(records: pd.DataFrame) -> Plot | None:
    """iMAML Figure 2a: relative error to the exact meta-gradient vs inner steps, MAML and iMAML per CG count.

    One panel per kappa (columns) and per inner solver and problem setting (rows), on linear meta-regression.
    """
    notes: list[str] = []
    linear = _without_search_points(_linear(records), notes)
    scope = linear[linear["algorithm"].isin(["maml", "imaml"])]
    if scope.empty or "rel_error_exact" not in scope:
        return None
    _status_note(scope, notes)
    data = _measured(_ok(scope), "rel_error_exact", "an exact error", notes)
    if data.empty:
        return None
    data = data.assign(
        inner_solver=_column(data, "inner_solver", "gd").fillna("gd"),
        kappa=pd.to_numeric(_column(data, "kappa"), errors="coerce"),
    )
    setting, option = _distinguish(data, ["kappa", *_CASE_KEYS])
    solvers = sorted(set(data["inner_solver"]))
    data["curve"] = _curves(data, solver=False, extra=option)
    solver_rows = [f"{_solver_name(s)} inner solver" if len(solvers) > 1 else "" for s in data["inner_solver"]]
    data["row"] = [_join(a, b) for a, b in zip(solver_rows, setting)]
    data["col"] = data["kappa"].map(_kappa_label)
    data = _median_of_repeats(data, ["row", "col", "curve", "inner_steps"], ["rel_error_exact"], notes)
    order = _curve_order(data)
    together = _coincidences(data, order, "inner_steps", "rel_error_exact")
    grid, finish = _draw(
        data,
        x="inner_steps",
        y="rel_error_exact",
        order=order,
        colours=_colours(data),
        row_order=_ordered(data["row"]),
        col_order=_ordered(data["col"], data["kappa"]),
        coinciding=together,
    )
    _log_ticks(grid.axes, "x", data["inner_steps"])
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    grid.set_axis_labels("inner steps K", "relative l2 error (exact)")
    others = sorted(set(linear["algorithm"].dropna().astype(str)) - {"maml", "imaml"}, key=_algorithm_rank)
    left_out = (
        f"Not drawn here: {_listing(others)} (their errors are in the results tables and, for compute and memory, "
        "in the next figure)."
        if others
        else None
    )
    caption = _caption(
        "Relative l2 error to the exact meta-gradient vs inner steps K on linear meta-regression, MAML and "
        "iMAML with one curve per CG iteration count (iMAML Figure 2a); one panel per kappa"
        + (", rows by inner solver" if len(solvers) > 1 else "")
        + (", rows by problem setting" if any(setting) else "")
        + ".",
        left_out,
        _coincide_note(together, data, "K"),
        *notes,
    )
    return Plot(finish(), caption)


_METRICS = {
    "oracle_calls": ("compute", "oracle calls per task"),
    "live_peak_bytes": ("memory", "peak live-tensor memory"),
}


def compute_memory_vs_steps(records: pd.DataFrame) -> Plot | None:
    """iMAML Figure 2b: oracle calls and peak live-tensor memory vs inner steps on linear meta-regression.

    Every algorithm measured there, one curve per truncation T, CG count and Neumann terms N; a column per
    measure, rows by inner solver (and kappa, unless compute and memory were checked to agree across it).
    """
    notes: list[str] = []
    scope = _without_search_points(_linear(records), notes)
    if scope.empty:
        return None
    _status_note(scope, notes)
    data = _ok(scope)
    if "oracle_calls" not in data:
        data["oracle_calls"] = np.nan
    if "live_peak_bytes" not in data:
        data["live_peak_bytes"] = np.nan
    measured = {m: np.isfinite(pd.to_numeric(data[m], errors="coerce").to_numpy(dtype=float)) for m in _METRICS}
    data = data[measured["oracle_calls"] | measured["live_peak_bytes"]]
    if data.empty:
        return None
    data = data.assign(
        inner_solver=_column(data, "inner_solver", "gd").fillna("gd"),
        kappa=pd.to_numeric(_column(data, "kappa"), errors="coerce"),
    )
    setting, option = _distinguish(data, ["kappa", *_CASE_KEYS])
    data["curve"] = _curves(data, solver=False, extra=option)
    solvers = sorted(set(data["inner_solver"]))
    data["base_row"] = [
        _join(f"{_solver_name(s)} inner solver" if len(solvers) > 1 else "", t)
        for s, t in zip(data["inner_solver"], setting)
    ]
    kappas = sorted(set(_finite(data["kappa"]))) if "kappa" in data else []
    collapsed = _same_across(data, "kappa", ["base_row", "curve", "inner_steps"], list(_METRICS))
    kappa_note = None
    if collapsed:
        data = data.sort_values("kappa", kind="stable").drop_duplicates(["base_row", "curve", "inner_steps"])
        kappa_note = (
            f"Compute and memory do not depend on kappa here: the values at kappa = {', '.join(map(_num, kappas))} "
            f"agree within {RTOL:g} relative for every curve and K (checked), so each point is drawn once."
        )
        data["row"] = data["base_row"]
    else:
        data["row"] = [_join(b, _kappa_label(k)) for b, k in zip(data["base_row"], data["kappa"])]
    data = _median_of_repeats(data, ["row", "curve", "inner_steps"], list(_METRICS), notes)
    long = []
    for metric, (name, what) in _METRICS.items():
        part = _measured(data, metric, f"a {name} measure ({what})", notes)
        long.append(part.assign(col=name, value=pd.to_numeric(part[metric]).astype(float)))
    long = pd.concat(long, ignore_index=True)
    if long.empty:
        return None
    order = _curve_order(long)
    by_row = {r: (b, _sortable(k)) for r, b, k in zip(data["row"], data["base_row"], data["kappa"])}
    row_order = sorted(set(long["row"]), key=lambda r: (*by_row[r], r))
    col_order = [name for name, _ in _METRICS.values() if name in set(long["col"])]
    together = _coincidences(long, order, "inner_steps", "value")
    grid, finish = _draw(
        long,
        x="inner_steps",
        y="value",
        order=order,
        colours=_colours(long),
        row_order=row_order,
        col_order=col_order,
        sharey="col",
        coinciding=together,
    )
    _log_ticks(grid.axes, "x", long["inner_steps"])
    for j, name in enumerate(col_order):
        column = grid.axes[:, j]
        if name == "memory":
            _byte_ticks(column, long.loc[long["col"] == name, "value"])
        else:
            for ax in column:
                ax.set_yscale("log")
        for ax in column:
            ax.set_ylabel("oracle calls per task" if name == "compute" else "peak live-tensor memory")
    for ax in grid.axes[-1]:
        ax.set_xlabel("inner steps K")
    algorithms = [a for a, _ in sorted({(a, _algorithm_rank(a)) for a in long["algorithm"]}, key=lambda p: p[1])]
    caption = _caption(
        "Compute (oracle calls per task: inner and outer gradients, Hessian-vector and mixed products) and peak "
        f"live-tensor memory vs inner steps K on linear meta-regression (iMAML Figure 2b): {_listing(algorithms)}, "
        "one curve per truncation length T, CG iteration count and Neumann terms N"
        + (", rows by inner solver" if len(solvers) > 1 else "")
        + ("" if collapsed else (", rows by kappa" if len(kappas) > 1 else f" at kappa = {_num(kappas[0])}"))
        + (", rows by problem setting" if any(setting) else "")
        + ".",
        kappa_note,
        _coincide_note(together, long, "K"),
        *notes,
    )
    return Plot(finish(), caption)


def least_compute_vs_kappa(records: pd.DataFrame, targets) -> Plot | None:
    """Least oracle calls reaching each target error vs kappa (a panel per target), with fitted power laws.

    ``records`` are the linear meta-regression records (a Table 1 sweep); the least compute is taken among the
    measured cases of each variant (any K, T and CG count) per problem setting (rows, where there are several).
    """
    scope = _linear(records)
    if scope.empty or "rel_error_exact" not in scope:
        return None
    data = _ok(scope)
    data = data[np.isfinite(pd.to_numeric(data["rel_error_exact"], errors="coerce").to_numpy(dtype=float))]
    if data.empty or "oracle_calls" not in data:
        return None
    data = data.assign(inner_solver=_column(data, "inner_solver", "gd").fillna("gd"))
    setting, _ = _distinguish(data, ["kappa", *_CASE_KEYS])
    best = []
    for label in sorted(set(setting)):
        part = least_compute(data[setting == label], targets)
        best.append(part.assign(row=label))
    best = pd.concat(best, ignore_index=True)
    if best.empty:
        return None
    best["col"] = [f"target error {_num(t)}" for t in best["target"]]
    best["curve"] = best["variant"]
    best["algorithm"] = [v.split(" ")[0] for v in best["variant"]]
    reached = best[best["reached"]]
    if reached.empty:
        return None
    ranks = {v: (_algorithm_rank(v.split(" ")[0]), v) for v in best["variant"]}
    order = sorted(set(reached["variant"]), key=lambda v: ranks[v])
    col_order = [f"target error {_num(t)}" for t in sorted(set(best["target"]), reverse=True)]
    colours = {v: colour_of(v) for v in order}
    grid, finish = _draw(
        reached,
        x="kappa",
        y="cost",
        order=order,
        colours=colours,
        row_order=_ordered(best["row"]),
        col_order=col_order,
        lines=False,
        legend_linestyle=lambda variant: "--" if "Nesterov" in variant else "-",
        legend_title="variant (points; line: fit)",
    )
    for i, row in enumerate(_ordered(best["row"])):
        for j, col in enumerate(col_order):
            ax = grid.axes[i, j]
            part = reached[(reached["row"] == row) & (reached["col"] == col)]
            for variant in order:
                group = part[(part["variant"] == variant) & (part["kappa"] >= 10)]
                fit = fit_power_law(group["kappa"], group["cost"])
                if np.isfinite(fit.exponent):
                    xs = np.geomspace(group["kappa"].min(), group["kappa"].max(), 20)
                    ax.plot(
                        xs,
                        np.exp(fit.log_intercept) * xs**fit.exponent,
                        color=colours[variant],
                        lw=1,
                        ls="--" if "Nesterov" in variant else "-",
                        label=f"fit: {variant}",
                    )
    _log_ticks(grid.axes, "x", best["kappa"])
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    grid.set_axis_labels("condition number kappa", "least oracle calls per task")
    missed = []
    for (row, variant), group in best[~best["reached"]].groupby(["row", "variant"], sort=True):
        by_kappas: dict[str, list[float]] = {}
        for target, part in group.groupby("target"):
            by_kappas.setdefault(_listing([_num(k) for k in sorted(part["kappa"])]), []).append(target)
        spans = []
        for kappas, ts in sorted(by_kappas.items(), key=lambda kv: -max(kv[1])):
            targets_text = _listing([_num(t) for t in sorted(ts, reverse=True)])
            spans.append(f"kappa {kappas} ({'target' if len(ts) == 1 else 'targets'} {targets_text})")
        missed.append((row, ranks[variant], f"{variant}{f' ({row})' if row else ''}: {', '.join(spans)}"))
    left_out = "No point where a variant never reached the target: " + "; ".join(m[-1] for m in sorted(missed)) + "."
    caption = _caption(
        "Least oracle calls per task among the measured cases (any K, T and CG count) reaching each target "
        "relative error vs kappa, one panel per target, with each variant's power law fitted on kappa >= 10 "
        "(solid: GD inner solver, dashed: Nesterov)" + ("; rows by problem setting" if any(best["row"]) else "") + ".",
        left_out if missed else None,
    )
    return Plot(finish(), caption)


def memory_vs_steps_bilevel(records: pd.DataFrame) -> Plot | None:
    """RM-MetaL Figure 2: peak live-tensor memory vs inner steps on every problem but linear meta-regression.

    A row per problem setting (the quadratic bilevel problem, each formulation of a few-shot network), a column
    per kappa unless the memory was checked to agree across kappa; every algorithm measured there, one curve per
    CG count, T and N.
    """
    if "problem" not in records:
        return None
    scope = _hypergradient(records)
    scope = scope[scope["problem"] != LINEAR]
    if scope.empty:
        return None
    notes: list[str] = []
    _status_note(scope, notes)
    data = _measured(_ok(scope), "live_peak_bytes", "a memory measure", notes)
    if data.empty:
        return None
    data = data.assign(
        problem_label=[_setting(p, q) for p, q in zip(data["problem"], _column(data, "problem_params"))],
        kappa=pd.to_numeric(_column(data, "kappa"), errors="coerce"),
    )
    setting, option = _distinguish(data, ["problem_label", "kappa", *_CASE_KEYS])
    data["curve"] = _curves(data, solver=True, extra=option)
    data["row"] = [_join(p, s) for p, s in zip(data["problem_label"], setting)]
    kappas = sorted(set(_finite(data["kappa"])))
    collapsed = _same_across(data, "kappa", ["row", "curve", "inner_steps"], ["live_peak_bytes"])
    if collapsed:
        data = data.sort_values("kappa", kind="stable").drop_duplicates(["row", "curve", "inner_steps"])
        data["col"] = ""
        notes.insert(
            0,
            f"Memory does not depend on kappa here: the values at kappa = {', '.join(map(_num, kappas))} agree "
            f"within {RTOL:g} relative for every curve and K (checked), so each point is drawn once.",
        )
    else:
        data["col"] = data["kappa"].map(_kappa_label) if len(kappas) > 1 else ""
        if len(kappas) == 1:
            where = "" if data["kappa"].notna().all() else " where the problem has a kappa"
            notes.insert(0, f"All at kappa = {_num(kappas[0])}{where}.")
    data = _median_of_repeats(data, ["row", "col", "curve", "inner_steps"], ["live_peak_bytes"], notes)
    order = _curve_order(data)
    row_order = _ordered(data["row"])
    together = _coincidences(data, order, "inner_steps", "live_peak_bytes")
    grid, finish = _draw(
        data,
        x="inner_steps",
        y="live_peak_bytes",
        order=order,
        colours=_colours(data),
        row_order=row_order,
        col_order=_ordered(data["col"], data["kappa"]),
        sharey="row",
        aspect=1.5,
        coinciding=together,
    )
    _log_ticks(grid.axes, "x", data["inner_steps"])
    for i, row in enumerate(row_order):
        _byte_ticks(grid.axes[i], data.loc[data["row"] == row, "live_peak_bytes"])
    grid.set_axis_labels("inner steps K", "peak live-tensor memory")
    caption = _caption(
        "Peak live-tensor memory vs inner steps K (RM-MetaL Figure 2), one row per problem setting"
        + ("" if collapsed or len(kappas) < 2 else ", one column per kappa")
        + "; every algorithm measured there, one curve per CG iteration count, truncation length T and Neumann "
        "terms N.",
        _coincide_note(together, data, "K"),
        *notes,
    )
    return Plot(finish(), caption)


def convergence(records: pd.DataFrame) -> Plot | None:
    """F(theta_t) - F* over outer steps, against wall time and against oracle calls (training records).

    A row per problem setting, one curve per run (algorithm, K and what else differs between runs); runs that
    diverged are drawn up to where they stopped and marked so.
    """
    if "trajectory" not in records:
        return None
    runs = records[records["trajectory"].apply(lambda t: isinstance(t, dict) and "objective_gap" in t)]
    notes: list[str] = []
    drawn = runs[runs["status"].isin(["ok", "diverged"])]
    if len(runs) > len(drawn):
        notes.append(f"Not drawn: {_count(len(runs) - len(drawn), 'training run')} that ended neither ok nor diverged.")
    if drawn.empty:
        return None
    drawn = drawn.assign(
        problem_label=[_setting(p, q) for p, q in zip(drawn["problem"], _column(drawn, "problem_params"))],
        inner_solver=_column(drawn, "inner_solver", "gd").fillna("gd"),
    )
    setting, option = _distinguish(drawn, ["problem_label", *_CASE_KEYS])
    drawn["curve"] = _curves(drawn, solver=True, steps=True, extra=option)
    drawn["curve"] = [c + (", diverged" if s == "diverged" else "") for c, s in zip(drawn["curve"], drawn["status"])]
    drawn["row"] = [_join(p, s) for p, s in zip(drawn["problem_label"], setting)]
    seen: dict[tuple, int] = {}
    rows, lost = [], 0
    for (_, run), row_label in zip(drawn.iterrows(), drawn["row"]):
        seen[(row_label, run["curve"])] = seen.get((row_label, run["curve"]), 0) + 1
        name = run["curve"] + (
            f" (record {seen[(row_label, run['curve'])]})" if seen[(row_label, run["curve"])] > 1 else ""
        )
        traj = run["trajectory"]
        columns = [traj.get("objective_gap") or [], traj.get("wall_time_s") or [], traj.get("oracle_calls") or []]
        for gap, seconds, calls in zip(*columns):
            if gap is None or not np.isfinite(gap) or gap <= 0:
                lost += 1
                continue
            for col, value in (("hypergradient wall time", seconds), ("oracle calls", calls)):
                rows.append(
                    {"row": row_label, "col": col, "curve": name, "algorithm": run["algorithm"], "x": value, "gap": gap}
                )
    data = pd.DataFrame(rows)
    if lost:
        notes.append(f"Not drawn: {_count(lost, 'outer step')} whose gap is unavailable, 0 or below (log axis).")
    if data.empty:
        return None
    data = data[data["x"].notna()]
    firsts = drawn.assign(curve=drawn["curve"]).drop_duplicates("curve")
    order = [c for c in _curve_order(firsts) if c in set(data["curve"])]
    order += sorted(set(data["curve"]) - set(order))
    grid, finish = _draw(
        data,
        x="x",
        y="gap",
        order=order,
        colours={c: colour_of(str(a)) for c, a in zip(data["curve"], data["algorithm"])},
        row_order=_ordered(data["row"]),
        col_order=["hypergradient wall time", "oracle calls"],
        sharex="col",
        sharey="row",
        sort=False,
        markevery=0.1,
        aspect=1.4,
        legend_title="run",
    )
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    for ax, label in zip(grid.axes[-1], ["cumulative hypergradient wall time (s)", "cumulative oracle calls per task"]):
        ax.set_xlabel(label)
    for ax in grid.axes[:, 0]:
        ax.set_ylabel("F(theta_t) - F*")
    diverged = int((drawn["status"] == "diverged").sum())
    caption = _caption(
        "Meta-training: exact objective gap F(theta_t) - F* against cumulative hypergradient wall time and "
        "oracle calls, one row per problem setting and one curve per run (markers on every tenth of a run).",
        f"{_count(diverged, 'run')} that diverged {'is' if diverged == 1 else 'are'} drawn up to where "
        f"{'it' if diverged == 1 else 'they'} stopped (marked 'diverged')."
        if diverged
        else None,
        *notes,
    )
    return Plot(finish(), caption)

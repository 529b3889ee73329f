"""Export stored records as one flat table (CSV or Parquet) for pandas, R, spreadsheets and SQL engines.

Columns, in order:

1. every field of ``RECORD_FIELDS``, in that order, even where no record has it (then all null);
   a dict field (``options``, ``problem_params``, ``machine``, ``trajectory``) holds its JSON text;
2. fields of the records that ``RECORD_FIELDS`` does not name (records of newer code), in first-seen order;
3. the dict fields flattened, one column per key: ``options.cg_iters``, ``problem_params.kappa``,
   ``machine.cpu_model`` (nested dicts as ``a.b.c``), in the order of their parent field, keys in first-seen
   order. ``trajectory`` is not flattened: its lists over outer steps stay JSON text in the one column.

Cell values: lists are JSON text; a column whose values are all integers is an integer column (nullable), all
numbers a float column, all booleans a boolean column, all strings a string column; a column mixing kinds (a
``seed`` given as text in an invalid case beside integer seeds) holds JSON text, so nothing is coerced silently.
Missing values are null (an empty CSV field). Read back with ``pandas.read_csv(path)`` or
``pandas.read_parquet(path)``; in CSV an empty string reads back as null, and so do strings pandas takes for
null by default ("NA", "null", ...) unless read with ``keep_default_na=False, na_values=[""]``.

Parquet needs pyarrow (``pip install "metabench[export]"``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from metabench.results import RECORD_FIELDS, read_records

__all__ = ["FORMATS", "ExportError", "export_records", "export_table", "read_store", "resolve_format", "write_table"]

FORMATS = ("csv", "parquet")
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Dict fields kept as JSON text only, not flattened into columns.
_NOT_FLATTENED = ("trajectory",)
_INT64 = 2**63 - 1


class ExportError(ValueError):
    """Bad input to an export (no records, an unknown format, parquet without pyarrow): the message says what."""


def read_store(paths: str | os.PathLike | Iterable[str | os.PathLike], *, problems: list | None = None) -> list[dict]:
    """The records of results files or folders of ``*.jsonl``, as ``load_records`` reads them, as plain dicts
    (so integers stay integers and nulls None, which a DataFrame would blur)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.jsonl")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"no results at {p}")
    return [r for f in files for r in read_records(f, problems=problems)]


def _flatten(prefix: str, value: dict, into: dict) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if isinstance(item, dict) and item:
            _flatten(name, item, into)
        else:
            into[name] = item


def _json(value) -> str:
    return json.dumps(value, allow_nan=False, default=str, separators=(",", ":"))


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -_INT64 - 1 <= value <= _INT64 else "big"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "other"


def _column(values: list):
    """A pandas Series of one column's values with the narrowest type that holds them all exactly."""
    import pandas as pd

    present = [v for v in values if v is not None]
    kinds = {_kind(v) for v in present}
    if not present:
        return pd.Series([None] * len(values), dtype=object)
    if kinds == {"bool"}:
        return pd.Series(values, dtype="boolean")
    if kinds == {"int"}:
        return pd.Series(values, dtype="Int64")
    if kinds <= {"int", "float"}:
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if kinds == {"str"}:
        return pd.Series(values, dtype=object)
    return pd.Series([None if v is None else _json(v) for v in values], dtype=object)


def export_table(records: Iterable[dict]):
    """The records as one flat pandas DataFrame (the columns and cell types of this module's docstring)."""
    import pandas as pd

    records = list(records)
    extra: dict[str, None] = {}
    for record in records:
        for key in record:
            if key not in RECORD_FIELDS:
                extra.setdefault(key, None)
    top = [*RECORD_FIELDS, *extra]
    flat_rows: list[dict] = []
    flat_names: dict[str, dict[str, None]] = {}  # parent field -> flattened column names, first-seen order
    for record in records:
        flat: dict = {}
        for parent in top:
            value = record.get(parent)
            if isinstance(value, dict) and parent not in _NOT_FLATTENED:
                mine: dict = {}
                _flatten(parent, value, mine)
                names = flat_names.setdefault(parent, {})
                for name in mine:
                    names.setdefault(name, None)
                flat.update(mine)
        flat_rows.append(flat)
    flattened = [name for parent in top for name in flat_names.get(parent, {})]
    data = {}
    for name in top:
        data[name] = _column([_top_value(record.get(name)) for record in records])
    for name in flattened:
        if name in data:  # a top-level field spelled like a flattened one: the record's own field wins
            continue
        data[name] = _column([row.get(name) for row in flat_rows])
    return pd.DataFrame(data, index=pd.RangeIndex(len(records)))


def _top_value(value):
    return _json(value) if isinstance(value, (dict, list, tuple)) else value


def resolve_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format to write ``path`` in: ``fmt``, else from its suffix (.csv, .parquet, .pq); an unknown one, or
    parquet without pyarrow, is an ExportError."""
    path = Path(path)
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise ExportError(f"cannot tell the format from {path.name!r}: give --format csv or --format parquet")
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if fmt == "parquet":
        _require_pyarrow()
    return fmt


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ExportError(
            'parquet export needs pyarrow, which is not installed: pip install "metabench[export]" '
            "(or pip install pyarrow); --format csv needs nothing more"
        ) from None


def write_table(table, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``table`` to ``path`` as csv or parquet (``fmt``, else from the suffix), replacing it whole: the
    file is written next to it first and renamed, so a failed export leaves no half file."""
    path = Path(path)
    fmt = resolve_format(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_records(paths, out: str | os.PathLike, fmt: str | None = None, *, problems: list | None = None):
    """Read the records of ``paths`` (files or folders) and write them to ``out``; return (table, path).

    No records is an ExportError; so is parquet without pyarrow (checked before reading anything).
    """
    out = Path(out)
    fmt = resolve_format(out, fmt)
    records = read_store(paths, problems=problems)
    if not records:
        where = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths))
        raise ExportError(f"no records in {where}")
    table = export_table(records)
    return table, write_table(table, out, fmt)

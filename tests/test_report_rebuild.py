"""Committed reports rebuild from their committed records.

The convention: a committed report ``reports/NAME/`` keeps the records it was built from in
``reports/NAME/results/*.jsonl`` (or ``*.jsonl.gz`` when large, gzip-compressed with mtime=0 so the bytes
are reproducible), and ``metabench report reports/NAME/results --out reports/NAME`` regenerates it. Every
Markdown table of ``report.md`` and ``summary.md`` must come out the same, and so must the set of figure
files (their bytes depend on the matplotlib version, so they are not compared).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metabench.cli import main
from metabench.report import build_report
from metabench.results import StoreWarning, load_records, read_records
from tests.test_report import sweep_records

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (ROOT / "reports").glob("*/results") if p.is_dir())


def markdown_tables(text: str) -> list[list[str]]:
    """The Markdown tables of a document, each as its lines."""
    tables, current = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def figure_files(report_dir: Path) -> set[str]:
    folder = report_dir / "figures"
    return {p.name for p in folder.iterdir() if p.suffix in (".png", ".svg")} if folder.is_dir() else set()


def title_of(report_dir: Path) -> str:
    first = (report_dir / "report.md").read_text().split("\n", 1)[0]
    assert first.startswith("# "), f"{report_dir / 'report.md'} does not start with its title"
    return first[2:]


def assert_rebuilds(report_dir: Path, out: Path) -> None:
    """Rebuild ``report_dir`` from ``report_dir/results`` into ``out``; its tables and figure files must match."""
    records = load_records(report_dir / "results")
    build_report(records, out, title=title_of(report_dir), progress=False)
    for name in ("report.md", "summary.md"):
        committed = markdown_tables((report_dir / name).read_text())
        rebuilt = markdown_tables((out / name).read_text())
        assert len(rebuilt) == len(committed), f"{name}: {len(rebuilt)} tables rebuilt, {len(committed)} committed"
        for i, (new, old) in enumerate(zip(rebuilt, committed)):
            assert new == old, f"{name}, table {i + 1} differs (regenerate {report_dir} with metabench report)"
    assert figure_files(out) == figure_files(report_dir)


@pytest.mark.parametrize(
    "report_dir",
    COMMITTED or [pytest.param(None, marks=pytest.mark.skip(reason="no reports/*/results/ committed yet"))],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_committed_report_rebuilds_from_its_records(report_dir, tmp_path):
    assert (report_dir / "report.md").is_file() and (report_dir / "summary.md").is_file()
    assert_rebuilds(report_dir, tmp_path / "rebuilt")


def store_bytes(records: list[dict], compress: bool) -> bytes:
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    return gzip.compress(data, mtime=0) if compress else data


def grid_records() -> list[dict]:
    """The grid sweep of :func:`committed_style`, its first record naming a fixed machine."""
    grid = sweep_records(kappas=(10.0, 100.0, 1000.0))
    grid[0]["machine"] = {
        "cpu_model": "test cpu",
        "cpu_logical_cores": 2,
        "torch_version": "2",
        "cuda_available": False,
    }
    return grid


def committed_style(tmp_path: Path) -> Path:
    """A report laid out as a committed one, in ``tmp_path/reports/tiny``, built by the command line."""
    report_dir = tmp_path / "reports" / "tiny"
    results = report_dir / "results"
    results.mkdir(parents=True)
    grid = grid_records()
    (results / "grid.jsonl.gz").write_bytes(store_bytes(grid, compress=True))
    training = sweep_records(kappas=(), training=True, sweep="training")
    (results / "training.jsonl").write_bytes(store_bytes(training, compress=False))
    assert main(["report", str(results), "--out", str(report_dir), "--title", "tiny report"]) == 0
    return report_dir


def test_the_convention_on_a_report_built_committed_style(tmp_path):
    report_dir = committed_style(tmp_path)
    assert len(load_records(report_dir / "results")) == len(sweep_records(kappas=(10.0, 100.0, 1000.0))) + 3
    assert figure_files(report_dir) == {
        f"{name}.{ext}"
        for name in (
            "error_vs_steps",
            "compute_memory_vs_steps",
            "least_compute_vs_kappa",
            "memory_vs_steps_bilevel",
            "convergence",
        )
        for ext in ("png", "svg")
    }
    out = tmp_path / "rebuilt"
    assert_rebuilds(report_dir, out)
    for name in ("report.md", "summary.md"):  # not only the tables: the whole text is the same
        assert (out / name).read_text() == (report_dir / name).read_text(), name
    for name in ("report.md", "summary.md", "report.html"):
        assert str(tmp_path) not in (report_dir / name).read_text(), f"{name} holds an absolute path"
    grid = grid_records()
    assert store_bytes(grid, compress=True) == (report_dir / "results" / "grid.jsonl.gz").read_bytes()
    store = report_dir / "results" / "training.jsonl"  # and the check fails when a record changes
    records = read_records(store)
    records[0]["algorithm"] = "maml"
    store.write_bytes(store_bytes(records, compress=False))
    with pytest.raises(AssertionError, match="differs"):
        assert_rebuilds(report_dir, tmp_path / "changed")


def test_report_text_depends_on_neither_hash_seed_nor_dict_order(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    records = sweep_records(kappas=(10.0, 100.0, 1000.0), training=True)
    (results / "a.jsonl").write_bytes(store_bytes(records, compress=False))
    reversed_keys = [
        {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(r.items()))}
        for r in records
    ]
    (tmp_path / "reversed").mkdir()
    (tmp_path / "reversed" / "a.jsonl").write_bytes(store_bytes(reversed_keys, compress=False))
    texts = []
    for seed, source in (("1", results), ("2", tmp_path / "reversed")):
        out = tmp_path / f"out{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        command = [sys.executable, "-m", "metabench", "report", str(source), "--out", str(out)]
        subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
        texts.append([(out / name).read_text() for name in ("report.md", "summary.md")])
    assert texts[0] == texts[1]


def test_a_compressed_store_goes_through_the_same_line_reader(tmp_path):
    good = sweep_records(kappas=(10.0,))[:3]
    data = (json.dumps(good[0]) + "\nnot json\n" + json.dumps(good[1]) + "\n" + json.dumps(good[2]) + "\n").encode()
    (tmp_path / "s.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))
    problems: list = []
    with pytest.warns(StoreWarning, match=r"s\.jsonl\.gz:2: not JSON"):
        assert [r["case_id"] for r in read_records(tmp_path / "s.jsonl.gz", problems=problems)] == [
            r["case_id"] for r in good
        ]
    assert [str(p) for p in problems][0].startswith(f"{tmp_path / 's.jsonl.gz'}:2: not JSON")
    whole = gzip.compress(data * 50, mtime=0)
    (tmp_path / "t.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # cut short
    problems = []
    assert len(read_records(tmp_path / "t.jsonl.gz", problems=problems, warn=False)) == 3  # the rest repeat ids
    assert str(problems[-1]).startswith(f"{tmp_path / 't.jsonl.gz'}: the gzip stream ends early")


def test_a_folder_reads_plain_and_compressed_stores_each_once(tmp_path):
    records = sweep_records(kappas=(10.0,))
    (tmp_path / "a.jsonl").write_bytes(store_bytes(records[:4], compress=False))
    (tmp_path / "b.jsonl.gz").write_bytes(store_bytes(records[4:8], compress=True))
    (tmp_path / "a.jsonl.gz").write_bytes(store_bytes(records[:4], compress=True))  # a copy of a.jsonl
    problems: list = []
    with pytest.warns(StoreWarning, match="a.jsonl.gz: not read: a.jsonl beside it"):
        frame = load_records(tmp_path, problems=problems)
    assert list(frame["case_id"]) == [r["case_id"] for r in records[:8]] and len(problems) == 1


def test_gitignore_keeps_report_records_and_ignores_top_level_results():
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run([git, "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored("results/smoke.jsonl")
    assert not ignored("reports/table1/results/table1.jsonl")
    assert not ignored("reports/table1/results/table1.jsonl.gz")


def test_committed_structure_tables_rebuild_from_their_measurements(tmp_path):
    """reports/structure/structure.md is what ``--from structure.json`` writes (the measurements are committed)."""
    from metabench import structure_tables

    folder = ROOT / "reports" / "structure"
    if not (folder / "structure.json").is_file():
        pytest.skip("reports/structure/ not committed")
    structure_tables.main(["--from", str(folder / "structure.json"), "--out", str(tmp_path)])
    assert (tmp_path / "structure.md").read_text() == (folder / "structure.md").read_text()

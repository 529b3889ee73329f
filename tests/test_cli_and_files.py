"""The command line and the files it reads: sweep files, --limit, exit codes, Ctrl-C, Markdown escaping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from metabench.cli import main
from metabench.report import build_report, summary_markdown
from metabench.report.document import md_text
from metabench.results import read_records
from metabench.sweep import Sweep

TINY_TOML = (
    'name = "{name}"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 3\nn_train = 6\nn_val = 3\n'
    'kappa = 2.0\nlam = 1.0\ninner_lr = "auto"\nmin_run_time = 0.001\n'
)


def tiny_config(tmp_path: Path, grid: str, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY_TOML.format(name=name) + grid)
    return path


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- sweep files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("list.yaml", "- name\n- grid\n", r"list\.yaml must hold a mapping with 'name' and 'grid', got a list"),
        ("str.yaml", "just some words\n", r"str\.yaml must hold a mapping with 'name' and 'grid', got a string"),
        ("num.yml", "3\n", r"num\.yml must hold a mapping .* got a number"),
        ("empty.yaml", "", r"empty\.yaml is empty"),
        ("blank.toml", "\n  \n", r"blank\.toml is empty"),
        ("comments.yaml", "# only a comment\n", r"comments\.yaml is empty"),
        ("comments.toml", "# only a comment\n", r"comments\.toml is empty"),
        ("bad.toml", 'name = "x"\ngrid = [1 2]\n', r"bad\.toml is not valid TOML: .*\(at line 2, column \d+\)"),
        ("bad2.toml", "name = \n", r"bad2\.toml is not valid TOML: .*line 1"),
        ("bad.yaml", "name: x\ngrid: [1, 2\n", r"bad\.yaml is not valid YAML: .*\(line \d+, column \d+\)"),
        ("indent.yaml", "a:\n  b: 1\n c: 2\n", r"indent\.yaml is not valid YAML: .*\(line 3, column 2\)"),
        ("tag.yaml", "name: !!python/object:os.system x\n", r"tag\.yaml is not valid YAML"),
        ("table.toml", 'name = "x"\n[grid]\nalgorithm = ["maml"]\n', r"table\.toml: grid must be .*\[\[grid\]\]"),
        ("keys.yaml", "name: x\ngrid: [{algorithm: [maml]}]\n1: 2\n", r"keys\.yaml: unknown sweep key\(s\) \[1\]"),
        ("noname.yaml", "grid: [{algorithm: [maml]}]\n", r"noname\.yaml: a sweep needs .*'name' missing"),
        ("intname.yaml", "name: 3\ngrid: [{algorithm: [maml]}]\n", r"intname\.yaml: sweep 'name' must be a string"),
        ("defaults.yaml", "name: x\ngrid: [{algorithm: [maml]}]\ndefaults: [1]\n", r"defaults must be a mapping"),
        ("block.yaml", "name: x\ngrid: [3]\n", r"block\.yaml: grid\[0\] must be a dict .* got a number"),
        ("grid.yaml", "name: x\ngrid: {algorithm: [maml]}\n", r"grid must be a non-empty list of blocks"),
    ],
)
def test_bad_sweep_files_are_value_errors_naming_the_file(tmp_path, name, content, match):
    if not name.endswith(".toml"):
        pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        Sweep.from_file(path)
    assert "\n" not in str(info.value)


def test_undecodable_sweep_file(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "x"\n# caf\xe9\n')
    with pytest.raises(ValueError, match=r"latin\.toml is not UTF-8 text: byte 0xe9 .*line 2"):
        Sweep.from_file(path)


def test_missing_sweep_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sweep file .*nope\.toml not found"):
        Sweep.from_file(tmp_path / "nope.toml")


def test_good_yaml_and_toml_still_load(tmp_path):
    pytest.importorskip("yaml")
    yaml_path = tmp_path / "y.yaml"
    yaml_path.write_text(
        "name: y\ndescription: two\ndefaults: {n_tasks: 2, dim: 3, n_train: 6, n_val: 3, kappa: 2.0, lam: 1.0}\n"
        "grid:\n  - algorithm: [maml, imaml]\n    inner_steps: [2]\n"
    )
    sweep = Sweep.from_file(yaml_path)
    assert sweep.name == "y" and sweep.description == "two" and len(sweep.cases()) == 2
    toml_path = tiny_config(tmp_path, '[[grid]]\nalgorithm = ["maml"]\ninner_steps = [1, 2]\n')
    assert len(Sweep.from_file(toml_path).cases()) == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        (["name", "grid"], r"a sweep must be a mapping with 'name' and 'grid', got a list"),
        ("name", r"got a string"),
        (None, r"got nothing"),
        ({"name": 7, "grid": [{"algorithm": ["maml"]}]}, r"sweep 'name' must be a string, got 7"),
        ({"name": "x", "grid": "maml"}, r"grid must be a non-empty list .* got a string"),
        ({"name": "x", "grid": [["maml"]]}, r"grid\[0\] must be a dict .* got a list"),
        ({"name": "x", "grid": [{"algorithm": ["maml"]}], "defaults": [("dim", 3)]}, r"defaults must be a mapping"),
        ({"name": "x", "grid": [{"algorithm": ["maml"]}], "defaults": {3: 4}}, r"defaults: parameter names"),
        ({"name": "x", "grid": [{1: ["maml"]}]}, r"grid\[0\]: parameter names must be strings"),
        ({"name": "x", "grid": [], 2: 3, "nme": 1}, r"unknown sweep key\(s\) \[2, 'nme'\]; accepted"),
    ],
)
def test_from_dict_refuses_bad_shapes(spec, match):
    with pytest.raises(ValueError, match=match):
        Sweep.from_dict(spec)


# --- the command line: --limit, exit codes -----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--limit", "-1"], ["--limit=-1"], ["--limit", "two"], ["--limit", "1.5"]])
def test_limit_must_be_a_count(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "smoke", "--out", str(tmp_path), "--no-progress", *argv])
    assert info.value.code == 2
    assert "argument --limit: must be an integer >= 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_limit_zero_runs_nothing_and_exits_0(tmp_path, capsys):
    config = tiny_config(tmp_path, '[[grid]]\nalgorithm = ["maml"]\ninner_steps = [1, 2]\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress", "--limit", "0"]) == 0
    assert read_records(tmp_path / "r" / "t.jsonl") == []
    assert "2 case(s) of the sweep still to run (--limit)" in capsys.readouterr().err


def test_run_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and all(re.search(rf"^  {code} ", out, re.M) for code in ("0", "1", "2", "130"))


def test_bad_sweep_file_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    (line,) = stderr_lines(capsys)
    assert line.startswith("metabench run: error: sweep file") and "bad.yaml" in line and "got a list" in line
    assert main(["run", "--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "r")]) == 2
    (line,) = stderr_lines(capsys)
    assert "missing.toml" in line and "not found" in line
    unknown = tiny_config(tmp_path, '[[grid]]\nalgorithm = ["maml"]\ninner_stpes = [1]\n', name="typo")
    assert main(["run", "--config", str(unknown), "--out", str(tmp_path / "r")]) == 2
    (line,) = stderr_lines(capsys)
    assert "typo.toml" in line and "unknown sweep parameter" in line
    assert not (tmp_path / "r").exists()


def test_exit_0_for_results_that_are_not_errors(tmp_path, capsys):
    # diverged (a far too large inner_lr) and skipped (fomaml on the bilevel family) are results
    config = tiny_config(
        tmp_path,
        '[[grid]]\nalgorithm = ["maml"]\ninner_steps = [400]\ninner_lr = [50.0]\n'
        '[[grid]]\nalgorithm = ["fomaml"]\nproblem = ["quadratic_bilevel"]\np = [2]\nq = [3]\nrho = [0.1]\n',
    )
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    statuses = sorted(r["status"] for r in read_records(tmp_path / "r" / "t.jsonl"))
    assert statuses == ["diverged", "skipped"], statuses
    assert "first errors" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "statuses, code",
    [
        (["ok", "invalid", "invalid"], 1),
        (["failed", "ok", "ok"], 1),
        (["oom", "diverged", "skipped"], 0),
        (["ok", "ok", "ok"], 0),
    ],
)
def test_exit_code_from_the_statuses_of_new_cases(tmp_path, capsys, monkeypatch, statuses, code):
    import metabench.sweep
    from metabench.results import SCHEMA_VERSION, ResultsStore
    from metabench.sweep.runner import SweepSummary

    def fake_run_sweep(sweep, out_dir, **kwargs):
        store = ResultsStore(Path(out_dir) / f"{sweep.name}.jsonl")
        for case, status in zip(sweep.cases(), statuses):
            error = None if status == "ok" else f"{status}: inner_steps must be >= 1,\ngot 0"
            store.append({**case, "schema_version": SCHEMA_VERSION, "status": status, "error": error})
        counts = {s: statuses.count(s) for s in statuses}
        return SweepSummary(path=store.path, ran=len(statuses), statuses=counts)

    monkeypatch.setattr(metabench.sweep, "run_sweep", fake_run_sweep)
    config = tiny_config(tmp_path, '[[grid]]\nalgorithm = ["maml"]\ninner_steps = [1, 2, 3]\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == code
    err = capsys.readouterr().err
    bad = [s for s in statuses if s in ("failed", "invalid")]
    if bad:
        assert f"metabench run: {len(bad)} {bad[0]} of 3 case(s) run now; first errors:" in err
        line = f"  maml on linear_meta_regression ({bad[0]}): {bad[0]}: inner_steps must be >= 1, got 0\n"
        assert err.count(line) == len(bad)
    else:
        assert "first errors" not in err


def test_exit_1_when_new_cases_fail_and_0_on_the_rerun(tmp_path, capsys):
    config = tiny_config(tmp_path, '[[grid]]\nalgorithm = ["imaml"]\ninner_steps = [2]\ncg_iters = [-1, 2]\n')
    argv = ["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    (bad,) = [r for r in read_records(tmp_path / "r" / "t.jsonl") if r["status"] != "ok"]
    assert bad["status"] in ("failed", "invalid")
    assert f"metabench run: 1 {bad['status']} of 2 case(s) run now; first errors:" in err
    assert f"imaml K=2 CG=-1 on linear_meta_regression kappa=2 ({bad['status']}): " in err
    assert " ".join(bad["error"].split())[:40] in err
    assert main(argv) == 0  # nothing newly run: every case has a record


# --- Ctrl-C ------------------------------------------------------------------------------------------------------


def test_sigint_mid_sweep_prints_one_line_and_exits_130(tmp_path):
    config = tmp_path / "intr.toml"
    config.write_text(
        'name = "intr"\n[defaults]\nproblem = "linear_meta_regression"\nn_tasks = 2\ndim = 6\nn_train = 12\n'
        'n_val = 6\nkappa = 10.0\nlam = 1.0\ninner_lr = "auto"\nmin_run_time = 0.05\n'
        '[[grid]]\nalgorithm = ["maml", "imaml", "fomaml"]\ninner_steps = [1, 2, 3, 4, 5, 6, 7, 8]\n'
    )
    out = tmp_path / "out"
    store = out / "intr.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metabench", "run", "--config", str(config), "--out", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that started the test run in the background ignores SIGINT, and children inherit that: give the
        # child the default disposition, so Python installs its KeyboardInterrupt handler as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(read_records(store)) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    records = [json.loads(line) for line in store.read_text().splitlines()]  # every line parses
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("sweep intr: 24 cases -> ")
    # a record whose write the interrupt caught is cut away by the store: count what is left
    safe = "1 record is" if len(records) == 1 else f"{len(records)} records are"
    assert lines[1:] == [f"metabench run: interrupted; {safe} safe in {store}; run the same command again to resume"]
    assert 1 <= len(records) < 24, "the sweep should have been interrupted part-way"


def test_keyboard_interrupt_in_run_and_report_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    import metabench.report
    import metabench.sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    config = tiny_config(tmp_path, '[[grid]]\nalgorithm = ["maml"]\ninner_steps = [1]\n')
    handler = signal.getsignal(
        signal.SIGINT
    )  # default_int_handler, or SIG_IGN when the run was started in the background
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(metabench.sweep, "run_sweep", interrupted)
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 130
    assert stderr_lines(capsys)[1:] == [
        f"metabench run: interrupted; 1 record is safe in {tmp_path / 'r' / 't.jsonl'}; "
        "run the same command again to resume"
    ]
    monkeypatch.setattr(metabench.report, "build_report", interrupted)
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 130
    (line,) = stderr_lines(capsys)
    assert line.startswith("metabench report: interrupted; ") and "run the same command again" in line
    assert signal.getsignal(signal.SIGINT) is handler  # the handler in place before the call is restored


# --- report on nothing -------------------------------------------------------------------------------------------


def test_report_without_records_exits_2_with_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "rep")]
    assert main(["report", str(tmp_path / "missing"), *out]) == 2
    (line,) = stderr_lines(capsys)
    assert line.startswith("metabench report: error: ") and "missing" in line
    (tmp_path / "none").mkdir()
    assert main(["report", str(tmp_path / "none"), *out]) == 2
    (line,) = stderr_lines(capsys)
    assert "no records in" in line and "no *.jsonl files" in line
    (tmp_path / "none" / "e.jsonl").write_text("")
    assert main(["report", str(tmp_path / "none"), *out]) == 2
    (line,) = stderr_lines(capsys)
    assert "no records in" in line and "hold no complete records" in line
    (tmp_path / "none" / "e.jsonl").write_text('{"foo": 1}\nnot json\n')
    assert main(["report", str(tmp_path / "none"), *out]) == 2
    (line,) = stderr_lines(capsys)  # the store's warnings are folded into the one line
    assert "no records in" in line and "e.jsonl" in line
    assert not (tmp_path / "rep").exists()


# --- Markdown escaping -------------------------------------------------------------------------------------------

EVIL_ERROR = "<script>alert(1)</script>\n| x |"


def _unescaped_pipes(line: str) -> int:
    """The ``|`` in a Markdown line not escaped by an odd run of backslashes."""
    return sum(len(m.group(1)) % 2 == 0 for m in re.finditer(r"(\\*)\|", line))


def _tables(markdown: str) -> list[list[str]]:
    tables, current = [], []
    for line in markdown.split("\n"):
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def evil_records() -> pd.DataFrame:
    from tests.test_report import failing_records

    machine = {"cpu_model": "<b>cpu</b> *x*", "cpu_logical_cores": 2, "torch_version": "2_0", "cuda_available": False}
    evil = [
        {
            "status": "failed",
            "sweep": "table1",
            "problem": "linear_meta_regression",
            "algorithm": "imaml",
            "inner_steps": 3,
            "kappa": 10.0,
            "error": EVIL_ERROR,
            "machine": machine,
        },
        {
            "status": "failed",
            "sweep": "bad`name<i>",
            "problem": "linear_meta_regression",
            "algorithm": "<img src=x>",
            "inner_steps": 2,
            "kappa": 10.0,
            "error": "line one\r\nline two [link](javascript:x) \\| _under_",
            "machine": machine,
        },
    ]
    records = pd.concat([pd.DataFrame(evil), failing_records()], ignore_index=True)
    records["machine"] = [machine] * len(records)
    records["metabench_version"], records["git_commit"] = "0.1<x>", "abc|def"
    return records


def test_md_text_rule():
    assert md_text(EVIL_ERROR) == "&lt;script&gt;alert(1)&lt;/script&gt; \\| x \\|"
    assert md_text("a\\b `c` *d* _e_ [f] & g\r\nh") == "a\\\\b \\`c\\` \\*d\\* \\_e\\_ \\[f\\] &amp; g h"
    assert md_text(1.5) == "1.5" and md_text("plain words 12") == "plain words 12"


def test_markdown_reports_escape_record_text(tmp_path):
    paths = build_report(evil_records(), tmp_path)
    for kind in ("markdown", "summary"):
        text = paths[kind].read_text()
        assert "<script>" not in text and "<img" not in text and "<b>" not in text and "<i>" not in text, kind
        assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| x \\|" in text, kind
        assert "line one line two \\[link\\](javascript:x) \\\\\\| \\_under\\_" in text, kind
        tables = _tables(text)
        assert tables, kind
        for table in tables:
            header = _unescaped_pipes(table[0])
            assert all(_unescaped_pipes(row) == header for row in table), (kind, table)
            assert all(row.endswith("|") for row in table), (kind, table)  # no row broken by a newline
    summary = paths["summary"].read_text()
    assert "## Sweep bad\\`name&lt;i&gt;" in summary and "## Sweep `table1`" in summary
    assert "- &lt;img src=x&gt; (failed): line one line two" in summary
    assert "Machine: &lt;b&gt;cpu&lt;/b&gt; \\*x\\*, 2 cores, torch 2\\_0" in summary
    report = paths["markdown"].read_text()
    assert "Machine: &lt;b&gt;cpu&lt;/b&gt; \\*x\\*, 2 logical cores" in report and "commit abc\\|def." in report
    assert "iMAML Table 1, measured" in report  # the report's own text is left as written
    page = paths["html"].read_text()
    assert "<script>" not in page and "Machine: &lt;b&gt;cpu&lt;/b&gt; *x*, 2 logical cores" in page


def test_summary_of_plain_records_is_unchanged():
    records = pd.DataFrame([{"sweep": "s_1", "status": "ok", "algorithm": "maml", "inner_steps": 2, "kappa": 10.0}])
    text = summary_markdown(records)
    assert "## Sweep `s_1`" in text and "| maml | 2 | 10 | ok |" in text

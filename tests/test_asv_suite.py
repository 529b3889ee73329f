"""The asv suites are discovered and every benchmark runs once (tiny grid), so a broken suite fails CI.

Marked slow (about 80 s of one core): ``.ci/run`` runs it after the default suite, as does ``nox -s slow``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def asv(*args: str, home: Path) -> subprocess.CompletedProcess:
    """asv with the project's config, but its machine file, results and environments under ``home``."""
    config = json.loads((ROOT / "asv.conf.json").read_text())
    config.update(
        repo=str(ROOT),
        benchmark_dir=str(ROOT / "benchmarks"),
        env_dir=str(home / "env"),
        results_dir=str(home / "results"),
        html_dir=str(home / "html"),
    )
    (home / "asv.conf.json").write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(home), "METABENCH_ASV_TINY": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "asv", *args[:1], "--config", str(home / "asv.conf.json"), *args[1:]]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_asv_benchmark_is_discovered_and_runs_once(tmp_path):
    assert asv("machine", "--yes", "--machine", "ci-check", home=tmp_path).returncode == 0
    check = asv("check", "--python=same", home=tmp_path)
    assert check.returncode == 0 and "No problems found" in check.stdout, check.stdout + check.stderr
    run = asv("run", "--python=same", "--quick", "--dry-run", "--show-stderr", "--machine", "ci-check", home=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output  # asv exits 2 when any benchmark fails
    # asv prints "[ 42%] ··· ...rHypergradientQuality.track_saved_bytes   ok": the class name may be cut on the left
    ran = re.findall(r"(\w+)\.(\w+)\s+ok\s*$", output, flags=re.M)
    expected = {
        "LinearHypergradient.time_hypergradient",
        "LinearHypergradient.peakmem_hypergradient",
        "LinearHypergradientQuality.track_rel_error_exact",
        "LinearHypergradientQuality.track_live_peak_bytes",
        "BilevelHypergradient.time_hypergradient",
        "InstrumentOverhead.track_live_tracker_ratio",
    }
    missing = {
        name
        for name in expected
        if not any(name.split(".")[0].endswith(cls) and name.split(".")[1] == method for cls, method in ran)
    }
    assert not missing, f"not run: {missing}\n{output[-3000:]}"
    assert "failed" not in output.lower()

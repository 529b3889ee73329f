"""Very deep autograd graphs are built and freed on a thread with a stack to match (a default 8 MiB stack
crashed the process with a segmentation fault when maml's graph of ~30 000 steps was freed)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from metabench.algorithms.deep_graph import DEEP_STEPS, call_with_stack


def test_shallow_calls_run_inline_and_deep_ones_on_another_thread():
    assert call_with_stack(threading.get_ident, DEEP_STEPS) == threading.get_ident()
    assert call_with_stack(threading.get_ident, DEEP_STEPS + 1) != threading.get_ident()
    assert call_with_stack(lambda: 42, 10**6) == 42


def test_an_exception_on_the_deep_thread_reaches_the_caller():
    def boom():
        raise ValueError("inner_lr too large")

    with pytest.raises(ValueError, match="inner_lr too large"):
        call_with_stack(boom, 10**5)


@pytest.mark.slow
def test_maml_through_30000_steps_does_not_crash_the_process():
    """~20 s: `nox -s slow` or `pytest -m slow`. In a subprocess, so a crash fails this test, not the suite."""
    code = (
        "import torch, metabench as mb\n"
        "p = mb.LinearMetaRegression.generate(n_tasks=1, dim=2, n_train=2, n_val=2, kappa=2.0, lam=1.0, seed=0)\n"
        "hg = mb.get_algorithm('maml', inner_steps=30000, inner_lr=0.1).hypergradient(p, torch.zeros(2).double())\n"
        "print(bool(torch.isfinite(hg.grad).all()), hg.counts.hvps)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "30000"]

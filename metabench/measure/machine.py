"""The machine and code version a measurement was taken on, for records.

``machine_info()`` reads the platform, Python, torch, CPU model, core count, RAM and CUDA device;
``git_commit()`` the checkout's commit (``+dirty`` when there are uncommitted changes).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import psutil
import torch

__all__ = ["cpu_model", "git_commit", "machine_info"]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo on Linux, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """A flat, JSON-friendly description of this machine and its torch build."""
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "ram_total_bytes": psutil.virtual_memory().total,
        "cuda_available": cuda,
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_device_name": torch.cuda.get_device_name() if cuda else None,
    }


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # never take the index lock
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``path`` (default: this package).

    ``"<sha>+dirty"`` when a tracked file differs from HEAD or an untracked Python file exists (code the commit does
    not hold); untracked data, such as the records a sweep is writing into the checkout, do not make it dirty. None
    when ``path`` is not in a git checkout or git is unavailable. Never raises.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if not where.is_dir():
        where = where.parent
    commit = _git(["rev-parse", "HEAD"], where)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    untracked_code = _git(["ls-files", "--others", "--exclude-standard", "--", "*.py"], where)
    return f"{commit}+dirty" if status or untracked_code else commit

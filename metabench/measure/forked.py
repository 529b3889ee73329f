"""Run a function in a forked child, so that a crash there (a segfault inside torch) is a reason, not our death.

``run_forked(fn, timeout_s)`` forks, calls ``fn()`` in the child and sends its (picklable) value back through a
pipe: ``(True, value)``; or ``(False, reason)`` where ``fn`` raised, the child died (its exit code, and the
signal's name), did not finish within ``timeout_s`` (killed), or where this platform cannot fork. The child
shares the parent's memory image (copy on write); what ``fn`` does there does not reach the parent.

The child sets torch to one intra-op thread before ``fn``: an OpenMP thread pool the parent has used does not
survive ``fork`` (measured: the child's first matmul hung when the parent had run on 2 threads).

``os.fork`` itself, not ``multiprocessing``: a daemonic process (a dask worker, a pool's worker) may not start
``multiprocessing`` children, and the child here only computes and writes to the pipe before ``os._exit``.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any

__all__ = ["run_forked"]


def run_forked(fn: Callable[[], Any], timeout_s: float = 120.0) -> tuple[bool, Any]:
    """``(True, fn())`` computed in a forked child, or ``(False, why it gave nothing)`` (module docstring)."""
    if not hasattr(os, "fork"):
        return False, "needs a forked process (no fork on this platform)"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running the parent's exit handlers
        code = 0
        try:
            os.close(read_end)
            try:
                import torch

                torch.set_num_threads(1)
                payload = pickle.dumps((True, fn()))
            except BaseException as error:  # noqa: BLE001 - the parent is told, whatever it was
                first = (str(error).splitlines() or [""])[0][:200]
                payload = pickle.dumps((False, f"raised {type(error).__name__}: {first}"))
            view = memoryview(payload)
            while view:
                view = view[os.write(write_end, view) :]
        except BaseException:  # noqa: BLE001 - nothing may escape the child
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks, deadline, finished = [], time.monotonic() + timeout_s, False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                break
            chunk = os.read(read_end, 1 << 16)
            if not chunk:  # end of the pipe: the child is done (or dead)
                finished = True
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    if not finished:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return False, f"did not finish within {timeout_s:g} s (killed)"
    _, status = os.waitpid(pid, 0)
    if chunks and os.waitstatus_to_exitcode(status) == 0:
        return pickle.loads(b"".join(chunks))
    code = os.waitstatus_to_exitcode(status)
    name = ""
    if code < 0:
        try:
            name = f", {signal.Signals(-code).name}"
        except ValueError:
            pass
    return False, f"the child process died (exit code {code}{name})"

"""Hessian-vector products in every mode torch offers: checked against reverse mode, then timed.

For a problem (the inner objective of its tasks, at a point phi), each mode of
:data:`metabench.oracle.HVP_MODES` forms d2g/dphi2 u through the oracle. :func:`check_hvp_modes` compares
every mode with ``"reverse"`` in float64 on random directions (relative error; a mode that differs beyond
``HVP_TOL`` is **wrong** on that model and must not be used there: the table says so, with the model's layers);
:func:`time_hvp_modes` times each mode that agreed, as a multiple of one inner gradient (time and peak
live-tensor memory), the measurements interleaved round by round so the ratios share the machine's noise.

The check itself is :func:`metabench.oracle.check_hvp_modes` (the implicit algorithms run it before using a
mode other than "reverse" on a problem). ``python -m metabench.hvp_check --out reports/hvp`` writes the
committed table (``hvp.md``, ``hvp.json``) for the MLP and conv4 with batch, group and no normalisation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from metabench.measure.forked import run_forked
from metabench.measure.machine import machine_info
from metabench.measure.memory import LiveTensorTracker
from metabench.oracle import HVP_MODES, HVP_TOL, TORCH_FUNC_MODES, Oracle, check_hvp_modes, hvp_point

__all__ = ["HVP_TOL", "check_hvp_modes", "layer_types", "time_hvp_modes"]


def layer_types(problem) -> list[str]:
    """The distinct module types of a few-shot problem's network (what a wrong mode is reported with)."""
    model = getattr(problem, "model", None)
    if model is None:
        return [type(problem).__name__]
    return sorted({type(m).__name__ for m in model.modules() if not list(m.children())})


def time_hvp_modes(problem, theta: torch.Tensor, modes=HVP_MODES, rounds: int = 5, seed: int = 0) -> dict[str, dict]:
    """Median time and peak live-tensor bytes of one product per mode, and of one inner gradient, with the ratios
    ``time_ratio``/``memory_ratio`` to the gradient. ``"reverse"``'s time is one product on a graph already built
    (what a CG iteration pays) and ``"reverse_build"`` adds building that graph (what a single product pays)."""
    tasks, phi, u = hvp_point(problem, theta, seed)

    def gradient():
        return Oracle(problem, tasks).inner_grad(theta, phi)

    lin = {mode: Oracle(problem, tasks).linearize(theta, phi, hvp=mode) for mode in modes}
    calls = {"gradient": gradient, **{mode: (lambda m=mode: lin[m].hvp(u)) for mode in modes}}
    if "reverse" in modes:
        calls["reverse_build"] = lambda: Oracle(problem, tasks).linearize(theta, phi).hvp(u)
    times = {name: [] for name in calls}
    for fn in calls.values():
        fn()  # warm-up
    for _ in range(rounds):  # interleaved: every call once per round
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peaks = {name: _peak(fn, in_child=name in TORCH_FUNC_MODES) for name, fn in calls.items()}
    grad_t, grad_m = statistics.median(times["gradient"]), peaks["gradient"]
    return {
        name: {
            "time_s": statistics.median(ts),
            "live_peak_bytes": peaks[name] if isinstance(peaks[name], int) else None,
            "memory_note": None if isinstance(peaks[name], int) else peaks[name],
            "time_ratio": statistics.median(ts) / grad_t,
            "memory_ratio": peaks[name] / grad_m if isinstance(peaks[name], int) and grad_m else None,
        }
        for name, ts in times.items()
    }


def _peak(fn, in_child: bool) -> int | str:
    """Peak live-tensor bytes of ``fn()``; with ``in_child``, in a forked process (a crash there is reported as
    text, not taken down with it: the live-tensor tracker is a TorchDispatchMode, and torch.func's modes have
    crashed the process under one, ``metabench.oracle.check_hvp_modes``)."""

    def peak() -> int:
        with LiveTensorTracker() as tracker:
            fn()
        return int(tracker.peak_bytes)

    if not in_child:
        return peak()
    ran, value = run_forked(peak)
    return value if ran else f"unavailable: under the live-tensor tracker {value}"


def _models(check: bool):
    """(name, problem, theta) per model: small float64 nets for the check, the conv4-64 workload for timing."""
    from metabench.problems import FewShotClassification

    dtype = torch.float64 if check else torch.float32
    size = {"filters": 8, "image_size": 14, "n_tasks": 1} if check else {"filters": 64, "image_size": 28, "n_tasks": 1}
    out = []
    sinus = FewShotClassification.generate(dataset="sinusoid", n_tasks=1, lam=1.0, dtype=dtype)
    out.append(("mlp (sinusoid, 40-40)", sinus))
    for norm in ("batch", "group", "none"):
        problem = FewShotClassification.generate(
            dataset="omniglot_like", ways=5, shots=5, query=15, norm=norm, lam=1.0, dtype=dtype, **size
        )
        out.append((f"conv4-{size['filters']} ({norm} norm)", problem))
    return [(name, problem, problem.initial_theta()) for name, problem in out]


def build_table(rounds: int = 5) -> dict:
    """The check (float64, small nets) and the timing (float32 conv4-64, MLP) of every mode on every model."""
    rows = []
    checks = {name: (check_hvp_modes(p, theta), layer_types(p)) for name, p, theta in _models(check=True)}
    for (name, problem, theta), (check_name, (check, layers)) in zip(_models(check=False), checks.items()):
        agreeing = [m for m in HVP_MODES if check[m]["agree"]]
        timing = time_hvp_modes(problem, theta, modes=agreeing, rounds=rounds)
        rows.append({"model": name, "checked_on": check_name, "layers": layers, "check": check, "timing": timing})
    return {"threads": torch.get_num_threads(), "machine": machine_info(), "rows": rows, "tol": HVP_TOL}


def to_markdown(table: dict) -> str:
    lines = [
        "# Hessian-vector products: every mode against reverse mode, then timed",
        "",
        "Built by `python -m metabench.hvp_check --out reports/hvp`. One HVP of the support loss + lam/2 ||phi - "
        "theta||^2 with respect to all weights (MAML formulation, lam = 1, one 5-way 5-shot task). Check: float64, "
        f"small nets, worst relative error to reverse mode over 2 random directions (agree below {table['tol']:g}). "
        f"Timing: the float32 nets below, {table['threads']} thread(s), median of interleaved rounds, as multiples of "
        "one inner gradient; `reverse` is a product on the gradient graph already built (as CG reuses it), "
        "`reverse_build` includes building it. A mode that disagreed is not timed and must not be used on that model.",
        "",
        f"Machine: {table['machine'].get('cpu_model', '?')}, torch {table['machine'].get('torch_version', '?')}.",
        "",
        "| model | mode | float64 rel. error to reverse | verdict | time / gradient | live memory / gradient |",
        "|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        for mode in [*HVP_MODES, "reverse_build"]:
            check = row["check"].get(mode, row["check"]["reverse"] if mode == "reverse_build" else None)
            timing = row["timing"].get(mode)
            if check["agree"] and check.get("dispatch_error"):
                verdict = f"agrees; **refused**: {check['dispatch_error']}"
            elif check["agree"]:
                verdict = "agrees"
            elif check.get("error"):
                verdict = f"**fails**: {check['error']}"
            else:
                verdict = f"**wrong** (layers: {', '.join(row['layers'])})"
            err = "-" if check["rel_error"] is None else f"{check['rel_error']:.1e}"
            t = f"{timing['time_ratio']:.2f}x" if timing else "-"
            m = f"{timing['memory_ratio']:.2f}x" if timing and timing["memory_ratio"] is not None else "-"
            if timing and timing.get("memory_note"):
                m = timing["memory_note"]
            lines.append(f"| {row['model']} | {mode} | {err} | {verdict} | {t} | {m} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metabench.hvp_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder for hvp.md and hvp.json (default: print only)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = build_table(rounds=args.rounds)
    text = to_markdown(table)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "hvp.md").write_text(text)
        (out / "hvp.json").write_text(json.dumps(table, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

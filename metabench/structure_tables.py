"""The tables of what structure buys on the conv4-64 workload: checkpoint schedules for exact MAML, features
computed once on the bilevel formulation, and torch.compile on the first-order inner steps. Measured, then
written as ``structure.json`` (the measurements) and ``structure.md`` (rebuilt from the JSON alone:
``--from reports/structure/structure.json``).

Workload: 5-way 5-shot/15-query, conv4 with 64 filters and BatchNorm (batch statistics), float32, one task, SGD
inner steps at lr 0.1, theta = the net's initial weights, one intra-op thread. Checkpointing: the MAML
formulation with lam = 1; each schedule's meta-gradient is compared with plain maml's where plain maml was run at
that K (relative difference); time per inner step is given as a multiple of plain maml's at K = 10 (warm, in the
same run). Features: the bilevel formulation (theta = backbone, phi = head), each algorithm with
``features="recompute"`` and ``"once"``, 5 interleaved pairs, median times. Compile: each algorithm at K = 20 with
``compile="off"`` and ``"on"`` (inductor), 5 interleaved pairs after the compiling call; its meta-gradient is
compared with eager's in float32 there and in float64 at K = 2 (a fresh compilation), and the first call's
compile time is given apart.

``python -m metabench.structure_tables --out reports/structure`` (about 15 minutes on 2 cores); ``--part long`` adds
exact MAML at K = 10,000 (about 40 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from metabench.errors import DivergenceError

__all__ = ["measure", "to_markdown"]

CHECKPOINT_ROWS = [
    ("maml", 10, {}),
    ("maml", 100, {}),
    ("maml_checkpointed", 100, {"schedule": "sqrt"}),
    ("maml_checkpointed", 100, {"schedule": "every_step"}),
    ("maml_checkpointed", 100, {"schedule": "revolve", "snapshots": 10}),
    ("maml_checkpointed", 1000, {"schedule": "sqrt"}),
    ("maml_checkpointed", 1000, {"schedule": "revolve", "snapshots": 10}),
]
#: the long-horizon part (``--part long``, about 45 minutes here): exact MAML far beyond what plain maml can hold.
#: Measured (2-core AMD EPYC, torch 2.13): the K = 10,000 run went through its 45 minutes and its float32
#: meta-gradient was not finite (a DivergenceError, now a "failed" row). phi_K was finite (the inner loop's
#: divergence watch passed), so what overflowed is the back-propagated adjoint: most likely the product of 10,000
#: step Jacobians I - lr H on a BatchNorm net whose inner Hessian has negative eigenvalues (measured down to -44 at
#: the initial weights) grows like (1 + lr |lambda_min|)^K, i.e. exact MAML's answer overflows, not the schedule.
LONG_ROWS = [("maml_checkpointed", 10_000, {"schedule": "revolve", "snapshots": 100})]
FEATURE_ALGORITHMS = [("itd_bio", {}), ("imaml", {"cg_iters": 5}), ("rm_metal", {"cg_iters": 5})]
FEATURE_STEPS = (1, 20, 50)
FEATURE_ROUNDS = 5  # interleaved pairs; the median time of each form
COMPILE_ROWS = [
    ("fomaml", "maml", {}),
    ("imaml", "bilevel", {"cg_iters": 5, "features": "recompute"}),
    ("rm_metal", "bilevel", {"cg_iters": 5, "features": "recompute"}),
]
COMPILE_STEPS = 20


def _one(problem, theta, name, K, options, track: bool = True):
    """(result, seconds, peak live bytes or None): one hypergradient, under the live-tensor tracker if ``track``
    (compiled steps run eager under it: ``algorithms/compiled_step.py``)."""
    import contextlib

    from metabench.algorithms import get_algorithm
    from metabench.measure.memory import LiveTensorTracker

    alg = get_algorithm(name, inner_steps=K, inner_lr=0.1, **options)
    start = time.perf_counter()
    with LiveTensorTracker() if track else contextlib.nullcontext() as tracker:
        result = alg.hypergradient(problem, theta)
    return result, time.perf_counter() - start, int(tracker.peak_bytes) if track else None


def measure_checkpointing(progress=print, checkpoint_rows=CHECKPOINT_ROWS) -> list[dict]:
    from metabench.problems import FewShotClassification

    maml_problem = FewShotClassification.generate(n_tasks=1, formulation="maml", lam=1.0)
    theta = maml_problem.initial_theta()
    _one(maml_problem, theta, "maml", 2, {})  # warm-up
    plain = {}
    rows = []
    for name, K, options in checkpoint_rows:
        started, error = time.perf_counter(), None
        try:
            result, seconds, peak = _one(maml_problem, theta, name, K, options)
        except DivergenceError as err:  # a row that says so; the table goes on
            result, seconds, peak, error = None, time.perf_counter() - started, None, str(err)
            progress(f"checkpoint {name} K={K} {options}: {error} after {seconds:.0f} s")
            rows.append({"algorithm": name, "K": K, **options, "seconds": seconds, "live_peak_bytes": None,
                         "vs_maml": None, "recompute_factor": None, "stored_states": None, "error": error})  # fmt: skip
            continue
        if name == "maml":
            plain[K] = result.grad
        agree = None
        if name != "maml" and K in plain:
            agree = float((result.grad - plain[K]).norm() / plain[K].norm())
        rows.append(
            {
                "algorithm": name,
                "K": K,
                **options,
                "seconds": seconds,
                "live_peak_bytes": peak,
                "vs_maml": agree,
                "recompute_factor": result.info.get("recompute_factor"),
                "stored_states": result.info.get("stored_states"),
            }
        )
        progress(f"checkpoint {name} K={K} {options}: {seconds:.1f} s, {peak / 2**20:.1f} MiB")
    _, base_seconds, _ = _one(maml_problem, theta, "maml", 10, {})  # plain maml at K = 10 again, warm
    base = min([base_seconds] + [r["seconds"] for r in rows if r["algorithm"] == "maml" and r["K"] == 10])
    for row in rows:
        row["time_per_step_vs_maml_K10"] = (row["seconds"] / row["K"]) / (base / 10)
    return rows


def measure_features(progress=print) -> list[dict]:
    from metabench.problems import FewShotClassification

    bilevel = FewShotClassification.generate(n_tasks=1, formulation="bilevel")
    theta = bilevel.initial_theta()
    _one(bilevel, theta, "itd_bio", 2, {})  # warm-up
    rows = []
    for name, options in FEATURE_ALGORITHMS:
        for K in FEATURE_STEPS:
            times = {"recompute": [], "once": []}
            out = {}
            for _ in range(FEATURE_ROUNDS):  # interleaved pairs
                for form in times:
                    result, seconds, peak = _one(bilevel, theta, name, K, {**options, "features": form})
                    times[form].append(seconds)
                    out[form] = (result.grad, peak)
            diff = float((out["once"][0] - out["recompute"][0]).norm() / out["recompute"][0].norm())
            rec, once = statistics.median(times["recompute"]), statistics.median(times["once"])
            rows.append(
                {
                    "algorithm": name,
                    "K": K,
                    "recompute_seconds": rec,
                    "once_seconds": once,
                    "recompute_peak_bytes": out["recompute"][1],
                    "once_peak_bytes": out["once"][1],
                    "rel_diff": diff,
                }
            )
            progress(f"features {name} K={K}: time ratio {once / rec:.3f}")
    return rows


def measure_compile(progress=print) -> list[dict]:
    from metabench.problems import FewShotClassification

    rows = []
    for name, formulation, options in COMPILE_ROWS:
        diffs = {}
        for dtype in (torch.float64, torch.float32):  # float64 first: its check is the one that decides
            problem = FewShotClassification.generate(n_tasks=1, formulation=formulation, dtype=dtype)
            theta = problem.initial_theta()
            K = 2 if dtype == torch.float64 else COMPILE_STEPS
            eager, _, _ = _one(problem, theta, name, K, options, track=False)
            compiled, _, _ = _one(problem, theta, name, K, {**options, "compile": "on"}, track=False)
            diffs[dtype] = float((compiled.grad - eager.grad).norm() / eager.grad.norm())
        times = {"off": [], "on": []}
        for _ in range(FEATURE_ROUNDS):
            for mode in times:
                result, seconds, _ = _one(problem, theta, name, K, {**options, "compile": mode}, track=False)
                times[mode].append(seconds)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        rows.append(
            {
                "algorithm": name,
                "formulation": formulation,
                "K": K,
                **options,
                "compile": result.info["compile"],
                "compile_s": result.info["compile_s"],
                "eager_seconds": off,
                "compiled_seconds": on,
                "rel_diff_float32": diffs[torch.float32],
                "rel_diff_float64": diffs[torch.float64],
            }
        )
        progress(f"compile {name}: {result.info['compile']}, eager/compiled {off / on:.2f}x")
    return rows


def measure(parts=("checkpointing", "features", "compile"), previous: dict | None = None, progress=print) -> dict:
    """The tables' measurements; parts not in ``parts`` are kept from ``previous``."""
    from metabench.measure.machine import machine_info

    torch.set_num_threads(1)
    data = dict(previous or {})
    data.update(machine=machine_info(), threads=1)
    if "checkpointing" in parts:
        data["checkpointing"] = measure_checkpointing(progress)
    if "long" in parts:  # plain maml at K = 10 first (the time base and the memory to stay under), then the long run
        data["long"] = measure_checkpointing(progress, [("maml", 10, {}), *LONG_ROWS])
    if "features" in parts:
        data["features"] = measure_features(progress)
    if "compile" in parts:
        data["compile"] = measure_compile(progress)
    return data


def to_markdown(data: dict) -> str:
    mib = 2**20
    lines = [
        "# What structure buys on conv4-64 (5-way 5-shot/15-query, one task, float32)",
        "",
        __doc__.split("\n\n")[1],
        "",
    ]
    lines += [
        f"Machine: {data['machine'].get('cpu_model')}, torch {data['machine'].get('torch_version')}, "
        f"{data['threads']} thread.",
        "",
        "## Exact MAML: checkpoint schedules",
        "",
    ]
    lines += [
        "| algorithm | schedule | K | peak live memory (MiB) | time (s) | time per step / maml's at K = 10 "
        "| recompute factor | stored states | rel. diff. to maml |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    long_rows = [r for r in data.get("long", []) if r["algorithm"] != "maml"]
    for r in data["checkpointing"] + long_rows:
        sched = r.get("schedule", "-") + (f", s = {r['snapshots']}" if r.get("snapshots") else "")
        rf = "-" if r["recompute_factor"] is None else f"{r['recompute_factor']:.2f}"
        st = "-" if r["stored_states"] is None else str(r["stored_states"])
        diff = "-" if r["vs_maml"] is None else f"{r['vs_maml']:.1e}"
        if r.get("error"):
            diff = f"**failed**: {r['error']}"
        peak = "-" if r["live_peak_bytes"] is None else f"{r['live_peak_bytes'] / mib:.1f}"
        lines.append(
            f"| {r['algorithm']} | {sched} | {r['K']} | {peak} | {r['seconds']:.1f} | "
            f"{r['time_per_step_vs_maml_K10']:.2f}x | {rf} | {st} | {diff} |"
        )
    if long_rows:
        base = next(r for r in data["long"] if r["algorithm"] == "maml")
        lines += [
            "",
            f"K = {', '.join(str(r['K']) for r in long_rows)} (`--part long`, a run of its own): time per step "
            f"against plain maml at K = 10 measured in that run ({base['seconds']:.1f} s, "
            f"{base['live_peak_bytes'] / mib:.1f} MiB); exactness at this K is the schedule's (tests check every "
            "schedule against maml in float64).",
        ]
    lines += ["", "## Features once vs recompute (bilevel formulation)", ""]
    lines += [
        "| algorithm | K | time once / recompute | peak MiB recompute | peak MiB once | rel. diff. of meta-gradients |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["features"]:
        lines.append(
            f"| {r['algorithm']} | {r['K']} | {r['once_seconds'] / r['recompute_seconds']:.3f} | "
            f"{r['recompute_peak_bytes'] / mib:.1f} | {r['once_peak_bytes'] / mib:.1f} | {r['rel_diff']:.1e} |"
        )
    if data.get("compile"):
        lines += ["", "## torch.compile on the first-order inner steps (K = 20)", ""]
        lines += [
            "| algorithm | formulation | compile | first call (s) | eager (s) | compiled (s) | speed-up "
            "| rel. diff. float32 | rel. diff. float64 (K = 2) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["compile"]:
            lines.append(
                f"| {r['algorithm']} | {r['formulation']} | {r['compile']} | {r['compile_s']:.1f} | "
                f"{r['eager_seconds']:.3f} | {r['compiled_seconds']:.3f} | "
                f"{r['eager_seconds'] / r['compiled_seconds']:.2f}x | "
                f"{r['rel_diff_float32']:.1e} | {r['rel_diff_float64']:.1e} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metabench.structure_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder for structure.json and structure.md")
    parser.add_argument("--from", dest="source", default=None, help="rebuild structure.md from this structure.json")
    parser.add_argument(
        "--part",
        choices=("checkpointing", "features", "compile", "long"),
        action="append",
        help="measure only this part (repeatable); the others are kept from OUT/structure.json",
    )
    args = parser.parse_args(argv)
    if args.source:
        data = json.loads(Path(args.source).read_text())
    else:
        previous = None
        if args.part and args.out and (Path(args.out) / "structure.json").is_file():
            previous = json.loads((Path(args.out) / "structure.json").read_text())
        parts = tuple(args.part or ("checkpointing", "features", "compile"))
        data = measure(parts, previous, progress=lambda line: print(line, file=sys.stderr, flush=True))
    text = to_markdown(data)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not args.source:
            (out / "structure.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        (out / "structure.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

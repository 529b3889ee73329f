"""``python -m metabench.peers [--tasks 4] [--steps 1,5,10,20] [--out reports/peers.md]``: the peer table.

Workload: the ``omniglot_like`` factory's standard MAML workload (5-way 5-shot, 15 query per class, the
conv4 net with 64 filters, BatchNorm without running statistics, 1x28x28 inputs, float32), SGD inner
steps at lr 0.1. For each task batch, K and algorithm (maml, fomaml, imaml with lam = 1.0): agreement of each
available peer with metabench, then time and peak live-tensor bytes of each, in one process.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from metabench.peers import IMAML_DAMPING, IMAML_LAM, METABENCH, PEERS, compare

WORKLOAD = "omniglot_like 5-way 5-shot, 15 query, conv4 64 filters (BatchNorm, no running stats), 1x28x28, float32"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The Markdown table of :func:`~metabench.peers.compare` rows (several algorithms, task batches and K allowed)."""
    head = (
        "| algorithm | task batch | K | implementation | time (s) | peak live MB | rel. diff to metabench "
        "| time / best peer (IQR) | memory / best peer | note |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lead = f"| {r['algorithm']} | {r['n_tasks']} | {r['inner_steps']} | {r['implementation']}"
        if r["status"] != "ok":
            lines.append(f"{lead} | — | — | — | — | — | {r['status']}: {r['reason']} |")
            continue
        diff = _fmt(r["rel_diff"], ".2e")
        if r.get("rel_diff_float64") is not None:
            diff += f" (f64 {r['rel_diff_float64']:.1e})"
        mem = r["peak_live_bytes"] / 2**20
        note = r["reason"] if r["source"] == "peer" or r["implementation"] != "metabench" else ""
        ratio = _fmt(r["time_ratio_to_best_peer"], ".2f")
        if r.get("time_ratio_iqr") is not None:
            ratio += f" ({r['time_ratio_iqr']:.2f})"
        lines.append(
            f"{lead} | {r['time_s']:.3f} | {mem:.1f} | {diff} | {ratio} "
            f"| {_fmt(r['memory_ratio_to_best_peer'], '.2f')} | {note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metabench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="4", help="task batch sizes, comma-separated (default 4)")
    parser.add_argument("--steps", default="1,5,10,20", help="inner steps K, comma-separated (default 1,5,10,20)")
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--cg-iters", type=int, default=5, help="imaml's CG iterations (default 5)")
    parser.add_argument(
        "--damping", type=float, default=IMAML_DAMPING, help=f"imaml's CG damping (default {IMAML_DAMPING})"
    )
    parser.add_argument("--algorithms", default=",".join(METABENCH), help="comma-separated (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per point (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the suites)")
    parser.add_argument("--float64-check", action="store_true", help="also check agreement in float64")
    parser.add_argument(
        "--compile", action="store_true", help="also time metabench's fomaml and imaml with compile='on'"
    )
    parser.add_argument("--implementations", default=",".join(PEERS), help="peers, comma-separated (default: all)")
    parser.add_argument("--out", default=None, help="write the Markdown table here (e.g. reports/peers.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from metabench.problems import FewShotClassification

    tasks_list, steps_list = _ints(args.tasks), _ints(args.steps)
    names = [n.strip() for n in args.implementations.split(",") if n.strip()]
    algorithms = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    problem = FewShotClassification.omniglot_like(n_tasks=max(tasks_list))
    rows, started = [], time.perf_counter()
    for n_tasks in tasks_list:
        for steps in steps_list:
            print(f"[peers] task batch {n_tasks}, K = {steps}")
            rows += compare(
                problem, list(range(n_tasks)), steps, args.inner_lr, names, algorithms=algorithms,
                cg_iters=args.cg_iters, damping=args.damping, rounds=args.rounds,
                check_float64=args.float64_check, compiled=args.compile,
            )  # fmt: skip
    text = "\n".join(
        [
            "# metabench vs peer libraries: one meta-gradient per algorithm",
            "",
            f"Workload: {WORKLOAD}; SGD inner steps at lr {args.inner_lr}; theta = the net's initial weights.",
            f"imaml runs with lam = {IMAML_LAM}, {args.cg_iters} CG iterations and damping {args.damping} "
            "(its system is (H + (lam + damping) I) v = grad L(phi_K)); each peer is checked against metabench's "
            "result for the same algorithm (relative l2 difference). Ratios: this row / the best available peer "
            "for the same algorithm, task batch and K (< 1 is better). Time: median of "
            f"{args.rounds} interleaved rounds (one call of each implementation per round); the time ratio is "
            "paired: the median over rounds of this row's time / the fastest peer's time in the same round, with "
            "its interquartile range in brackets (the ratio's noise on this machine); "
            "memory: peak live-tensor bytes (`LiveTensorTracker`)."
            + (
                " metabench+compile: the same adapter with compile='on' (untracked inner gradients under "
                "torch.compile, checked against eager first; its compile time is in the note, not in the timing)."
                if args.compile
                else ""
            ),
            f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{args.threads} thread(s); {time.perf_counter() - started:.0f} s in all.",
            "",
            table(rows),
            "",
        ]
    )
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"[peers] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

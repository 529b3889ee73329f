"""The ``metabench`` command: ``run`` a sweep, ``report`` on its records, ``list`` what exists, ``demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from metabench.sweep import Sweep, get_preset, run_sweep

    sweep = Sweep.from_file(args.config) if args.config else get_preset(args.preset)
    print(
        f"sweep {sweep.name}: {len(sweep.cases())} cases -> {Path(args.out) / (sweep.name + '.jsonl')}", file=sys.stderr
    )
    summary = run_sweep(sweep, args.out, progress=not args.no_progress, limit=args.limit)
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())) or "nothing new"
    print(f"ran {summary.ran} case(s) ({statuses}); {summary.already_done} already in {summary.path}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from metabench.report import summary_markdown
    from metabench.results import load_records

    text = summary_markdown(load_records(args.results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "summary.md"
    target.write_text(text)
    print(text)
    print(f"written to {target}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from metabench.algorithms import available_algorithms, get_algorithm
    from metabench.problems import available_problems
    from metabench.sweep import PRESETS

    print("algorithms:")
    for name in available_algorithms():
        print(f"  {name:10s} options: {', '.join(get_algorithm(name).options)}")
    print("problems:")
    for name in available_problems():
        print(f"  {name}")
    print("presets:")
    for name, spec in PRESETS.items():
        print(f"  {name:10s} {spec.get('description', '')}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from metabench.demo import demo_rows, format_table

    steps = tuple(int(s) for s in args.inner_steps.split(","))
    title = f"# metabench demo: meta-gradient error vs exact (kappa = {args.kappa:g}, float64, CPU)\n\n"
    print(title + format_table(demo_rows(inner_steps=steps, kappa=args.kappa, seed=args.seed)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metabench", description="Benchmark gradient-based meta-learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep (a preset or a TOML/YAML file) into a results folder")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--preset", default="smoke", help="named sweep (see `metabench list`); default smoke")
    source.add_argument("--config", help="sweep file (.toml, .yaml)")
    run.add_argument("--out", default="results", help="results folder (default results/); reruns resume")
    run.add_argument("--limit", type=int, default=None, help="run at most this many new cases")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="summarise stored records as Markdown")
    report.add_argument("results", nargs="+", help="results files or folders")
    report.add_argument("--out", default="reports", help="folder for the report (default reports/)")
    report.set_defaults(func=_report)

    lst = sub.add_parser("list", help="algorithms, problems and presets")
    lst.set_defaults(func=_list)

    demo = sub.add_parser("demo", help="every algorithm on small closed-form problems, error vs exact")
    demo.add_argument("--inner-steps", default="5,20,80", help="comma-separated inner step counts")
    demo.add_argument("--kappa", type=float, default=10.0, help="condition number of the inner problems")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"metabench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

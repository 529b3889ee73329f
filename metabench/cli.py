"""The ``metabench`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from metabench.demo import demo_rows, format_table

    steps = tuple(int(s) for s in args.inner_steps.split(","))
    table = format_table(demo_rows(inner_steps=steps, kappa=args.kappa, seed=args.seed))
    title = f"# metabench demo: meta-gradient error vs exact (kappa = {args.kappa:g}, float64, CPU)\n\n"
    print(title + table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(title + table + "\n")
        print(f"\nwritten to {out}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from metabench.algorithms import available_algorithms
    from metabench.problems import available_problems

    print("algorithms:", ", ".join(available_algorithms()))
    print("problems:  ", ", ".join(available_problems()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metabench", description="Benchmark gradient-based meta-learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="every algorithm on small closed-form problems, error vs exact")
    demo.add_argument("--inner-steps", default="5,20,80", help="comma-separated inner step counts (default 5,20,80)")
    demo.add_argument("--kappa", type=float, default=10.0, help="condition number of the inner problems")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="reports/demo.md", help="Markdown file to write ('' for none)")
    demo.set_defaults(run=_demo)
    lst = sub.add_parser("list", help="registered algorithms and problems")
    lst.set_defaults(run=_list)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

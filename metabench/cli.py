"""The ``metabench`` command: ``run`` a sweep, ``report`` on its records, ``profile`` one case, ``list`` what exists."""

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
    from metabench.report import build_report
    from metabench.results import load_records

    records = load_records(args.results)
    paths = build_report(records, args.out, title=args.title)
    print(f"{len(records)} records -> " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
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


_PROFILE_DEFAULTS: dict[str, dict] = {
    "linear_meta_regression": {"n_tasks": 4, "dim": 20, "n_train": 40, "n_val": 40, "lam": 1.0, "kappa": 10.0},
    "quadratic_bilevel": {"n_tasks": 4, "p": 10, "q": 20, "rho": 0.1, "kappa": 10.0},
    # the standard 5-way 5-shot, 15-query conv4 workload, 4 tasks; lam > 0 so the implicit methods apply
    "few_shot_classification": {
        "dataset": "omniglot_like",
        "n_tasks": 4,
        "lam": 1.0,
        "inner_lr": 0.1,
        "dtype": "float32",
    },
}


def _parse_value(text: str):
    """``--set`` values: int, then float, then None/true/false, else the string itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"none": None, "null": None, "true": True, "false": False}.get(text.lower(), text)


def _profile_case(args: argparse.Namespace) -> tuple[dict, dict]:
    """The structured case the ``profile`` flags describe, and the parameters the user gave."""
    from metabench.sweep import normalise_case

    given: dict = {"algorithm": args.algorithm, "problem": args.problem, "device": args.device}
    for flag, key in (("inner_steps", "inner_steps"), ("cg_iters", "cg_iters"), ("kappa", "kappa")):
        if getattr(args, flag) is not None:
            given[key] = getattr(args, flag)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        given[key.strip()] = _parse_value(value.strip())
    problem = given["problem"]
    if problem not in _PROFILE_DEFAULTS:
        raise ValueError(f"unknown problem {problem!r}; profile knows: {sorted(_PROFILE_DEFAULTS)}")
    flat = {"inner_lr": "auto", **_PROFILE_DEFAULTS[problem], **given}
    case = normalise_case(flat)
    if case is None:
        raise ValueError(f"this case cannot exist (truncate > inner_steps?): {given}")
    if case.get("mode", "hypergradient") != "hypergradient":
        raise ValueError(f"profile records one hypergradient; mode {case['mode']!r} is not supported")
    return case, given


def _profile(args: argparse.Namespace) -> int:
    import torch

    from metabench.measure.profiler import profile_call
    from metabench.sweep import RUN_DEFAULTS, prepare_case

    case, given = _profile_case(args)
    ignored = sorted(set(given) - set(RUN_DEFAULTS) - set(case["options"]) - set(case["problem_params"]))
    if ignored:
        print(f"note: ignored {ignored}: not taken by {case['algorithm']} on {case['problem']}", file=sys.stderr)
    try:
        device = torch.device(case["device"])
    except RuntimeError as err:
        raise ValueError(f"bad device {case['device']!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {case['device']!r} asked for, but CUDA is not available here; use --device cpu")
    try:
        prepared = prepare_case(case)
    except TypeError as err:  # a bad option value or type: bad input like a ValueError
        raise ValueError(str(err)) from err
    prepared.algorithm.check_problem(prepared.problem)
    opts = prepared.algorithm.options
    parts = [case["algorithm"], case["problem"], f"K{opts['inner_steps']}"]
    extras = (("cg_iters", "cg"), ("neumann_iters", "N"), ("truncate", "T"))
    parts += [f"{short}{opts[key]}" for key, short in extras if key in opts]
    kappa = case["problem_params"].get("kappa")
    parts += [f"kappa{kappa:g}"] if kappa is not None else []
    name = args.name or "_".join([*parts, device.type])
    threads, previous = case.get("threads"), torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        paths = profile_call(prepared, args.out, name, device=device, memory_timeline=args.memory_timeline)
    finally:
        torch.set_num_threads(previous)
    print(paths["table"].read_text())
    out = Path(args.out)
    print(f"profile of one {case['algorithm']} hypergradient on {case['problem']} ({device}), options {opts}:")
    for key, path in paths.items():
        print(f"  {key:18s} {path}")
    print("open:")
    print(f"  pip install torch-tb-profiler && tensorboard --logdir {out}  # PYTORCH_PROFILER tab, run {name}")
    print(f"  Perfetto: https://ui.perfetto.dev -> Open trace file -> {paths['chrome_trace']}  (or chrome://tracing)")
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

    report = sub.add_parser("report", help="Markdown + HTML report with Table 1 fits and figures, from stored records")
    report.add_argument("results", nargs="+", help="results files or folders")
    report.add_argument("--out", default="reports", help="folder for the report (default reports/)")
    report.add_argument("--title", default="metabench report", help="report title")
    report.set_defaults(func=_report)

    lst = sub.add_parser("list", help="algorithms, problems and presets")
    lst.set_defaults(func=_list)

    prof = sub.add_parser("profile", help="torch.profiler trace of one hypergradient (TensorBoard, Perfetto)")
    prof.add_argument("--algorithm", required=True, help="algorithm name (see `metabench list`)")
    prof.add_argument(
        "--problem",
        default="linear_meta_regression",
        help="linear_meta_regression (default), quadratic_bilevel or few_shot_classification (5-way 5-shot conv4)",
    )
    prof.add_argument("--inner-steps", type=int, default=None, help="K (default: the algorithm's)")
    prof.add_argument("--cg-iters", type=int, default=None, help="CG iterations (imaml, rm_metal)")
    prof.add_argument("--kappa", type=float, default=None, help="condition number of the inner problems (default 10)")
    prof.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    prof.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any other sweep parameter (repeatable), e.g. dim=50"
    )
    prof.add_argument(
        "--memory-timeline", action="store_true", help="also NAME.memory_timeline.json (best effort, slower)"
    )
    prof.add_argument("--name", default=None, help="run name (default: from algorithm, problem and options)")
    prof.add_argument("--out", default="reports/profiles", help="folder for the traces (default reports/profiles/)")
    prof.set_defaults(func=_profile)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input, a missing or unwritable path
        print(f"metabench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

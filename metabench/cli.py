"""The ``metabench`` command: ``run`` a sweep, ``report`` on its records, ``compare`` two runs, ``export`` records,
``certify`` an outside meta-gradient function, ``profile`` one case, ``list`` what exists.

Only the standard library is imported at the top: torch, pandas and the report modules are imported inside the
command that needs them, so ``metabench --help``, ``metabench --version`` and ``metabench CMD --help`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

__all__ = ["main"]


#: Exit codes of ``metabench run`` (and, where they apply, ``report``); shown in ``metabench run --help``.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader closed the pipe
_RUN_EPILOG = """exit status:
  0    every case of the sweep has a record and none of the newly run ones ended failed or invalid
       (ok, skipped, diverged and oom are results, not errors); with --limit, the cases left to run
       do not count against it (stderr says how many are left)
  1    the sweep ran to the end but some newly run cases ended failed or invalid (a count per status and
       the first errors go to stderr; the reasons are in the records)
  2    bad command line or unreadable sweep file (nothing run)
  130  interrupted (Ctrl-C); every finished case is in the store, run the same command again to resume
"""
_COMPARE_EPILOG = """exit status:
  0    no regression: every case in both A and B is within the factor (improvements, cases only one side has
       and status changes to ok do not count against it)
  1    at least one regression: a time or memory ratio B/A above the factor, an error worse beyond round-off,
       a changed oracle count, or a status that changed to one other than ok (marked +, !)
  2    bad input: a missing path, no records on a side, no case of A in B (different sweeps?), a bad --factor
       or --metric (nothing compared)
  130  interrupted (Ctrl-C)

metrics (--metric, repeatable; default all): the groups time, memory, error, counts, or single fields:
  time_median_s, live_peak_bytes, rss_peak_delta_bytes, cuda_max_allocated_bytes, rel_error_exact,
  rel_error_reference, rel_error_algorithm, inner_grads, outer_grads, hvps, jvps
"""
_EXPORT_EPILOG = """columns: every field of the record schema (metabench.results.RECORD_FIELDS) in its order, null
where absent; then the dict fields flattened (options.cg_iters, problem_params.kappa, machine.cpu_model, ...);
trajectory and lists stay JSON text in one column. Read back with pandas.read_csv / pandas.read_parquet.

exit status:
  0    the table was written
  2    bad input: a missing path, no records, an unknown format, parquet without pyarrow
       (pip install "metabench[export]"), an unwritable --out (nothing written)
  130  interrupted (Ctrl-C); FILE is written whole or not at all
"""
#: Statuses of newly run cases that make ``metabench run`` exit 1: the others are results.
_ERROR_STATUSES = ("failed", "invalid")
_ERRORS_SHOWN = 5


class _Interrupted(KeyboardInterrupt):
    """A Ctrl-C with what the user needs to know: the one line ``main`` prints."""


def _count(text: str) -> int:
    """``--limit``: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _one_line(text, width: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _case_label(record: dict) -> str:
    from metabench.options import label

    kappa = record.get("kappa")
    text = label(record.get("algorithm"), record) + f" on {record.get('problem')}"
    return text + (f" kappa={kappa:g}" if isinstance(kappa, (int, float)) else "")


def _executor(args: argparse.Namespace, sweep):
    """The executor of ``--executor`` and its flags over the sweep file's ``[executor]`` table."""
    import os

    from metabench.sweep.executors import make_executor

    options = dict(sweep.executor)
    named = options.pop("name", "serial")
    name = args.executor or named
    if name != named:  # the file's options are for the file's executor
        options = {k: v for k, v in options.items() if k == "imports"}
    flags = {
        "workers": args.workers,
        "threads": args.threads,
        "scheduler": args.scheduler,
        "folder": args.submitit_folder,
        "cluster": args.cluster,
        "partition": args.partition,
        "time_min": args.time_min,
        "gpus": args.gpus_per_job,
        "mem_gb": args.mem_gb,
        "chunk": args.chunk,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    imports = tuple(options.pop("imports", ())) + tuple(args.imports or ())
    if imports:
        options["imports"] = imports
    if name == "submitit":
        options.setdefault("folder", str(Path(args.out) / "submitit"))
    if name == "local":
        options.setdefault("workers", max(1, (os.cpu_count() or 1) // (options.get("threads") or 1)))
    return make_executor(name, **options)


def _dry_run(sweep, cases: list[dict], executor, out: str) -> int:
    from metabench.results import read_records
    from metabench.sweep.estimate import estimate_seconds

    path = Path(out) / (sweep.name + ".jsonl")
    have = {r.get("case_id") for r in read_records(path)}
    todo = [c for c in cases if c["case_id"] not in have]
    for case in todo:
        print(f"{case['case_id'][:12]}  {_case_label({**case, **case['options'], **case['problem_params']})}")
    seconds, known, unknown = estimate_seconds(todo, out)
    slots = max(1, executor.slots)
    if known:
        basis = f"from the records in {out}" + (f"; {unknown} case(s) with no record to go by" if unknown else "")
        estimate = f"about {_duration(seconds / slots)} on {executor.describe()} ({basis})"
    else:
        estimate = f"no estimate: no record in {out} to go by (--limit 2 measures a first two)"
    print(f"{len(todo)} case(s) to run, {len(cases) - len(todo)} already in {path}; {estimate}", file=sys.stderr)
    return EXIT_OK


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _data_root(path: str) -> str:
    """``--data-root``: an existing folder, as an absolute path (records say where their data came from)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-root {path}: no such folder")
    return str(root.resolve())


def _run(args: argparse.Namespace) -> int:
    import importlib

    from metabench.results import read_records
    from metabench.sweep import Sweep, get_preset, run_sweep
    from metabench.sweep.runner import ContentionWarning, contention

    sweep = Sweep.from_file(args.config) if args.config else get_preset(args.preset)
    if args.data_root is not None:
        sweep.defaults["data_root"] = _data_root(args.data_root)
    for module in tuple(sweep.executor.get("imports", ())) + tuple(args.imports or ()):
        try:  # the user's registrations (algorithms, ...) exist before the cases are checked
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"--import {module}: {err}") from None
    try:
        cases = sweep.cases()
    except ValueError as err:
        source = f"sweep file {args.config}" if args.config else f"preset {args.preset}"
        raise ValueError(f"{source}: {err}") from None
    executor = _executor(args, sweep)
    if args.dry_run:
        return _dry_run(sweep, cases, executor, args.out)
    path = Path(args.out) / (sweep.name + ".jsonl")
    print(f"sweep {sweep.name}: {len(cases)} cases -> {path} ({executor.describe()})", file=sys.stderr)
    before = {r.get("case_id") for r in read_records(path)}
    crowded = contention(cases, executor)
    if crowded:
        print(f"metabench run: warning: {crowded}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContentionWarning)  # said above, once
            summary = run_sweep(sweep, args.out, progress=not args.no_progress, limit=args.limit, executor=executor)
    except KeyboardInterrupt:
        try:
            n = len(read_records(path))
            safe = f"{n} record{'' if n == 1 else 's'} {'is' if n == 1 else 'are'} safe in {path}"
        except (ValueError, OSError):
            safe = f"every finished case is in {path}"
        raise _Interrupted(f"interrupted; {safe}; run the same command again to resume") from None
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())) or "nothing new"
    print(f"ran {summary.ran} case(s) ({statuses}); {summary.already_done} already in {summary.path}", file=sys.stderr)
    if summary.duplicates_avoided:
        print(
            f"{summary.duplicates_avoided} case(s) measured here were written first by another run on {path}: "
            "kept theirs, not counted twice",
            file=sys.stderr,
        )
    records = read_records(summary.path)
    have = {r.get("case_id") for r in records}
    left = sum(c["case_id"] not in have for c in cases)
    if left:
        why = " (--limit)" if args.limit is not None else ""
        print(f"{left} case(s) of the sweep still to run{why}; run again to go on", file=sys.stderr)
    errors = [r for r in records if r.get("case_id") not in before and r.get("status") in _ERROR_STATUSES]
    if not errors and not any(summary.statuses.get(s) for s in _ERROR_STATUSES):
        return EXIT_OK
    counts = ", ".join(f"{summary.statuses[s]} {s}" for s in _ERROR_STATUSES if summary.statuses.get(s))
    print(f"metabench run: {counts} of {summary.ran} case(s) run now; first errors:", file=sys.stderr)
    for record in errors[:_ERRORS_SHOWN]:
        print(f"  {_case_label(record)} ({record.get('status')}): {_one_line(record.get('error'))}", file=sys.stderr)
    if len(errors) > _ERRORS_SHOWN:
        print(f"  ... {len(errors) - _ERRORS_SHOWN} more in {summary.path}", file=sys.stderr)
    return EXIT_FAILED


def _results_files(paths: list[str]) -> list[Path]:
    """The ``*.jsonl`` files ``load_records`` reads for ``paths``."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    return files


def _read_results(command: str, paths: list[str], read=None, check=None):
    """``read(paths)`` (default ``load_records``) with the store's set-aside lines shown in short; no records is
    a ValueError saying why (no files, every line set aside, or none complete); ``check(records)`` runs before
    the set-aside lines are shown (it raises ValueError for records that are not usable)."""
    from metabench import results

    read = read or results.load_records
    store_warning = getattr(results, "StoreWarning", UserWarning)
    with warnings.catch_warnings(record=True) as caught:  # lines the store set aside: shown in short below
        warnings.simplefilter("always")
        records = read(paths)
    set_aside = [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, store_warning)]
    for w in caught:
        if not issubclass(w.category, store_warning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    where = ", ".join(paths)
    if len(records) == 0:
        if not _results_files(paths):
            why = "no *.jsonl files there"
        elif set_aside:
            why = f"{len(set_aside)} line(s) set aside, the first: {set_aside[0]}"
        else:
            why = "its results files hold no complete records"
        raise ValueError(f"no records in {where} ({why})")
    if check is not None:
        check(records)
    if set_aside:
        more = f" (and {len(set_aside) - 1} more)" if len(set_aside) > 1 else ""
        print(
            f"metabench {command}: warning: {len(set_aside)} line(s) set aside: {set_aside[0]}{more}", file=sys.stderr
        )
    return records


def _report(args: argparse.Namespace) -> int:
    from metabench.report import build_report

    def check(records) -> None:
        missing = [c for c in ("sweep", "status", "algorithm", "problem") if c not in records]
        if missing:
            raise ValueError(f"the records in {', '.join(args.results)} lack {missing}: not metabench results")

    records = _read_results("report", args.results, check=check)
    out = Path(args.out)
    try:
        paths = build_report(records, out, title=args.title)
    except KeyboardInterrupt:
        raise _Interrupted(f"interrupted; the report in {out} may be incomplete; run the same command again") from None
    print(f"{len(records)} records -> " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return EXIT_OK


def _factor(text: str) -> float:
    """``--factor``: a finite number >= 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 1, got {text!r}") from None
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1, got {text!r}")
    return value


def _compare(args: argparse.Namespace) -> int:
    from metabench.report.compare import compare_records, to_html, to_markdown

    def check(records) -> None:
        if "case_id" not in records or "status" not in records:
            raise ValueError("records without case_id/status: not metabench results")

    a = _read_results("compare", [args.a], check=check)
    b = _read_results("compare", [args.b], check=check)
    result = compare_records(a, b, factor=args.factor, metrics=args.metric)
    if result.matched == 0:
        raise ValueError(
            f"nothing to compare: none of the {result.n_a} case(s) of {args.a} is in {args.b} ({result.n_b} case(s)); "
            "cases are matched by case_id, a hash of the case's parameters: compare runs of the same sweep file"
        )
    markdown = to_markdown(result, args.a, args.b, only_changed=args.only_changed)
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(markdown)
        (out / "compare.html").write_text(to_html(result, args.a, args.b, only_changed=args.only_changed))
        print(f"-> {out / 'compare.md'}, {out / 'compare.html'}", file=sys.stderr)
    n_reg, n_imp = len(result.regressions), len(result.improvements)
    print(
        f"metabench compare: {n_reg} regression(s), {n_imp} improvement(s) among {result.matched} case(s) in both "
        f"(factor {args.factor:g}); {len(result.only_a)} only in A, {len(result.only_b)} only in B",
        file=sys.stderr,
    )
    return EXIT_FAILED if n_reg else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from metabench.report.export import export_table, read_store, resolve_format, write_table

    out = Path(args.out)
    fmt = resolve_format(out, args.format)  # an unknown format, or parquet without pyarrow: before reading
    records = _read_results("export", args.stores, read=read_store)
    table = export_table(records)
    try:
        path = write_table(table, out, fmt)
    except KeyboardInterrupt:
        raise _Interrupted(f"interrupted; {out} was not written") from None
    print(f"{len(table)} records, {len(table.columns)} columns -> {path}", file=sys.stderr)
    return EXIT_OK


_CERTIFY_EPILOG = """exit status:
  0    the function computes what --claim says on every case (without --claim: it computes one candidate on
       every case); with --memory, its memory also grows as claimed
  1    it computes something else, different things on different cases, none of the candidates, or it raised
       or returned NaN on a case (the sentence says which and the first case flagged)
  2    bad input: no such file or function, a signature that fits neither shape, a required parameter
       certification cannot fill (pass it with --hyper)

shapes (see metabench.certify.shapes):
  functional  meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, **hyper), one task
  module      meta_grad(model, loss_fn, support, query, inner_steps, inner_lr, **hyper), an nn.Linear model
"""


def _certify(args: argparse.Namespace) -> int:
    from metabench.certify import certify, load_function

    hyper = {}
    for item in args.hyper or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hyper expects NAME=VALUE, got {item!r}")
        hyper[key.strip()] = _parse_value(value.strip())
    fn = load_function(args.target)
    try:
        verdict = certify(
            fn,
            args.claim,
            shape=args.shape,
            hyper=hyper,
            iteration_param=args.iteration_param,
            memory=args.memory,
            measure_profile=not args.no_profile,
        )
    except TypeError as error:  # a signature that fits neither shape: bad input, not a crash
        raise ValueError(str(error)) from None
    print(("PASS: " if verdict.passed else "FAIL: ") + verdict.sentence)
    for note in verdict.notes:
        print(f"  {note}")
    width = max(len(c.case.describe()) for c in verdict.cases)
    for c in verdict.cases:
        claimed = (
            f"  error to {args.claim} {c.error_to(args.claim):.1e}"
            if args.claim and c.error_to(args.claim) is not None
            else ""
        )
        print(f"  case {c.index}: {c.case.describe():{width}s}  computes {c.label}{claimed}")
    if verdict.profile and verdict.profile.get("status") == "ok":
        p = verdict.profile
        slope = f" ({p['memory_slope']:.0f} bytes per step)" if p["memory_growth"] == "linear" else ""
        print(f"  memory in K = {p['inner_steps'][0]}..{p['inner_steps'][-1]}: {p['memory_growth']}{slope}")
    if args.json:
        text = verdict.to_json()
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "verdict.md").write_text(verdict.to_markdown())
        (out / "verdict.json").write_text(verdict.to_json() + "\n")
        print(f"report -> {out / 'verdict.md'}", file=sys.stderr)
    return EXIT_OK if verdict.passed else EXIT_FAILED


def _list(args: argparse.Namespace) -> int:
    from metabench.algorithms import get_algorithm
    from metabench.algorithms.registry import ALGORITHMS
    from metabench.problems import DATASETS, MODELS, PROBLEMS, problem_params
    from metabench.problems.task_sources import task_source_names
    from metabench.sweep import PRESETS

    task_source_names()  # the folder layouts register on import
    print("algorithms:")
    for name, origin in ALGORITHMS.origins().items():
        if origin.startswith("failed: "):
            print(f"  {name:18s} FAILED TO LOAD: {origin[len('failed: ') :]}")
        else:
            print(f"  {name:18s} options: {', '.join(get_algorithm(name).options)}  [{origin}]")
    print("problems:")
    for name, origin in PROBLEMS.origins().items():
        if origin.startswith("failed: "):
            print(f"  {name:18s} FAILED TO LOAD: {origin[len('failed: ') :]}")
        else:
            print(f"  {name:18s} parameters: {', '.join(problem_params(PROBLEMS.get(name)))}  [{origin}]")
    for title, registry in (("models:", MODELS), ("datasets (task sources):", DATASETS)):
        print(title)
        for name, origin in registry.origins().items():
            shown = f"FAILED TO LOAD: {origin[len('failed: ') :]}" if origin.startswith("failed: ") else f"[{origin}]"
            print(f"  {name:18s} {shown}")
    print("presets:")
    for name, spec in PRESETS.items():
        print(f"  {name:18s} {spec.get('description', '')}")
    return 0


def _profile_defaults(problem: str) -> dict:
    """The flat case ``metabench profile`` starts from: the problem's standard size and profile parameters, as the
    problem declares them (``metabench.sweep.sizes``)."""
    from metabench.sweep.sizes import profile_case

    return profile_case(problem)


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
    flat = {"inner_lr": "auto", **_profile_defaults(given["problem"]), **given}
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
    from metabench.sweep.case import CaseNotApplicable

    try:
        prepared = prepare_case(case)
    except (TypeError, CaseNotApplicable) as err:  # a bad value, or a device this machine lacks: bad input
        raise ValueError(str(err)) from err
    prepared.algorithm.check_problem(prepared.problem)
    opts = prepared.algorithm.describe()
    parts = [case["algorithm"], case["problem"], f"K{opts['inner_steps']}"]
    parts += [
        f"{short}{opts[key]}"
        for key, short in (("cg_iters", "cg"), ("neumann_iters", "N"), ("truncate", "T"))
        if key in opts
    ]
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Store warnings (a line set aside, with its file:line) as one plain line; others as Python prints them."""
    from metabench.results import StoreWarning

    if issubclass(category, StoreWarning):
        print(f"metabench: warning: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    from metabench import __version__

    parser = argparse.ArgumentParser(
        prog="metabench",
        description="Benchmark gradient-based meta-learning.",
        epilog="`metabench CMD --help` shows each command's options and exit status.",
    )
    parser.add_argument("--version", action="version", version=f"metabench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a sweep (a preset or a TOML/YAML file) into a results folder",
        description="Run every case of a sweep not yet in OUT/<sweep name>.jsonl (reruns resume).",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = run.add_mutually_exclusive_group()
    source.add_argument("--preset", default="smoke", help="named sweep (see `metabench list`); default smoke")
    source.add_argument("--config", help="sweep file (.toml, .yaml)")
    run.add_argument("--out", default="results", help="results folder (default results/); reruns resume")
    run.add_argument("--limit", type=_count, default=None, metavar="N", help="run at most N new cases (N >= 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--data-root",
        default=None,
        metavar="PATH",
        help="folder the folder data sets read (dataset = omniglot, image_folders, mini_imagenet_csv, cifar_fs)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="list the cases a run would take up and an estimated time; run nothing"
    )
    where = run.add_argument_group("where the cases run (flags win over the sweep file's [executor] table)")
    where.add_argument(
        "--executor",
        choices=("serial", "local", "dask", "submitit"),
        default=None,
        help="serial (this process, the default), local (worker processes here), dask (a cluster), submitit (SLURM)",
    )
    where.add_argument("--workers", type=int, default=None, metavar="N", help="workers at once (local: cores/threads)")
    where.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads per worker (default 1; serial: torch's)",
    )
    where.add_argument("--scheduler", default=None, metavar="ADDRESS", help="dask: an existing cluster's scheduler")
    where.add_argument(
        "--submitit-folder", default=None, metavar="DIR", help="submitit: job files (default OUT/submitit)"
    )
    where.add_argument(
        "--cluster", choices=("slurm", "local", "debug"), default=None, help="submitit: force a backend (default auto)"
    )
    where.add_argument("--partition", default=None, help="submitit: SLURM partition")
    where.add_argument("--time-min", type=int, default=None, metavar="M", help="submitit: job time limit in minutes")
    where.add_argument("--gpus-per-job", type=int, default=None, metavar="G", help="submitit: GPUs per job")
    where.add_argument("--mem-gb", type=float, default=None, metavar="GB", help="submitit: memory per job")
    where.add_argument("--chunk", type=int, default=None, metavar="C", help="submitit: cases per job (default 1)")
    where.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE here and in every worker first (your registrations); repeatable",
    )
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="Markdown + HTML report with Table 1 fits and figures, from stored records")
    report.add_argument("results", nargs="+", help="results files or folders")
    report.add_argument("--out", default="reports", help="folder for the report (default reports/)")
    report.add_argument("--title", default="metabench report", help="report title")
    report.set_defaults(func=_report)

    cmp = sub.add_parser(
        "compare",
        help="B against A case by case: time, memory, error and oracle-count ratios; exits 1 on a regression",
        description=(
            "Match the records of A and B by case_id and compare each case ok on both sides: ratios B/A of time\n"
            "and memory, errors beyond round-off, oracle counts exactly; list the cases only one side has and the\n"
            "status changes. Prints a Markdown table (+ regression, - improvement, ! no longer ok)."
        ),
        epilog=_COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("a", metavar="A", help="baseline results file or folder")
    cmp.add_argument("b", metavar="B", help="results file or folder compared against A")
    cmp.add_argument(
        "--factor",
        type=_factor,
        default=1.25,
        help="ratio B/A past which a time or memory change counts (default 1.25; below 1/factor: an improvement)",
    )
    cmp.add_argument("--metric", action="append", metavar="NAME", help="compare only these (repeatable; see below)")
    cmp.add_argument("--only-changed", action="store_true", help="list only the cases that regressed or improved")
    cmp.add_argument("--out", default=None, metavar="DIR", help="also write DIR/compare.md and DIR/compare.html")
    cmp.set_defaults(func=_compare)

    exp = sub.add_parser(
        "export",
        help="records as one flat table: CSV or Parquet",
        description="Write the records of results files or folders as one table, nested fields flattened.",
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("stores", nargs="+", metavar="STORE", help="results files or folders")
    exp.add_argument(
        "--format", choices=("csv", "parquet"), default=None, help="csv or parquet (default: from the --out suffix)"
    )
    exp.add_argument("--out", required=True, metavar="FILE", help="the file to write (replaced whole)")
    exp.set_defaults(func=_export)

    cert = sub.add_parser(
        "certify",
        help="which meta-gradient an outside function computes, against the closed forms; exits 1 if not the claim",
        description=(
            "Run MODULE:FUNCTION (a .py file or an importable module) on closed-form linear-meta-regression tasks\n"
            "(float64 and float32, several shapes, kappa, K and step sizes) and say which meta-gradient it computes:\n"
            "maml, truncated (and its T), fomaml, implicit (and whether its error falls with the iterations), zero,\n"
            "or none of these; with its peak memory against K."
        ),
        epilog=_CERTIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cert.add_argument("target", metavar="MODULE:FUNCTION", help="e.g. examples/certify/maml.py:meta_grad")
    cert.add_argument("--claim", choices=("maml", "truncated", "fomaml", "implicit"), help="what it should compute")
    cert.add_argument(
        "--shape", choices=("functional", "module"), help="its calling shape (default: from its parameters)"
    )
    cert.add_argument("--hyper", action="append", metavar="NAME=VALUE", help="a fixed extra parameter (repeatable)")
    cert.add_argument(
        "--iteration-param", default=None, metavar="NAME", help="its iteration count, if not cg_iters etc."
    )
    cert.add_argument("--memory", choices=("flat", "sqrt", "linear"), help="claimed peak-memory growth in K")
    cert.add_argument("--no-profile", action="store_true", help="skip the memory and time profile against K")
    cert.add_argument("--json", default=None, metavar="FILE", help="write the verdict as JSON ('-': stdout)")
    cert.add_argument("--report", default=None, metavar="DIR", help="write DIR/verdict.md and DIR/verdict.json")
    cert.set_defaults(func=_certify)

    lst = sub.add_parser(
        "list",
        help="algorithms, problems, models, data sets (built-in and plugins', with where each comes from), presets",
    )
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
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except BrokenPipeError:  # the reader went away (`metabench ... | head`): stop quietly, as a shell tool does
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so that the interpreter's flush at exit stays quiet
        return EXIT_BROKEN_PIPE
    except (ValueError, OSError) as err:  # bad input, a missing or unwritable path
        print(f"metabench {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:  # Ctrl-C: one line, no traceback
        _say_interrupted(args.command, str(err) if isinstance(err, _Interrupted) else "interrupted")
        return EXIT_INTERRUPTED


def _say_interrupted(command: str, message: str) -> None:
    """Print the interrupt line with a second Ctrl-C ignored, so it cannot turn into a traceback."""
    import signal

    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no handler to swap
        previous = None
    try:
        print(f"metabench {command}: {message}", file=sys.stderr, flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())

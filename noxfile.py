"""Nox sessions for metabench. Each session installs what it needs itself.

    nox -s tests                 the test suite (what README and .ci/run run)
    nox -s slow                  the long checks marked `slow`
    nox -s tests_two_threads     the suite with 2 intra-op threads per test (METABENCH_TEST_THREADS=2)
    nox -s lint                  ruff
    nox -s bench                 the default metabench sweep (smoke) and its report
    nox -s asv                   asv for the current commit; `nox -s asv -- HEAD~3..HEAD` for a range
    nox -s asv_compare -- A B    asv results of commits A and B compared; non-zero exit on a regression
                                 beyond --factor (default 1.25; e.g. `-- main HEAD --factor 1.5`)
    nox -s pytest_benchmark      micro-benchmarks, saved under .benchmarks/ and compared with the last run

asv keeps its environments under .asv/env and its results under .asv/results (see asv.conf.json);
`asv publish` then writes the HTML history to .asv/html.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]

# The CPU build of torch; it must go in before the project, whose torch range
# it satisfies, so pip never resolves the multi-GB CUDA build.
TORCH = "torch==2.13.0"
ASV = ["asv>=0.6", "virtualenv"]


def _install(session: nox.Session, extras: str = "dev") -> None:
    """Install torch first, then the project with ``extras``."""
    session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


MACHINE = platform.node()  # asv's default machine name


def _asv_machine(session: nox.Session) -> None:
    """asv needs a machine description; record this one (named after the host) without questions."""
    session.run("asv", "machine", "--yes", "--machine", MACHINE, silent=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the default test suite (slow checks excluded)."""
    _install(session, "dev,distributed")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tests_two_threads(session: nox.Session) -> None:
    """The suite with two intra-op threads in every test: no assertion may depend on one reduction order."""
    _install(session)
    session.run("python", "-m", "pytest", *session.posargs, env={"METABENCH_TEST_THREADS": "2"})


@nox.session
def slow(session: nox.Session) -> None:
    """Run the long checks marked `slow`."""
    _install(session, "dev,distributed")
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff over the package, tests, benchmarks and this file."""
    session.install("ruff>=0.4")
    session.run("ruff", "check", "metabench", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "metabench", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """The default sweep and its report: `nox -s bench -- table1` runs another preset."""
    _install(session, extras="")
    preset = session.posargs[0] if session.posargs else "smoke"
    session.run("metabench", "run", "--preset", preset, "--out", "results")
    session.run("metabench", "report", "results", "--out", f"reports/{preset}")


@nox.session
def asv(session: nox.Session) -> None:
    """asv over commits (default: the current commit, HEAD^!), kept under .asv/results."""
    session.install(*ASV)
    _asv_machine(session)
    revisions = session.posargs or ["HEAD^!"]
    session.run("asv", "run", "--machine", MACHINE, "--skip-existing-successful", "--show-stderr", *revisions)


def _regressions(table: str) -> list[str]:
    """Rows of `asv compare` output marked worse ('+') or newly failing ('!')."""
    return [line for line in table.splitlines() if line.startswith(("| +", "| !"))]


@nox.session
def asv_compare(session: nox.Session) -> None:
    """Benchmark two commits (where not done yet) and fail on a regression beyond --factor."""
    parser = argparse.ArgumentParser(prog="nox -s asv_compare --")
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--factor", type=float, default=1.25, help="ratio counted as a regression (default 1.25)")
    args = parser.parse_args(session.posargs)
    session.install(*ASV)
    _asv_machine(session)
    for rev in (args.base, args.head):
        session.run("asv", "run", "--machine", MACHINE, "--skip-existing-successful", f"{rev}^!")
    table = session.run(
        "asv",
        "compare",
        "--machine",
        MACHINE,
        "--split",
        "--factor",
        str(args.factor),
        args.base,
        args.head,
        silent=True,
        success_codes=[0, 1],
    )
    print(table)
    if "| Change" not in (table or ""):
        session.error("asv compare printed no comparison table (see above)")
    worse = _regressions(table or "")
    if worse:
        session.error(f"{len(worse)} benchmark(s) regressed beyond factor {args.factor}")
    session.log(f"no regression beyond factor {args.factor}")


@nox.session
def pytest_benchmark(session: nox.Session) -> None:
    """Micro-benchmarks of solvers and instruments, saved and compared with the last saved run."""
    _install(session)
    storage = Path(".benchmarks")
    compare = ["--benchmark-compare"] if any(storage.rglob("*.json")) else []
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks/micro",
        "-n",
        "0",  # pytest-benchmark times nothing under xdist workers
        "-p",
        "no:randomly",
        f"--benchmark-storage={storage}",
        "--benchmark-autosave",
        "--benchmark-columns=median,iqr,rounds",
        *compare,
        *session.posargs,
    )

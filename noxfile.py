"""Nox sessions for metabench (tests, slow checks, lint)."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]

# The CPU build of torch; it must go in before the project, whose torch range
# it satisfies, so pip never resolves the multi-GB CUDA build.
TORCH = "torch==2.13.0"


def _install(session: nox.Session) -> None:
    """Install torch first, then the project with its dev extras."""
    session.install(TORCH)
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the default test suite (slow checks excluded)."""
    _install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Run the long checks marked `slow`."""
    _install(session)
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff over the package, tests, benchmarks and this file."""
    session.install("ruff>=0.4")
    session.run("ruff", "check", "metabench", "tests", "benchmarks", "noxfile.py")

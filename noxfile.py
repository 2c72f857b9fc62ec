"""Developer sessions: ``nox -s tests lint typecheck docs bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install(".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(".[test]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    session.install(".[docs]")
    session.run(
        "sphinx-build", "-W", "-n", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session
def bench(session: nox.Session) -> None:
    session.install(".[test]")
    session.run("python", "benchmarks/bench_messages.py", *session.posargs)
    session.run("python", "benchmarks/bench_files.py")
    session.run("python", "benchmarks/bench_connect.py")


@nox.session
def soak(session: nox.Session) -> None:
    """The 20-peer mesh on the namespace LAN for some minutes (needs root)."""
    session.install(".[test]")
    session.run("python", "benchmarks/soak_lan.py", *session.posargs)

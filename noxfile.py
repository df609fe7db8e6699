"""Developer tasks: ``nox -s lint typecheck tests`` is what CI runs; ``nox -s bench`` measures."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

LINT_TOOLS = ["ruff>=0.5"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", "trilb", "tests", "bench", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "trilb", "tests", "bench", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the benchmarks and the examples."""
    session.install("-e", ".[test]", "mypy>=1.10", "nox")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage (pass pytest arguments after --)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "--cov=trilb",
        "--cov-report=term",
        *(session.posargs or ["-q"]),
    )


@nox.session
def e2e(session: nox.Session) -> None:
    """trilb in front of two real WordPress servers (examples/wordpress): the release check.

    Installs the Debian packages it lacks (mariadb-server, apache2, libapache2-mod-php,
    php-mysql, wordpress; needs root for that), brings the stack up on 127.0.0.1, runs
    tests/e2e/test_wordpress.py through trilb and takes the stack down again."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-m", "wordpress", "tests/e2e/test_wordpress.py", *(session.posargs or ["-v"])
    )


@nox.session
def bench(session: nox.Session) -> None:
    """trilb vs HAProxy vs nginx, side by side (needs wrk, nginx, haproxy; installs none)."""
    session.install("-e", ".")
    session.run("python", "bench/run.py", *session.posargs)

"""Developer sessions: `nox -s tests` (float32 and float64) and `nox -s lint`."""

import nox

nox.options.sessions = ["tests", "lint", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, once with JAX's default float32 and once with JAX_ENABLE_X64=1, on
    every core (at most four pytest-xdist workers)."""
    session.install("-e", ".[test]")
    parallel = ("-n", "auto", "--maxprocesses", "4")  # pytest-xdist: compiling is serial
    session.run("pytest", *parallel, *session.posargs, env={"JAX_ENABLE_X64": "0"})
    session.run("pytest", *parallel, *session.posargs, env={"JAX_ENABLE_X64": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, examples and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "optiframe", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs-material + mkdocstrings), warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")

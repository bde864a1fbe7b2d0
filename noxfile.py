"""Development sessions. Run ``./run <session>`` on a fresh machine (it bootstraps nox and uv).

Sessions: ``tests`` (core unit tests), ``lint``, ``typecheck``, ``example``, ``bench``,
``contract-<backend>``, ``services``, ``services-smoke``; ``ci`` runs what CI runs.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml"))
DEV = ["pytest>=8", "pytest-asyncio>=0.24", "hypothesis>=6.100"]

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["ci"]


def _install_packages(session: nox.Session, *extra: str) -> None:
    args: list[str] = []
    for package in PACKAGES:
        args += ["-e", str(package)]
    session.install(*args, *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """Core unit tests (no services needed)."""
    _install_packages(session, *DEV)
    session.run("pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every package."""
    _install_packages(session, "mypy>=1.10", *DEV)
    session.run("mypy")


@nox.session
def example(session: nox.Session) -> None:
    """Run the content-moderation example in memory (no services)."""
    _install_packages(session)
    session.run("python", "examples/content_moderation.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; results go to benchmarks/results/. ``nox -s bench -- redis`` for Redis."""
    _install_packages(session)
    session.run("python", "benchmarks/bench_inmem.py", "--ts", *session.posargs)


@nox.session
def ci(session: nox.Session) -> None:
    """Everything CI runs, in one session (one environment, so it installs once)."""
    _install_packages(session, *DEV, "mypy>=1.10", "ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("pytest", "tests", "-q")
    session.run("pytest", "contract-tests", "--backend", "memory", "-q")
    session.run("python", "examples/content_moderation.py")


BACKENDS = sorted(p.stem for p in ROOT.glob("contract-tests/backends/*.py") if p.stem != "__init__")


def _contract(session: nox.Session, backend: str) -> None:
    _install_packages(session, *DEV)
    session.run("pytest", "contract-tests", "--backend", backend, *session.posargs)


@nox.session(name="contract")
@nox.parametrize("backend", BACKENDS, ids=BACKENDS)
def contract(session: nox.Session, backend: str) -> None:
    """The contract suite against one backend: ``nox -s "contract(memory)"``."""
    _contract(session, backend)


@nox.session(name="contract-memory")
def contract_memory(session: nox.Session) -> None:
    """The contract suite against the in-memory reference backend (no services)."""
    _contract(session, "memory")


@nox.session(name="contract-all")
def contract_all(session: nox.Session) -> None:
    """The contract suite against every backend that has a fixture module."""
    for backend in BACKENDS:
        _contract(session, backend)

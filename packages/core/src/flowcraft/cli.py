"""The ``flowcraft`` command line (needs the ``cli`` extra: click; rich for live progress).

In-memory commands: ``run``, ``graph`` and ``lint``. Distributed commands against any installed
backend: ``worker``, ``start``, ``status``, ``wait``, ``cancel``, ``resume`` and ``reconcile``.
All are commands of the click group :data:`cli`.

Configuration, highest precedence first: command-line flags, ``FLOWCRAFT_*`` environment
variables (``FLOWCRAFT_REGISTRY``, ``FLOWCRAFT_CONCURRENCY``, ``FLOWCRAFT_BACKEND``,
``FLOWCRAFT_APP``, ``FLOWCRAFT_CONFIG``, ...), then a TOML file given by ``--config``: top-level
keys apply to every command that has that option, a table named after a command (``[run]``)
to that command only.

Exit codes: ``0`` success (a run that completed or paused awaiting), ``1`` a run that failed,
stalled or was cancelled (or not completed, for ``wait``), or a blueprint with lint errors,
``2`` bad input (unreadable blueprint, unknown module or backend, bad JSON, bad option), or
click is not installed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "cli",
    "load_app",
    "load_source",
    "main",
    "resolve_backend",
]

_NO_CLICK = (
    "flowcraft: the command line needs click; install it with: pip install 'flowcraft-core[cli]'"
)

try:
    import click  # noqa: F401

    _HAVE_CLICK = True
except ImportError:  # pragma: no cover - exercised in a subprocess without click
    _HAVE_CLICK = False

if _HAVE_CLICK or TYPE_CHECKING:
    from flowcraft._cli_commands import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, cli, load_source
    from flowcraft._cli_distributed import load_app, resolve_backend


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``flowcraft`` command (exits 2 with a hint when click is missing)."""
    if not _HAVE_CLICK:
        print(_NO_CLICK, file=sys.stderr)
        raise SystemExit(2)
    cli.main(args=argv, prog_name="flowcraft")

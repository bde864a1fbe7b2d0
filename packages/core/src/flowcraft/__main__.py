"""``python -m flowcraft worker --backend <name> --app module:attr``.

``attr`` is an object (or dict) with ``registry`` and ``blueprints``. Backends are found in the
``flowcraft.adapters`` entry-point group (a factory taking ``registry=`` and ``blueprints=``
and returning an adapter); ``memory`` is built in, useful only with an in-process client.
SIGTERM and SIGINT stop the worker gracefully: running jobs finish or are handed back.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

__all__ = ["load_app", "main", "resolve_backend"]


def load_app(spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(registry, blueprints)`` named by ``module:attr``.

    Raises:
        ValueError: ``spec`` is not ``module:attr`` or the object lacks the two fields.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app must be module:attr, got {spec!r}")
    app: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        app = getattr(app, part)
    if isinstance(app, dict):
        registry, blueprints = app.get("registry"), app.get("blueprints")
    else:
        registry, blueprints = getattr(app, "registry", None), getattr(app, "blueprints", None)
    if registry is None or blueprints is None:
        raise ValueError(f"--app {spec!r} must provide 'registry' and 'blueprints'")
    return dict(registry), dict(blueprints)


def resolve_backend(name: str) -> Callable[..., Any]:
    """The adapter factory registered as ``name``.

    Raises:
        ValueError: No backend of that name is installed.
    """
    if name == "memory":
        from flowcraft.memory import MemoryAdapter

        return MemoryAdapter
    for entry in entry_points(group="flowcraft.adapters"):
        if entry.name == name:
            factory: Callable[..., Any] = entry.load()
            return factory
    raise ValueError(
        f"unknown backend {name!r}: install its package (entry point group flowcraft.adapters)"
    )


async def _serve(args: argparse.Namespace) -> None:
    from flowcraft.distributed import Worker

    registry, blueprints = load_app(args.app)
    adapter = resolve_backend(args.backend)(registry=registry, blueprints=blueprints)
    worker = Worker(adapter, concurrency=args.concurrency)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker.start()
    logging.getLogger("flowcraft").info("worker started (backend %s)", args.backend)
    await stop.wait()
    await worker.stop(timeout=args.grace)
    await adapter.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; the exit status."""
    parser = argparse.ArgumentParser(prog="flowcraft")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="serve jobs of a distributed backend")
    worker.add_argument("--backend", default="memory")
    worker.add_argument("--app", required=True, help="module:attr with registry and blueprints")
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--grace", type=float, default=30.0, help="seconds to finish jobs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_serve(args))
    except ValueError as exc:
        print(f"flowcraft: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

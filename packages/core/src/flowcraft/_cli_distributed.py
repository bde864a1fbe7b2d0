"""The distributed commands of the ``flowcraft`` CLI: ``worker`` and the client commands.

``--app module:attr`` names an object (or dict) with ``registry`` and ``blueprints``. Backends
are found in the ``flowcraft.adapters`` entry-point group (a factory taking ``registry=`` and
``blueprints=`` and returning an adapter, configured from its own environment variables);
``memory`` is built in, useful only within one process.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

import click

from flowcraft._cli_commands import EXIT_FAILED, BadInput, _import_attr, _load_state, cli
from flowcraft.distributed import Client, DistributedAdapter, Reconciler, Worker
from flowcraft.errors import FlowcraftError
from flowcraft.events import FlowEvent

__all__ = ["load_app", "resolve_backend"]

_T = TypeVar("_T")


def load_app(spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(registry, blueprints)`` named by ``module:attr``.

    Raises:
        BadInput: ``spec`` is not ``module:attr``, cannot be imported, or the object lacks
            the two fields (exit code 2).
    """
    app = _import_attr(spec, "--app")
    if isinstance(app, dict):
        registry, blueprints = app.get("registry"), app.get("blueprints")
    else:
        registry, blueprints = getattr(app, "registry", None), getattr(app, "blueprints", None)
    if registry is None or blueprints is None:
        raise BadInput(f"--app {spec!r} must provide 'registry' and 'blueprints'")
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


def _adapter(
    backend: str, app: str, concurrency: int | None = None, *, run_events: bool = False
) -> DistributedAdapter:
    try:
        factory = resolve_backend(backend)
        registry, blueprints = load_app(app)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    options: dict[str, Any] = {}
    # Backends whose queue client has a concurrency of its own (BullMQ) get the worker's.
    if concurrency is not None and "concurrency" in inspect.signature(factory).parameters:
        options["concurrency"] = concurrency
    if run_events:
        options["run_events"] = True
    adapter: DistributedAdapter = factory(registry=registry, blueprints=blueprints, **options)
    return adapter


def _with_client(backend: str, app: str, action: Callable[[Client], Awaitable[_T]]) -> _T:
    """Run ``action`` against a client of ``backend``; flowcraft errors are bad input."""
    adapter = _adapter(backend, app)

    async def go() -> _T:
        try:
            return await action(Client(adapter))
        finally:
            await adapter.close()

    try:
        return asyncio.run(go())
    except FlowcraftError as exc:
        raise BadInput(str(exc)) from exc


def _json_option(value: str | None, name: str) -> Any:
    try:
        return json.loads(value) if value is not None else None
    except ValueError as exc:
        raise BadInput(f"{name} is not valid JSON: {exc}") from exc


_backend_option = click.option(
    "--backend",
    default="memory",
    show_default=True,
    envvar="FLOWCRAFT_BACKEND",
    help="Backend name (entry point in flowcraft.adapters; env: FLOWCRAFT_BACKEND).",
)
_app_option = click.option(
    "--app",
    required=True,
    envvar="FLOWCRAFT_APP",
    metavar="MODULE:ATTR",
    help="Object or dict with 'registry' and 'blueprints' (env: FLOWCRAFT_APP).",
)


def _backend_options(f: Callable[..., Any]) -> Callable[..., Any]:
    return _backend_option(_app_option(f))


@cli.command()
@_backend_options
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    envvar="FLOWCRAFT_CONCURRENCY",
    help="Jobs handled at once (env: FLOWCRAFT_CONCURRENCY).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish on SIGTERM/SIGINT.",
)
@click.option(
    "--max-deliveries",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    envvar="FLOWCRAFT_MAX_DELIVERIES",
    help="Deliveries of a job after which it is dead-lettered and its run failed"
    " (env: FLOWCRAFT_MAX_DELIVERIES).",
)
@click.option(
    "--reconcile-every",
    type=click.FloatRange(min=0),
    default=None,
    envvar="FLOWCRAFT_RECONCILE_EVERY",
    help="Seconds between the reconcile passes one worker of the deployment makes; 0: never"
    " (default: the lease; env: FLOWCRAFT_RECONCILE_EVERY).",
)
@click.option(
    "--stalled-after",
    type=click.FloatRange(min=0),
    default=None,
    envvar="FLOWCRAFT_STALLED_AFTER",
    help="Seconds without progress after which a run is reconciled"
    " (default: ten leases, at least 60; env: FLOWCRAFT_STALLED_AFTER).",
)
@click.option(
    "--run-events",
    is_flag=True,
    envvar="FLOWCRAFT_RUN_EVENTS",
    help="Write every event of the runs this worker serves to the backend's event log, for"
    " `flowcraft watch` and Client.events (costs throughput; env: FLOWCRAFT_RUN_EVENTS).",
)
def worker(
    backend: str,
    app: str,
    concurrency: int,
    grace: float,
    max_deliveries: int,
    reconcile_every: float | None,
    stalled_after: float | None,
    run_events: bool,
) -> None:
    """Serve jobs of a distributed backend until SIGTERM or SIGINT (then stop gracefully).

    One worker of the deployment at a time also re-enqueues the lost jobs of stalled runs.
    """
    adapter = _adapter(backend, app, concurrency, run_events=run_events)
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        running = Worker(
            adapter,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            reconcile_every=reconcile_every,
            stalled_after=stalled_after,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        running.start()
        logging.getLogger("flowcraft").info("worker started (backend %s)", backend)
        try:
            await stop.wait()
            await running.stop(timeout=grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await adapter.close()

    asyncio.run(serve())


@cli.command()
@click.argument("blueprint_id")
@_backend_options
@click.option("--state", help="Initial context as JSON, or @file.json.")
def start(blueprint_id: str, backend: str, app: str, state: str | None) -> None:
    """Start a run of BLUEPRINT_ID; print its run id."""
    initial = _load_state(state)
    click.echo(_with_client(backend, app, lambda c: c.start(blueprint_id, initial)))


@cli.command()
@click.argument("run_id")
@_backend_options
@click.option("--no-follow", is_flag=True, help="Print the events so far and exit.")
def watch(run_id: str, backend: str, app: str, no_follow: bool) -> None:
    """Show RUN_ID's events live, with a progress bar of its nodes; exit 1 unless it completed.

    Its workers must write events (``flowcraft worker --run-events``).
    """

    # Only here: a worker needs click alone.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    async def follow(client: Client) -> str:
        adapter = client.adapter
        meta = await adapter.meta(run_id)
        blueprint = adapter.blueprints.get(meta[0]) if meta is not None else None
        total = len(blueprint.nodes) if blueprint is not None else None
        status = "running"
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task(run_id, total=total)
            async for event in client.events(run_id, follow=not no_follow):
                line = _event_line(event)
                if line is not None:
                    progress.console.print(line, highlight=False)
                if event.type in ("node:finish", "node:skipped"):
                    progress.advance(task)
                elif event.type == "workflow:finish":
                    status = str(event.payload.get("status"))
                    progress.update(task, description=f"{run_id} {status}")
        return status

    if _with_client(backend, app, follow) != "completed":
        raise SystemExit(EXIT_FAILED)


def _event_line(event: FlowEvent) -> str | None:
    payload = event.payload
    node = payload.get("nodeId")
    if event.type == "node:finish":
        return f"✓ {node}"
    if event.type == "node:error":
        error = payload.get("error")
        return f"✗ {node}: {error.get('message') if isinstance(error, dict) else error}"
    if event.type == "node:retry":
        return f"↻ {node} attempt {payload.get('attempt')} failed: {payload.get('error')}"
    if event.type == "node:fallback":
        return f"↪ {node} → {payload.get('fallback')}"
    if event.type.startswith("workflow:"):
        extra = f" {payload.get('status')}" if "status" in payload else ""
        return f"{event.type}{extra}"
    return None


@cli.command()
@click.argument("run_id")
@_backend_options
def status(run_id: str, backend: str, app: str) -> None:
    """Print RUN_ID's status (running, awaiting, a final status, or unknown)."""
    click.echo(_with_client(backend, app, lambda c: c.status(run_id)))


@cli.command()
@click.argument("run_id")
@_backend_options
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds to wait (default: forever).")
def wait(run_id: str, backend: str, app: str, timeout: float | None) -> None:
    """Wait for RUN_ID and print its result JSON; exit 1 unless it completed."""
    try:
        result = _with_client(backend, app, lambda c: c.wait(run_id, timeout))
    except TimeoutError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    click.echo(json.dumps(result.to_dict() | {"runId": result.run_id}, default=str))
    if result.status != "completed":
        raise SystemExit(EXIT_FAILED)


@cli.command()
@click.argument("run_id")
@_backend_options
def cancel(run_id: str, backend: str, app: str) -> None:
    """Cancel RUN_ID; exit 1 if it had already finished (or never started)."""

    async def go(client: Client) -> bool:
        return await client.status(run_id) != "unknown" and await client.cancel(run_id)

    if not _with_client(backend, app, go):
        click.echo(f"run {run_id} was not cancelled: it is unknown or already finished", err=True)
        raise SystemExit(EXIT_FAILED)
    click.echo("cancelled")


@cli.command()
@click.argument("run_id")
@_backend_options
@click.option("--action", required=True, help="The action to route by.")
@click.option("--output", "output_json", help="The awaiting node's output, as JSON.")
@click.option("--node", "node_id", help="The awaiting node (needed when several await).")
def resume(
    run_id: str, backend: str, app: str, action: str, output_json: str | None, node_id: str | None
) -> None:
    """Resume awaiting RUN_ID with ACTION; print the resumed node's id."""
    if output_json is None:
        resumed = _with_client(
            backend, app, lambda c: c.resume_with_action(run_id, action, node_id=node_id)
        )
    else:
        output = _json_option(output_json, "--output")
        resumed = _with_client(
            backend, app, lambda c: c.resume_with_action(run_id, action, output, node_id)
        )
    click.echo(resumed)


@cli.command()
@_backend_options
@click.option(
    "--stalled-after",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds without progress after which a run counts as stalled.",
)
def reconcile(backend: str, app: str, stalled_after: float) -> None:
    """Re-enqueue the frontier of stalled runs once; print the stats JSON."""
    adapter = _adapter(backend, app)

    async def go() -> Any:
        try:
            return await Reconciler(adapter, stalled_after=stalled_after).run()
        finally:
            await adapter.close()

    click.echo(json.dumps(asyncio.run(go())))

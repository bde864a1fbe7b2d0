"""The in-memory commands of the ``flowcraft`` CLI (``run``, ``graph``, ``lint``) and its group.

Imported by :mod:`flowcraft.cli`, which documents configuration and exit codes; needs click.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import click

from flowcraft.analysis import lint_blueprint, to_mermaid
from flowcraft.blueprint import Blueprint, load_blueprint
from flowcraft.errors import FlowcraftError
from flowcraft.events import EventBus, FlowEvent
from flowcraft.inspector import (
    PngRenderer,
    PngRenderError,
    PngRendererUnavailable,
    RunRecord,
    render_run_svg,
    svg_to_png,
)
from flowcraft.result import WorkflowResult
from flowcraft.runtime.runtime import FlowRuntime

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "BadInput", "cli", "load_source"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(click.ClickException):
    """Bad input: printed as ``Error: ...`` on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT


# --------------------------------------------------------------------------- loading


def _import_attr(spec: str, what: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"{what} '{spec}' must be 'module:attribute'")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"{what} '{spec}': cannot import {module_name}: {exc}") from exc
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise BadInput(f"{what} '{spec}': {module_name} has no attribute '{attr}'") from None
    return value


def load_source(source: str) -> tuple[Blueprint, dict[str, Any]]:
    """A blueprint and the implementations it brings from ``source``.

    ``source`` is a JSON file, or ``module:attr`` naming a :class:`~flowcraft.Flow` (its
    functions come along), a :class:`Blueprint` or a blueprint mapping (or a function without
    arguments returning one of these).

    Raises:
        BadInput: The file or module cannot be read, or the blueprint is invalid.
    """
    path = Path(source)
    try:
        if path.suffix.lower() == ".json" or path.exists():
            if not path.is_file():
                raise BadInput(f"blueprint file {source} does not exist")
            return load_blueprint(path), {}
        value = _import_attr(source, "blueprint")
        if callable(value) and not isinstance(value, type) and not hasattr(value, "to_blueprint"):
            value = value()
        if hasattr(value, "to_blueprint"):
            registry = getattr(value, "function_registry", None) or {}
            return value.to_blueprint(), dict(registry)
        if isinstance(value, Blueprint | Mapping | str):
            return load_blueprint(value), {}
        raise BadInput(f"{source} is a {type(value).__name__}, not a flow or blueprint")
    except FlowcraftError as exc:
        raise BadInput(f"{source}: {exc}") from exc


def _load_registry(specs: tuple[str, ...]) -> dict[str, Any]:
    registry: dict[str, Any] = {}
    for spec in specs:
        value = _import_attr(spec, "registry")
        if callable(value) and not isinstance(value, Mapping):
            value = value()
        if not isinstance(value, Mapping):
            raise BadInput(f"registry '{spec}' is a {type(value).__name__}, not a mapping")
        registry.update(value)
    return registry


def _load_state(state: str | None) -> dict[str, Any] | None:
    if state is None:
        return None
    text = state
    if state.startswith("@"):
        try:
            text = Path(state[1:]).read_text()
        except OSError as exc:
            raise BadInput(f"cannot read state file {state[1:]}: {exc}") from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"--state is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadInput("--state must be a JSON object")
    return value


def _config_default_map(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.get("flowcraft", data)
    shared = {k.replace("-", "_"): v for k, v in section.items() if not isinstance(v, dict)}
    default_map: dict[str, Any] = {}
    for name, command in cli.commands.items():
        params = {p.name for p in command.params}
        values = {k: v for k, v in shared.items() if k in params}
        table = section.get(name)
        if isinstance(table, dict):
            values.update({k.replace("-", "_"): v for k, v in table.items()})
        if "registry" in values and isinstance(values["registry"], str):
            values["registry"] = [values["registry"]]
        default_map[name] = values
    return default_map


# --------------------------------------------------------------------------- progress


class _Progress:
    """Prints node progress: a rich live table on a terminal, else one line per event."""

    def __init__(self, *, rich_display: bool) -> None:
        self._starts: dict[str, float] = {}
        self._states: dict[str, str] = {}
        self._live: Any = None
        if rich_display:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                rich_display = False
            else:
                self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=8)
        self.rich_display = rich_display

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="flowcraft run", show_edge=False)
        table.add_column("node")
        table.add_column("state")
        for node_id, state in self._states.items():
            table.add_row(node_id, state)
        return table

    def __enter__(self) -> _Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def __call__(self, event: FlowEvent) -> None:
        payload = event.payload
        node_id = str(payload.get("nodeId", ""))
        if event.type == "node:start":
            self._starts[node_id] = time.monotonic()
            line, state = f"▶ {node_id}", "running"
        elif event.type == "node:finish":
            ms = (time.monotonic() - self._starts.pop(node_id, time.monotonic())) * 1000
            line, state = f"✓ {node_id} ({ms:.0f} ms)", f"completed ({ms:.0f} ms)"
        elif event.type == "node:error":
            error = payload.get("error")
            message = error.get("message") if isinstance(error, Mapping) else error
            line, state = f"✗ {node_id}: {message}", "failed"
        elif event.type == "node:retry":
            line, state = f"↻ {node_id} attempt {payload.get('attempt')} failed", "retrying"
        else:
            return
        self._states[node_id] = state
        if self._live is not None:
            self._live.update(self._table())
        else:
            click.echo(line, err=True)


# --------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="FLOWCRAFT_CONFIG",
    help="TOML file with default options (env: FLOWCRAFT_CONFIG).",
)
@click.version_option(package_name="flowcraft-core", prog_name="flowcraft")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Flowcraft: run, inspect and lint blueprints; serve and drive distributed runs."""
    ctx.default_map = _config_default_map(config_path)


_registry_option = click.option(
    "--registry",
    "registry",
    multiple=True,
    envvar="FLOWCRAFT_REGISTRY",
    metavar="MODULE:ATTR",
    help="Mapping of uses keys to implementations; repeatable (env: FLOWCRAFT_REGISTRY).",
)


@cli.command()
@click.argument("source")
@_registry_option
@click.option("--state", help="Initial context as JSON, or @file.json.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    envvar="FLOWCRAFT_CONCURRENCY",
    help="Nodes of the run executing at once (env: FLOWCRAFT_CONCURRENCY).",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    envvar="FLOWCRAFT_PROGRESS",
    help="Show node progress on stderr (a live table on a terminal when rich is installed).",
)
@click.option(
    "--output",
    type=click.Choice(["json", "summary"]),
    default="json",
    envvar="FLOWCRAFT_OUTPUT",
    help="Print the WorkflowResult JSON (default) or a one-line summary.",
)
def run(
    source: str,
    registry: tuple[str, ...],
    state: str | None,
    concurrency: int | None,
    progress: bool,
    output: str,
) -> None:
    """Run SOURCE (blueprint.json or module:flow) in memory and print the result."""
    blueprint, implementations = load_source(source)
    implementations.update(_load_registry(registry))
    initial = _load_state(state)
    bus = EventBus()
    runtime = FlowRuntime(event_bus=bus, concurrency=concurrency or 10)
    reporter = _Progress(rich_display=sys.stderr.isatty()) if progress else None
    if reporter is not None:
        bus.subscribe(reporter, ["node:start", "node:finish", "node:error", "node:retry"])

    async def go() -> WorkflowResult:
        return await runtime.run(blueprint, initial, function_registry=implementations)

    try:
        if reporter is not None:
            with reporter:
                result = asyncio.run(go())
        else:
            result = asyncio.run(go())
    except FlowcraftError as exc:
        raise BadInput(str(exc)) from exc
    if output == "summary":
        click.echo(f"{result.status} {result.run_id}")
    else:
        click.echo(json.dumps(result.to_dict() | {"runId": result.run_id}, default=str))
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    if result.status not in ("completed", "awaiting"):
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("source")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "svg", "png"]),
    default="mermaid",
    envvar="FLOWCRAFT_GRAPH_FORMAT",
    help="Mermaid text (default), an SVG drawing, or that drawing as PNG.",
)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write to a file, not stdout.")
@click.option(
    "--renderer",
    type=click.Choice(["cairosvg", "chromium"]),
    help="PNG renderer (default: CairoSVG if installed, else Chromium).",
)
def graph(source: str, fmt: str, out: str | None, renderer: str | None) -> None:
    """Draw SOURCE's graph as Mermaid text, SVG or PNG."""
    blueprint, _ = load_source(source)
    if fmt == "mermaid":
        text = to_mermaid(blueprint)
    else:
        record = RunRecord(id="", blueprint_id=blueprint.id, status="", blueprint=blueprint)
        text = render_run_svg(record)
    if fmt == "png":
        _write_png(text, out, renderer)
        return
    if out:
        Path(out).write_text(text + "\n")
    else:
        click.echo(text)


def _write_png(svg: str, out: str | None, renderer: str | None) -> None:
    # Typed BinaryIO on every click release (get_binary_stream's stub changed in click 8.5).
    stdout = sys.stdout.buffer
    if not out and stdout.isatty():
        raise BadInput("PNG is binary: write it to a file with -o FILE")
    try:
        # click.Choice admits only the renderer names.
        data = svg_to_png(svg, renderer=cast("PngRenderer | None", renderer))
    except PngRendererUnavailable as exc:
        raise BadInput(str(exc)) from exc
    except PngRenderError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if out:
        Path(out).write_bytes(data)
    else:
        stdout.write(data)
        stdout.flush()


@cli.command()
@click.argument("source")
@_registry_option
@click.option("--json", "as_json", is_flag=True, help="Print the issues as JSON.")
def lint(source: str, registry: tuple[str, ...], as_json: bool) -> None:
    """Check SOURCE without running it; exit 1 if it has errors.

    Implementations are checked when SOURCE is a flow or --registry is given.
    """
    path = Path(source)
    raw: Any
    implementations: dict[str, Any] | None = None
    if path.suffix.lower() == ".json" or path.exists():
        try:
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise BadInput(f"cannot read {source}: {exc}") from exc
        except ValueError as exc:
            raise BadInput(f"{source} is not valid JSON: {exc}") from exc
    else:
        raw, implementations = load_source(source)
    if registry:
        implementations = {**(implementations or {}), **_load_registry(registry)}
    try:
        result = lint_blueprint(raw, implementations or None)
    except FlowcraftError as exc:
        raise BadInput(f"{source}: {exc}") from exc
    if as_json:
        click.echo(
            json.dumps({"isValid": result.is_valid, "issues": [i.to_dict() for i in result.issues]})
        )
    else:
        for issue in result.issues:
            where = f" [{issue.node_id}]" if issue.node_id else ""
            click.echo(f"{issue.severity}: {issue.code}{where}: {issue.message}")
        click.echo("ok" if result.is_valid else f"{len(result.errors)} error(s)")
    if not result.is_valid:
        sys.exit(EXIT_FAILED)

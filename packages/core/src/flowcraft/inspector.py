"""Run inspector: record runs from the event bus and draw a run's DAG as server-side SVG.

:class:`RunRecorder` is an event-bus subscriber (and a run hook, to learn each run's blueprint)
that keeps the most recent runs with each node's state, attempts and timing.
:func:`render_run_svg` draws one run as inline SVG with a layered top-down layout;
:func:`render_index_html` and :func:`render_run_html` make the read-only pages that
:func:`flowcraft.webhooks.create_app` serves (no scripts, no external assets).
:func:`svg_to_png` turns a drawing into PNG with CairoSVG or a headless Chromium.

Everything here is plain Python; only the web app needs the ``web`` extra.
"""

from __future__ import annotations

import html
import importlib
import os
import re
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flowcraft.blueprint import Blueprint
from flowcraft.errors import FlowcraftError
from flowcraft.events import EventBus, EventType, FlowEvent
from flowcraft.hooks import RunHooks, RunInfo

if TYPE_CHECKING:
    from flowcraft.distributed import Client
    from flowcraft.runtime.runtime import FlowRuntime

__all__ = [
    "STATE_COLOURS",
    "NodeRecord",
    "PngRenderError",
    "PngRenderer",
    "PngRendererUnavailable",
    "RunRecord",
    "RunRecorder",
    "layered_layout",
    "render_index_html",
    "render_run_html",
    "render_run_svg",
    "svg_to_png",
]

STATE_COLOURS: dict[str, str] = {
    "pending": "#e5e7eb",
    "running": "#93c5fd",
    "completed": "#86efac",
    "failed": "#fca5a5",
    "awaiting": "#fde68a",
    "skipped": "#f3f4f6",
    "rescued": "#fdba74",
    "cancelled": "#d1d5db",
}
"""Fill colour of a node box by state."""

_RECORDED_EVENTS: tuple[EventType, ...] = (
    "workflow:start",
    "workflow:resume",
    "workflow:finish",
    "node:start",
    "node:finish",
    "node:error",
    "node:retry",
    "node:fallback",
)


@dataclass(slots=True)
class NodeRecord:
    """What the recorder knows of one node of one run."""

    id: str
    state: str = "pending"
    started: datetime | None = None
    finished: datetime | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start to finish, when both are known."""
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds() * 1000

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape served at ``/runs/<id>``."""
        return {
            "id": self.id,
            "state": self.state,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "durationMs": self.duration_ms,
            "attempts": self.attempts,
            "error": self.error,
        }


@dataclass(slots=True)
class RunRecord:
    """What the recorder knows of one run."""

    id: str
    blueprint_id: str
    status: str = "running"
    started: datetime | None = None
    finished: datetime | None = None
    blueprint: Blueprint | None = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def node(self, node_id: str) -> NodeRecord:
        """The record of ``node_id``, created on first use."""
        record = self.nodes.get(node_id)
        if record is None:
            record = self.nodes[node_id] = NodeRecord(node_id)
        return record

    def summary(self) -> dict[str, Any]:
        """The JSON shape served in the ``/runs`` list."""
        return {
            "id": self.id,
            "blueprintId": self.blueprint_id,
            "status": self.status,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape served at ``/runs/<id>``: the summary, nodes and edges."""
        ids = [n.id for n in self.blueprint.nodes] if self.blueprint else []
        ids += [node_id for node_id in self.nodes if node_id not in ids]
        nodes = []
        for node_id in ids:
            item = (self.nodes.get(node_id) or NodeRecord(node_id)).to_dict()
            if self.blueprint is not None:
                definition = next((n for n in self.blueprint.nodes if n.id == node_id), None)
                if definition is not None:
                    item["uses"] = definition.uses
            nodes.append(item)
        edges = (
            [e.model_dump(by_alias=True, exclude_none=True) for e in self.blueprint.edges]
            if self.blueprint
            else []
        )
        return {**self.summary(), "errors": list(self.errors), "nodes": nodes, "edges": edges}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class RunRecorder(RunHooks):
    """Keeps the ``max_runs`` most recent runs, fed by the event bus.

    Call :meth:`install` on a runtime: it subscribes to the runtime's event bus (creating one if
    needed) and adds itself to the runtime's hooks so it learns each run's blueprint. Blueprints
    registered with the runtime are found without the hook, too.
    """

    def __init__(
        self, *, max_runs: int = 200, blueprints: Mapping[str, Blueprint] | None = None
    ) -> None:
        self.max_runs = max_runs
        self.blueprints: dict[str, Blueprint] = dict(blueprints or {})
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()

    def install(self, runtime: FlowRuntime) -> FlowRuntime:
        """Record the runs of ``runtime``; returns ``runtime``."""
        if self not in runtime.hooks:
            runtime.hooks.append(self)
        if runtime.event_bus is None:
            runtime.event_bus = EventBus()
        self.blueprints.update(runtime.blueprints)
        self.attach(runtime.event_bus)
        return runtime

    def attach(self, bus: EventBus) -> None:
        """Subscribe to the run and node events of ``bus`` (inline: the handler is quick)."""
        bus.subscribe(self, _RECORDED_EVENTS, inline=True)

    async def follow(self, client: Client, run_id: str) -> RunRecord | None:
        """Record a distributed run from its event log as it happens, until it finishes (its
        workers need ``run_events=True``); run it as a task beside the web app to watch it
        live. The run's record, or ``None`` when it has no events."""
        async for event in client.events(run_id):
            if event.type in _RECORDED_EVENTS:
                self(event)
        return self.get(run_id)

    def before_run(self, run: RunInfo) -> None:
        """Learn the run's blueprint before its first node runs."""
        if run.blueprint is not None:
            self._record(run.run_id, run.blueprint_id).blueprint = run.blueprint

    # ----------------------------------------------------------------- reading

    def runs(self) -> list[RunRecord]:
        """The recorded runs, most recent first."""
        return list(reversed(self._runs.values()))

    def get(self, run_id: str) -> RunRecord | None:
        """One run's record, or ``None``."""
        return self._runs.get(run_id)

    # ----------------------------------------------------------------- recording

    def _record(self, run_id: str, blueprint_id: str) -> RunRecord:
        record = self._runs.get(run_id)
        if record is None:
            record = self._runs[run_id] = RunRecord(run_id, blueprint_id)
            record.blueprint = self.blueprints.get(blueprint_id)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        return record

    def __call__(self, event: FlowEvent) -> None:
        """Handle one event (the bus calls this)."""
        payload = event.payload
        run_id = str(payload.get("executionId", ""))
        if not run_id:
            return
        kind = event.type
        if kind in ("workflow:start", "workflow:resume"):
            record = self._record(run_id, str(payload.get("blueprintId", "")))
            record.status = "running"
            record.finished = None
            if record.started is None:
                record.started = event.timestamp
            return
        existing = self._runs.get(run_id)
        if existing is None:
            if kind == "workflow:finish":
                return
            existing = self._record(run_id, str(payload.get("blueprintId", "")))
            existing.started = event.timestamp
        if kind == "workflow:finish":
            self._finish(existing, event)
            return
        node = existing.node(str(payload.get("nodeId", "")))
        if kind == "node:start":
            node.state, node.started, node.finished = "running", event.timestamp, None
            node.attempts = max(node.attempts, 1)
        elif kind == "node:finish":
            node.state, node.finished = "completed", event.timestamp
        elif kind == "node:error":
            node.state, node.finished = "failed", event.timestamp
            error = payload.get("error")
            node.error = str(error.get("message", error)) if isinstance(error, Mapping) else None
        elif kind == "node:retry":
            node.attempts = int(payload.get("attempt", 0)) + 1
        elif kind == "node:fallback":
            node.state, node.finished = "rescued", event.timestamp
            node.error = str(payload.get("error", ""))

    def _finish(self, record: RunRecord, event: FlowEvent) -> None:
        status = str(event.payload.get("status", ""))
        record.status = status
        record.finished = event.timestamp
        errors = event.payload.get("errors") or []
        record.errors = [
            str(e.get("message", e)) if isinstance(e, Mapping) else str(e) for e in errors
        ]
        for node in record.nodes.values():
            if node.state == "running":
                node.state = "awaiting" if status == "awaiting" else "cancelled"
        if status == "completed" and record.blueprint is not None:
            for definition in record.blueprint.nodes:
                if record.node(definition.id).state == "pending":
                    record.nodes[definition.id].state = "skipped"


# --------------------------------------------------------------------------- layout and SVG

NODE_WIDTH = 168
NODE_HEIGHT = 52
H_GAP = 36
V_GAP = 48
MARGIN = 20


def layered_layout(node_ids: list[str], edges: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Layer and column of each node: a longest-path layering of the graph without back edges.

    Back edges (those closing a cycle in a depth-first search from the roots, in node order)
    are ignored for layering, so loops are drawn top-down with one upward edge.
    """
    known = set(node_ids)
    succ: dict[str, list[str]] = {n: [] for n in node_ids}
    indegree: dict[str, int] = dict.fromkeys(node_ids, 0)
    for source, target in edges:
        if source in known and target in known:
            succ[source].append(target)
            indegree[target] += 1
    roots = [n for n in node_ids if indegree[n] == 0] or node_ids[:1]
    back: set[tuple[str, str]] = set()
    colour: dict[str, int] = {}
    for root in [*roots, *node_ids]:
        if root in colour:
            continue
        colour[root] = 1
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index < len(succ[node]):
                stack.append((node, index + 1))
                child = succ[node][index]
                state = colour.get(child, 0)
                if state == 1:
                    back.add((node, child))
                elif state == 0:
                    colour[child] = 1
                    stack.append((child, 0))
            else:
                colour[node] = 2
    forward_in: dict[str, int] = dict.fromkeys(node_ids, 0)
    for source, targets in succ.items():
        for target in targets:
            if (source, target) not in back:
                forward_in[target] += 1
    layer: dict[str, int] = dict.fromkeys(node_ids, 0)
    ready = [n for n in node_ids if forward_in[n] == 0]
    while ready:
        node = ready.pop(0)
        for target in succ[node]:
            if (node, target) in back:
                continue
            layer[target] = max(layer[target], layer[node] + 1)
            forward_in[target] -= 1
            if forward_in[target] == 0:
                ready.append(target)
    columns: dict[int, int] = {}
    placed: dict[str, tuple[int, int]] = {}
    for node in node_ids:
        row = layer[node]
        placed[node] = (row, columns.get(row, 0))
        columns[row] = columns.get(row, 0) + 1
    return placed


def _format_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 1 else f"{ms:.2f} ms"
    return f"{ms / 1000:.2f} s"


def render_run_svg(record: RunRecord) -> str:
    """The run's DAG as an ``<svg>`` element: one ``g.node`` per node, coloured by state.

    Each node group carries ``data-node-id`` and ``data-state``; its box is ``rect.node-box``
    and its second text line shows the state and the duration.
    """
    data = record.to_dict()
    node_ids = [n["id"] for n in data["nodes"]]
    edges = [(e["source"], e["target"]) for e in data["edges"]]
    places = layered_layout(node_ids, edges)
    width_cols = max([c for _, c in places.values()], default=0) + 1
    height_rows = max([r for r, _ in places.values()], default=0) + 1
    width = MARGIN * 2 + width_cols * NODE_WIDTH + (width_cols - 1) * H_GAP
    height = MARGIN * 2 + height_rows * NODE_HEIGHT + (height_rows - 1) * V_GAP

    def origin(node_id: str) -> tuple[int, int]:
        row, col = places[node_id]
        return MARGIN + col * (NODE_WIDTH + H_GAP), MARGIN + row * (NODE_HEIGHT + V_GAP)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="run {html.escape(record.id)}">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7'"
        " markerHeight='7' orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z'"
        " fill='#6b7280'/></marker></defs>",
    ]
    for edge in data["edges"]:
        source, target = edge["source"], edge["target"]
        if source not in places or target not in places:
            continue
        sx, sy = origin(source)
        tx, ty = origin(target)
        x1, y1 = sx + NODE_WIDTH // 2, sy + NODE_HEIGHT
        x2, y2 = tx + NODE_WIDTH // 2, ty
        if places[target][0] <= places[source][0]:  # back edge: curve around the side
            x1, y1, x2, y2 = sx + NODE_WIDTH, sy + NODE_HEIGHT // 2, tx + NODE_WIDTH, ty + 10
            bend = max(x1, x2) + H_GAP
            path = f"M {x1} {y1} C {bend} {y1}, {bend} {y2}, {x2} {y2}"
        else:
            mid = (y1 + y2) / 2
            path = f"M {x1} {y1} C {x1} {mid}, {x2} {mid}, {x2} {y2}"
        label = edge.get("action") or edge.get("condition") or ""
        parts.append(
            f'<path class="edge" data-source="{html.escape(source)}"'
            f' data-target="{html.escape(target)}" d="{path}" fill="none" stroke="#6b7280"'
            ' stroke-width="1.5" marker-end="url(#arrow)"/>'
        )
        if label:
            parts.append(
                f'<text class="edge-label" x="{(x1 + x2) / 2 + 4}" y="{(y1 + y2) / 2}"'
                f' font-size="10" fill="#374151">{html.escape(str(label)[:32])}</text>'
            )
    for node in data["nodes"]:
        node_id = node["id"]
        x, y = origin(node_id)
        state = node["state"]
        fill = STATE_COLOURS.get(state, STATE_COLOURS["pending"])
        timing = _format_ms(node["durationMs"])
        detail = state + (f" · {timing}" if timing else "")
        if node["attempts"] > 1:
            detail += f" · {node['attempts']} tries"
        title = f"{node_id} ({node.get('uses', '?')}): {detail}"
        if node["error"]:
            title += f"\n{node['error']}"
        parts.append(
            f'<g class="node" data-node-id="{html.escape(node_id)}" data-state="{state}">'
            f"<title>{html.escape(title)}</title>"
            f'<rect class="node-box" x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}"'
            f' rx="8" fill="{fill}" stroke="#374151" stroke-width="1.2"/>'
            f'<text x="{x + NODE_WIDTH / 2}" y="{y + 21}" text-anchor="middle" font-size="13"'
            f' font-weight="600" fill="#111827">{html.escape(node_id[:22])}</text>'
            f'<text class="node-detail" x="{x + NODE_WIDTH / 2}" y="{y + 39}"'
            f' text-anchor="middle" font-size="11" fill="#374151">{html.escape(detail)}</text>'
            "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- PNG

PngRenderer = Literal["cairosvg", "chromium"]
"""The renderers :func:`svg_to_png` can use."""
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executables searched on ``PATH`` for Chromium (after ``$FLOWCRAFT_CHROMIUM``)."""
_INSTALL_HINT = (
    "pip install 'flowcraft-core[png]' (CairoSVG, which needs the cairo library:"
    " apt-get install libcairo2), or install Chromium (apt-get install chromium) or point"
    " FLOWCRAFT_CHROMIUM at a Chrome or Chromium executable"
)


class PngRendererUnavailable(FlowcraftError):
    """No PNG renderer is installed; the message says what to install."""


class PngRenderError(FlowcraftError):
    """A renderer was found but failed to draw the PNG."""


def _cairosvg() -> Any:
    try:
        return importlib.import_module("cairosvg")
    except (ImportError, OSError):
        # OSError: the package is installed but the cairo library it loads is not.
        return None


def _chromium() -> str | None:
    configured = os.environ.get("FLOWCRAFT_CHROMIUM")
    if configured:
        return configured
    return next((found for name in _CHROMIUM_NAMES if (found := shutil.which(name))), None)


def svg_to_png(svg: str, *, renderer: PngRenderer | None = None, scale: float = 1.0) -> bytes:
    """Render an SVG drawing (such as :func:`render_run_svg`'s) as PNG bytes on white.

    Args:
        svg: The ``<svg>`` document; its ``width`` and ``height`` give the picture's size.
        renderer: ``"cairosvg"`` (in-process, extra ``png``) or ``"chromium"`` (a headless
            browser process); by default CairoSVG when it can be imported, else Chromium.
        scale: Pixels per SVG unit.

    Raises:
        PngRendererUnavailable: The chosen renderer, or any renderer, is not installed.
        PngRenderError: The renderer failed.
    """
    if renderer in (None, "cairosvg"):
        cairosvg = _cairosvg()
        if cairosvg is not None:
            try:
                return bytes(
                    cairosvg.svg2png(bytestring=svg.encode(), scale=scale, background_color="white")
                )
            except Exception as exc:
                raise PngRenderError(f"CairoSVG could not render the graph: {exc}") from exc
        if renderer == "cairosvg":
            raise PngRendererUnavailable(f"CairoSVG is not usable: {_INSTALL_HINT}")
    browser = _chromium()
    if browser is None:
        raise PngRendererUnavailable(f"no PNG renderer is installed: {_INSTALL_HINT}")
    return _chromium_png(browser, svg, scale)


def _chromium_png(browser: str, svg: str, scale: float) -> bytes:
    size = re.search(r'<svg\b[^>]*?\swidth="(\d+)"[^>]*?\sheight="(\d+)"', svg)
    width, height = (int(size[1]), int(size[2])) if size else (800, 600)
    with tempfile.TemporaryDirectory(prefix="flowcraft-png-") as tmp:
        page, out = Path(tmp, "graph.html"), Path(tmp, "graph.png")
        page.write_text(
            '<!doctype html><html><head><meta charset="utf-8"></head>'
            f'<body style="margin:0;background:#fff;font-family:system-ui,sans-serif">{svg}'
            "</body></html>",
            encoding="utf-8",
        )
        command = [
            browser,
            "--headless",
            # The page is our own drawing from a local file; the sandbox would also refuse to
            # start as root, which is how CI and containers run.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={Path(tmp, 'profile')}",
            f"--force-device-scale-factor={scale}",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            page.as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PngRenderError(f"{browser} could not render the graph: {exc}") from exc
        if not out.is_file():
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise PngRenderError(
                f"{browser} exited with {done.returncode} and wrote no PNG: {' '.join(tail)}"
            )
        return out.read_bytes()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#111827;background:#fff}
table{border-collapse:collapse;margin-top:12px}td,th{padding:4px 10px;border-bottom:1px solid
#e5e7eb;text-align:left;font-size:14px}.status{padding:1px 8px;border-radius:9px;font-size:12px}
a{color:#1d4ed8}.dag-wrap{overflow:auto;border:1px solid #e5e7eb;padding:8px;margin-top:12px}
"""


def _page(title: str, body: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>{meta}<style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _badge(status: str) -> str:
    colour = STATE_COLOURS.get(status, "#e5e7eb")
    return f'<span class="status" style="background:{colour}">{html.escape(status)}</span>'


def render_index_html(recorder: RunRecorder, *, base: str = "") -> str:
    """The page of recent runs, most recent first."""
    rows = []
    for record in recorder.runs():
        summary = record.summary()
        rows.append(
            f'<tr class="run-row" data-run-id="{html.escape(record.id)}">'
            f'<td><a href="{base}/run/{html.escape(record.id)}">{html.escape(record.id)}</a></td>'
            f"<td>{html.escape(record.blueprint_id)}</td><td>{_badge(record.status)}</td>"
            f"<td>{summary['started'] or ''}</td><td>{summary['finished'] or ''}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>Run</th><th>Blueprint</th><th>Status</th><th>Started</th>"
        f"<th>Finished</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>No runs recorded yet.</p>"
    )
    return _page("Flowcraft runs", f"<h1>Recent runs</h1>{table}")


def render_run_html(record: RunRecord, *, base: str = "") -> str:
    """One run's page: its status, its DAG and a table of node states and timings."""
    data = record.to_dict()
    rows = "".join(
        f"<tr><td>{html.escape(n['id'])}</td><td>{_badge(n['state'])}</td>"
        f"<td>{_format_ms(n['durationMs'])}</td><td>{n['attempts']}</td>"
        f"<td>{html.escape(n['error'] or '')}</td></tr>"
        for n in data["nodes"]
    )
    errors = "".join(f"<li>{html.escape(e)}</li>" for e in record.errors)
    body = (
        f'<p><a href="{base}/">← all runs</a></p>'
        f"<h1>Run {html.escape(record.id)}</h1>"
        f"<p>Blueprint <b>{html.escape(record.blueprint_id)}</b> · {_badge(record.status)}</p>"
        + (f'<ul class="errors">{errors}</ul>' if errors else "")
        + f'<div class="dag-wrap">{render_run_svg(record)}</div>'
        "<table><thead><tr><th>Node</th><th>State</th><th>Duration</th><th>Attempts</th>"
        f"<th>Error</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _page(f"Run {record.id}", body, refresh=record.status == "running")

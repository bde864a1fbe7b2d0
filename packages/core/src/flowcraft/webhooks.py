"""Webhooks and the run inspector as one ASGI application (needs the ``web`` extra: Starlette).

A ``webhook`` node calls :meth:`WebhookRegistry.register`, which records an endpoint (its path
from ``params.path``, default ``/webhooks/<runId>/<nodeId>``; ``{runId}`` and ``{nodeId}`` in
the path are filled in) with the node's secret, and the run pauses ``awaiting``. A ``POST`` to
that path with ``X-Flowcraft-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` made with
the secret and an ``X-Flowcraft-Delivery`` id resumes the run with the request body as the
node's output (JSON bodies are parsed; others are passed as text).

Responses: ``202`` accepted (``200`` when ``background=False``, with the run's new status);
``200`` with ``"duplicate": true`` for a delivery id already seen (the run is not resumed
twice); ``400`` without a delivery id; ``401`` for a missing or bad signature; ``404`` for an
unknown path; ``409`` when the endpoint's run is no longer awaiting; ``413`` for a body over
``max_body`` bytes.

The same app serves the read-only run inspector: ``GET /`` (recent runs), ``GET /run/<id>``
(one run's DAG), ``GET /runs`` and ``GET /runs/<id>`` (the same as JSON).

Usage::

    runtime = FlowRuntime()
    app = create_app(runtime, secret_resolver=lambda name: os.environ[name])
    # serve `app` with any ASGI server, or mount it in your own Starlette/FastAPI app
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "flowcraft.webhooks needs Starlette: pip install 'flowcraft-core[web]'"
    ) from exc

from flowcraft.blueprint import Blueprint
from flowcraft.errors import BlueprintError, FlowcraftError
from flowcraft.events import EventBus, FlowEvent
from flowcraft.inspector import RunRecorder, render_index_html, render_run_html
from flowcraft.middleware import Middleware
from flowcraft.node import NodeContext
from flowcraft.result import WorkflowResult

if TYPE_CHECKING:
    from flowcraft.runtime.runtime import FlowRuntime

__all__ = [
    "DEFAULT_MAX_BODY",
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "Resumer",
    "WebhookEndpoint",
    "WebhookRegistry",
    "create_app",
    "create_webhook_app",
    "sign",
    "verify_signature",
]

_log = logging.getLogger("flowcraft.webhooks")

SIGNATURE_HEADER = "X-Flowcraft-Signature"
DELIVERY_HEADER = "X-Flowcraft-Delivery"
DEFAULT_MAX_BODY = 1024 * 1024
"""Largest accepted request body, in bytes (1 MiB)."""


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of ``body`` (constant-time comparison)."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(secret, body), header.strip())


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """One registered endpoint: where a delivery goes and which awaiting node it resumes."""

    path: str
    run_id: str
    node_id: str
    blueprint_id: str
    secret: str
    event: str | None = None


@dataclass(slots=True)
class _Paused:
    blueprint: Blueprint
    state: str
    registry: Mapping[str, Any]


Resumer = Callable[[WebhookEndpoint, Any], Awaitable[Any]]
"""Resumes the run of an endpoint with a delivery's output; for runs not held in memory (a
distributed client's ``resume``). Its return value is reported as the run's status if it is a
:class:`WorkflowResult` or a string."""


class WebhookRegistry(Middleware):
    """Endpoints of awaiting webhook nodes, and the paused runs they resume.

    Pass it as ``dependencies={"webhooks": registry}`` (:meth:`install` does that, adds it as a
    middleware so it can see each webhook node's run, and subscribes it to the event bus so it
    keeps the paused run's state when the run ends ``awaiting``).

    Args:
        runtime: The in-memory runtime that resumes runs (set by :meth:`install`).
        secret: The secret of webhook nodes that name none.
        secret_resolver: Turns ``params.secretName`` into the secret (e.g. from a vault or the
            environment); returns ``None`` for an unknown name.
        resumer: Resumes runs itself instead of the in-memory runtime (distributed mode).
        max_deliveries: How many delivery ids are remembered to ignore replays.
    """

    def __init__(
        self,
        runtime: FlowRuntime | None = None,
        *,
        secret: str | None = None,
        secret_resolver: Callable[[str], str | None] | None = None,
        resumer: Resumer | None = None,
        max_deliveries: int = 100_000,
    ) -> None:
        self.runtime = runtime
        self.secret = secret
        self.secret_resolver = secret_resolver
        self.resumer = resumer
        self.max_deliveries = max_deliveries
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._by_run: dict[str, set[str]] = {}
        self._paused: dict[str, _Paused] = {}
        self._live: dict[str, Any] = {}
        self._deliveries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._spent: OrderedDict[str, WebhookEndpoint] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- wiring

    def install(self, runtime: FlowRuntime) -> FlowRuntime:
        """Wire this registry into ``runtime`` (dependency, middleware, bus); returns it."""
        self.runtime = runtime
        deps = dict(runtime.dependencies)
        deps["webhooks"] = self
        runtime.dependencies = deps
        if self not in runtime.middleware:
            runtime.middleware.append(self)
        if runtime.event_bus is None:
            runtime.event_bus = EventBus()
        runtime.event_bus.subscribe(self._on_finish, ["workflow:finish"], inline=True)
        return runtime

    def before_node(self, ctx: NodeContext, node_id: str) -> None:
        """Remember the in-memory run of each webhook node, to save its state at pause."""
        run = getattr(ctx, "_run", None)
        spec = getattr(getattr(run, "graph", None), "nodes", {}).get(node_id)
        if spec is not None and spec.definition.uses == "webhook":
            self._live[ctx.run_id] = run

    def _on_finish(self, event: FlowEvent) -> None:
        run_id = str(event.payload.get("executionId", ""))
        run = self._live.pop(run_id, None)
        status = event.payload.get("status")
        if status != "awaiting":
            self._drop_run(run_id)
            return
        if run is None or self.runtime is None:
            return
        try:
            state = self.runtime.serializer.dumps(run.data)
        except FlowcraftError:
            _log.exception("cannot keep the paused state of run %s", run_id)
            return
        self._paused[run_id] = _Paused(run.graph.blueprint, state, run.registry)

    # ----------------------------------------------------------------- the node's side

    async def register(
        self, run_id: str, node_id: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Record the endpoint of a webhook node; called by the built-in ``webhook`` node.

        Returns:
            ``{"path": ...}``, merged into the node's awaiting details (never the secret).

        Raises:
            BlueprintError: No secret for the node, or its path is taken by another run.
        """
        raw_path = params.get("path") or f"/webhooks/{run_id}/{node_id}"
        path = "/" + str(raw_path).replace("{runId}", run_id).replace("{nodeId}", node_id)
        path = "/" + path.strip("/")
        secret = self._secret_for(node_id, params)
        taken = self._endpoints.get(path)
        if taken is not None and (taken.run_id, taken.node_id) != (run_id, node_id):
            raise BlueprintError(
                f"webhook node '{node_id}': path {path} is already registered by node"
                f" '{taken.node_id}' of run {taken.run_id}; put {{runId}} in params.path",
                node_id=node_id,
            )
        event = params.get("event")
        self._endpoints[path] = WebhookEndpoint(
            path=path,
            run_id=run_id,
            node_id=node_id,
            blueprint_id=str(params.get("blueprintId", "")),
            secret=secret,
            event=None if event is None else str(event),
        )
        self._by_run.setdefault(run_id, set()).add(path)
        return {"path": path}

    def _secret_for(self, node_id: str, params: Mapping[str, Any]) -> str:
        secret = params.get("secret")
        name = params.get("secretName")
        if secret is None and isinstance(name, str) and self.secret_resolver is not None:
            secret = self.secret_resolver(name)
        if secret is None:
            secret = self.secret
        if not isinstance(secret, str) or not secret:
            raise BlueprintError(
                f"webhook node '{node_id}' has no secret: set params.secret, params.secretName"
                " (with a secret_resolver) or the registry's default secret",
                node_id=node_id,
            )
        return secret

    # ----------------------------------------------------------------- the app's side

    def endpoint(self, path: str) -> WebhookEndpoint | None:
        """The endpoint registered at ``path``, or recently spent there (to answer replays)."""
        key = "/" + path.strip("/")
        return self._endpoints.get(key) or self._spent.get(key)

    @property
    def endpoints(self) -> list[WebhookEndpoint]:
        """Every registered endpoint."""
        return list(self._endpoints.values())

    def _drop_run(self, run_id: str) -> None:
        for path in self._by_run.pop(run_id, set()):
            self._endpoints.pop(path, None)
        self._paused.pop(run_id, None)

    def seen_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """What a delivery already did, if its id was seen."""
        return self._deliveries.get(delivery_id)

    def _remember(self, delivery_id: str, outcome: dict[str, Any]) -> None:
        self._deliveries[delivery_id] = outcome
        while len(self._deliveries) > self.max_deliveries:
            self._deliveries.popitem(last=False)

    async def deliver(
        self, endpoint: WebhookEndpoint, delivery_id: str, output: Any, *, background: bool
    ) -> tuple[int, dict[str, Any]]:
        """Resume ``endpoint``'s run with ``output`` once per delivery id.

        Returns:
            The HTTP status and JSON body to answer with.
        """
        # No await until the delivery is remembered and the endpoint spent: in one event loop
        # this is atomic, so concurrent replays cannot both get through.
        earlier = self.seen_delivery(delivery_id)
        if earlier is not None:
            return 200, {**earlier, "duplicate": True}
        if self._endpoints.get(endpoint.path) is not endpoint:
            return 409, {"error": f"run {endpoint.run_id} no longer awaits {endpoint.path}"}
        outcome: dict[str, Any] = {
            "runId": endpoint.run_id,
            "nodeId": endpoint.node_id,
            "deliveryId": delivery_id,
        }
        self._remember(delivery_id, outcome)
        self._endpoints.pop(endpoint.path, None)  # spent: another delivery id gets 409
        self._spent[endpoint.path] = endpoint
        while len(self._spent) > self.max_deliveries:
            self._spent.popitem(last=False)
        paths = self._by_run.get(endpoint.run_id)
        if paths is not None:
            paths.discard(endpoint.path)
        work = self._guarded(endpoint, output)
        if background:
            task = asyncio.ensure_future(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return 202, {**outcome, "status": "accepted"}
        return 200, {**outcome, "status": await work}

    async def _guarded(self, endpoint: WebhookEndpoint, output: Any) -> str:
        try:
            return await self._resume(endpoint, output)
        except Exception as exc:
            _log.exception("resuming run %s at %s failed", endpoint.run_id, endpoint.node_id)
            return f"error: {exc}"

    async def _resume(self, endpoint: WebhookEndpoint, output: Any) -> str:
        if self.resumer is not None:
            value = await self.resumer(endpoint, output)
            return value.status if isinstance(value, WorkflowResult) else str(value)
        # One resumption of a run at a time: each continues from the state the last one left.
        async with self._locks.setdefault(endpoint.run_id, asyncio.Lock()):
            paused = self._paused.get(endpoint.run_id)
            if paused is None or self.runtime is None:
                raise FlowcraftError(f"run {endpoint.run_id} is not held by this process")
            result = await self.runtime.resume(
                paused.blueprint,
                paused.state,
                {"output": output},
                endpoint.node_id,
                function_registry=paused.registry,
            )
            if result.status == "awaiting" and endpoint.run_id in self._by_run:
                self._paused[endpoint.run_id] = _Paused(
                    paused.blueprint, result.serialized_context, paused.registry
                )
            else:
                self._paused.pop(endpoint.run_id, None)
                self._locks.pop(endpoint.run_id, None)
        return result.status

    async def drain(self) -> None:
        """Wait for background resumptions to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


# --------------------------------------------------------------------------- the ASGI app


def _parse_body(body: bytes, content_type: str) -> Any:
    if not body:
        return None
    if "json" in content_type or body.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(body)
        except ValueError:
            pass
    return body.decode("utf-8", errors="replace")


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    runtime: FlowRuntime | None = None,
    *,
    registry: WebhookRegistry | None = None,
    recorder: RunRecorder | None = None,
    secret: str | None = None,
    secret_resolver: Callable[[str], str | None] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    background: bool = True,
    inspector: bool = True,
) -> Starlette:
    """The webhook receiver and run inspector as one Starlette application.

    Args:
        runtime: The in-memory runtime; the registry and recorder are installed into it.
        registry: The webhook registry (one is made from ``secret``/``secret_resolver``).
        recorder: The run recorder behind the inspector pages (one is made if needed).
        secret: Default secret of webhook nodes that name none.
        secret_resolver: Resolves ``params.secretName`` to a secret.
        max_body: Largest accepted body in bytes; larger ones get 413.
        background: Answer 202 at once and resume in the background (default), or resume
            first and answer 200 with the run's new status.
        inspector: Serve the inspector pages and JSON.

    The objects are reachable as ``app.state.registry`` and ``app.state.recorder``.
    """
    if registry is None:
        registry = WebhookRegistry(secret=secret, secret_resolver=secret_resolver)
    if recorder is None and inspector:
        recorder = RunRecorder()
    if runtime is not None:
        registry.install(runtime)
        if recorder is not None:
            recorder.install(runtime)
    hooks = registry

    async def receive(request: Request) -> Response:
        endpoint = hooks.endpoint(request.url.path[len(request.scope.get("root_path", "")) :])
        if endpoint is None:
            return JSONResponse({"error": "no webhook is registered at this path"}, 404)
        body = await _read_limited(request, max_body)
        if body is None:
            return JSONResponse({"error": f"body larger than {max_body} bytes"}, 413)
        if not verify_signature(endpoint.secret, body, request.headers.get(SIGNATURE_HEADER)):
            return JSONResponse({"error": f"missing or invalid {SIGNATURE_HEADER}"}, 401)
        delivery = request.headers.get(DELIVERY_HEADER, "").strip()
        if not delivery:
            return JSONResponse({"error": f"missing {DELIVERY_HEADER} header"}, 400)
        output = _parse_body(body, request.headers.get("content-type", ""))
        status, payload = await hooks.deliver(endpoint, delivery, output, background=background)
        return JSONResponse(payload, status)

    routes = []
    if recorder is not None:
        rec = recorder

        async def index(request: Request) -> Response:
            return HTMLResponse(render_index_html(rec, base=request.scope.get("root_path", "")))

        async def run_page(request: Request) -> Response:
            record = rec.get(request.path_params["run_id"])
            if record is None:
                return HTMLResponse("<h1>Unknown run</h1>", 404)
            return HTMLResponse(render_run_html(record, base=request.scope.get("root_path", "")))

        async def runs_json(request: Request) -> Response:
            return JSONResponse({"runs": [r.summary() for r in rec.runs()]})

        async def run_json(request: Request) -> Response:
            record = rec.get(request.path_params["run_id"])
            if record is None:
                return JSONResponse({"error": "unknown run"}, 404)
            return JSONResponse(record.to_dict())

        routes += [
            Route("/", index, methods=["GET"]),
            Route("/run/{run_id}", run_page, methods=["GET"]),
            Route("/runs", runs_json, methods=["GET"]),
            Route("/runs/{run_id}", run_json, methods=["GET"]),
        ]
    routes.append(Route("/{path:path}", receive, methods=["POST"]))
    app = Starlette(routes=routes)
    app.state.registry = registry
    app.state.recorder = recorder
    return app


create_webhook_app = create_app
"""Alias of :func:`create_app`."""

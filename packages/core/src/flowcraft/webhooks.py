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

Distributed runs: install a registry into every worker's adapter and serve the app on any
adapter of the same backend; endpoints then live in the backend's coordination store::

    WebhookRegistry(secret_resolver=os.environ.get).install(worker_adapter)  # each worker
    app = create_app(adapter=client_adapter, secret_resolver=os.environ.get)  # the web process
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

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
from flowcraft.distributed import CoordinationStore, DistributedAdapter
from flowcraft.errors import BlueprintError, FlowcraftError
from flowcraft.hooks import RunHooks, RunInfo
from flowcraft.inspector import RunRecorder, render_index_html, render_run_html
from flowcraft.result import WorkflowResult

if TYPE_CHECKING:
    from flowcraft.runtime.runtime import FlowRuntime

_Target = TypeVar("_Target", "FlowRuntime", DistributedAdapter)

__all__ = [
    "DEFAULT_MAX_BODY",
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "CoordinationWebhookStore",
    "InMemoryWebhookStore",
    "Resumer",
    "SpendVerdict",
    "WebhookEndpoint",
    "WebhookRegistry",
    "WebhookStore",
    "adapter_resumer",
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
    """One registered endpoint: where a delivery goes and which awaiting node it resumes.

    Attributes:
        path: The endpoint's path.
        run_id: The awaiting run.
        node_id: The awaiting webhook node.
        blueprint_id: ``params.blueprintId`` of the node, if any.
        secret: The HMAC secret deliveries are signed with.
        event: ``params.event`` of the node, if any.
        secret_name: The ``params.secretName`` the secret was resolved from.
        default_secret: Whether the secret is the registry's default.
        id: This registration's id: a node registering the same path again after a delivery
            (a loop) gets a new one, so the earlier delivery cannot spend it.
    """

    path: str
    run_id: str
    node_id: str
    blueprint_id: str
    secret: str
    event: str | None = None
    secret_name: str | None = None
    default_secret: bool = False
    id: str = ""


SpendVerdict = Literal["accepted", "duplicate", "gone"]


class WebhookStore(Protocol):
    """Where a :class:`WebhookRegistry` keeps endpoints and delivery ids.

    The registry of the process where a webhook node runs and the registry of the process that
    receives the delivery must share one store: :class:`InMemoryWebhookStore` suits one process,
    :class:`CoordinationWebhookStore` any number (on a distributed backend's store).
    """

    async def add(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        """Record ``endpoint`` unless its path is live; the endpoint now holding the path."""

    async def get(self, path: str) -> WebhookEndpoint | None:
        """The live endpoint at ``path``, else the one last spent there (to answer replays)."""

    async def spend(
        self, endpoint: WebhookEndpoint, delivery_id: str, outcome: dict[str, Any]
    ) -> tuple[SpendVerdict, dict[str, Any]]:
        """Let one delivery through ``endpoint``, once.

        Returns ``("duplicate", <what the earlier delivery recorded>)`` for a delivery id seen
        before, ``("gone", {})`` when the endpoint is no longer live (another delivery spent
        it, or its run ended), else records ``outcome`` under the delivery id, retires the
        endpoint and returns ``("accepted", outcome)``. Concurrent calls let one through.
        """

    async def endpoints(self, run_id: str) -> list[WebhookEndpoint]:
        """The live endpoints of ``run_id``."""

    async def drop_run(self, run_id: str) -> None:
        """Forget the live endpoints of ``run_id`` (its run ended)."""


class InMemoryWebhookStore:
    """A :class:`WebhookStore` in this process; remembers ``max_deliveries`` delivery ids."""

    def __init__(self, max_deliveries: int = 100_000) -> None:
        self.max_deliveries = max_deliveries
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._by_run: dict[str, set[str]] = {}
        self._deliveries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._spent: OrderedDict[str, WebhookEndpoint] = OrderedDict()

    # No method awaits anything: in one event loop each call is atomic.

    async def add(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        """See :meth:`WebhookStore.add`."""
        held = self._endpoints.get(endpoint.path)
        if held is not None:
            return held
        self._endpoints[endpoint.path] = endpoint
        self._by_run.setdefault(endpoint.run_id, set()).add(endpoint.path)
        return endpoint

    async def get(self, path: str) -> WebhookEndpoint | None:
        """See :meth:`WebhookStore.get`."""
        return self._endpoints.get(path) or self._spent.get(path)

    async def spend(
        self, endpoint: WebhookEndpoint, delivery_id: str, outcome: dict[str, Any]
    ) -> tuple[SpendVerdict, dict[str, Any]]:
        """See :meth:`WebhookStore.spend`."""
        earlier = self._deliveries.get(delivery_id)
        if earlier is not None:
            return "duplicate", earlier
        held = self._endpoints.get(endpoint.path)
        if held is None or held.id != endpoint.id:
            return "gone", {}
        self._deliveries[delivery_id] = outcome
        _bound(self._deliveries, self.max_deliveries)
        del self._endpoints[endpoint.path]
        self._spent[endpoint.path] = endpoint
        _bound(self._spent, self.max_deliveries)
        self._by_run.get(endpoint.run_id, set()).discard(endpoint.path)
        return "accepted", outcome

    async def endpoints(self, run_id: str) -> list[WebhookEndpoint]:
        """See :meth:`WebhookStore.endpoints`."""
        paths = sorted(self._by_run.get(run_id, ()))
        return [self._endpoints[p] for p in paths if p in self._endpoints]

    async def drop_run(self, run_id: str) -> None:
        """See :meth:`WebhookStore.drop_run`."""
        for path in self._by_run.pop(run_id, set()):
            self._endpoints.pop(path, None)


def _bound(entries: OrderedDict[str, Any], limit: int) -> None:
    while len(entries) > limit:
        entries.popitem(last=False)


def _record(endpoint: WebhookEndpoint) -> str:
    # A secret resolved from a name or the registry's default stays out of the shared store:
    # the receiving process resolves it again. Only params.secret, which the blueprint holds
    # anyway, is stored.
    record: dict[str, Any] = {
        "path": endpoint.path,
        "runId": endpoint.run_id,
        "nodeId": endpoint.node_id,
        "blueprintId": endpoint.blueprint_id,
        "event": endpoint.event,
        "secretName": endpoint.secret_name,
        "defaultSecret": endpoint.default_secret,
        "id": endpoint.id,
    }
    if endpoint.secret_name is None and not endpoint.default_secret:
        record["secret"] = endpoint.secret
    return json.dumps(record)


def _from_record(raw: str | None) -> WebhookEndpoint | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        return WebhookEndpoint(
            path=str(record["path"]),
            run_id=str(record["runId"]),
            node_id=str(record["nodeId"]),
            blueprint_id=str(record.get("blueprintId") or ""),
            secret=str(record.get("secret") or ""),
            event=record.get("event"),
            secret_name=record.get("secretName"),
            default_secret=bool(record.get("defaultSecret")),
            id=str(record.get("id") or ""),
        )
    except (ValueError, KeyError, TypeError):
        _log.error("ignoring a malformed webhook endpoint record: %r", raw)
        return None


class CoordinationWebhookStore:
    """A :class:`WebhookStore` on a distributed backend's
    :class:`~flowcraft.distributed.CoordinationStore`, shared by every process using it.

    Endpoints and delivery ids are keys with ``ttl`` seconds to live (by default the adapter's
    TTL, a week). Secrets resolved from ``params.secretName`` or the registry's default are not
    stored: the receiving process resolves them again with its own registry.

    Args:
        coordination: The backend's coordination store.
        namespace: Prefix of the keys (the adapter's namespace).
        ttl: Seconds an endpoint, a spent endpoint and a delivery id are remembered.
    """

    def __init__(
        self,
        coordination: CoordinationStore,
        *,
        namespace: str = "flowcraft",
        ttl: float = 7 * 86400,
    ) -> None:
        self.coordination = coordination
        self.namespace = namespace
        self.ttl = ttl

    @classmethod
    def for_adapter(cls, adapter: DistributedAdapter) -> CoordinationWebhookStore:
        """The store on ``adapter``'s coordination store, namespace and TTL."""
        return cls(adapter.coordination, namespace=adapter.keys.namespace, ttl=adapter.ttl)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.namespace}:webhook:{kind}:{name}"

    async def add(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        """See :meth:`WebhookStore.add`."""
        store, key = self.coordination, self._key("live", endpoint.path)
        # Twice at most: the holder read back may have expired in between.
        for _ in range(2):
            if await store.set_if_not_exist(key, _record(endpoint), self.ttl):
                await store.add_to_set(self._key("run", endpoint.run_id), endpoint.path, self.ttl)
                return endpoint
            held = _from_record(await store.get(key))
            if held is not None:
                return held
        return endpoint

    async def get(self, path: str) -> WebhookEndpoint | None:
        """See :meth:`WebhookStore.get`."""
        live = _from_record(await self.coordination.get(self._key("live", path)))
        if live is not None:
            return live
        return _from_record(await self.coordination.get(self._key("spent", path)))

    async def spend(
        self, endpoint: WebhookEndpoint, delivery_id: str, outcome: dict[str, Any]
    ) -> tuple[SpendVerdict, dict[str, Any]]:
        """See :meth:`WebhookStore.spend`."""
        store = self.coordination
        delivery = self._key("delivery", delivery_id)
        if not await store.set_if_not_exist(delivery, json.dumps(outcome), self.ttl):
            earlier = await store.get(delivery)
            return "duplicate", json.loads(earlier) if earlier else {}
        live_key = self._key("live", endpoint.path)
        live = _from_record(await store.get(live_key))
        # The fence on the registration id lets one delivery through even when several read
        # the endpoint as live at once.
        used = self._key("used", endpoint.id)
        if (
            live is None
            or live.id != endpoint.id
            or not await store.set_if_not_exist(used, delivery_id, self.ttl)
        ):
            # Not remembered: like in memory, a refused delivery id is refused again later.
            await store.delete(delivery)
            return "gone", {}
        spent = self._key("spent", endpoint.path)
        await store.delete(spent)
        await store.set_if_not_exist(spent, _record(live), self.ttl)
        await store.delete(live_key)
        await store.remove_from_set(self._key("run", endpoint.run_id), endpoint.path)
        return "accepted", outcome

    async def endpoints(self, run_id: str) -> list[WebhookEndpoint]:
        """See :meth:`WebhookStore.endpoints`."""
        found = []
        for path in sorted(await self.coordination.members(self._key("run", run_id))):
            live = _from_record(await self.coordination.get(self._key("live", path)))
            if live is not None and live.run_id == run_id:
                found.append(live)
        return found

    async def drop_run(self, run_id: str) -> None:
        """See :meth:`WebhookStore.drop_run`."""
        for live in await self.endpoints(run_id):
            await self.coordination.delete(self._key("live", live.path))
        await self.coordination.delete(self._key("run", run_id))


@dataclass(slots=True)
class _Paused:
    blueprint: Blueprint
    state: str
    registry: Mapping[str, Any]


Resumer = Callable[[WebhookEndpoint, Any], Awaitable[Any]]
"""Resumes the run of an endpoint with a delivery's output; for runs not held in memory (a
distributed client's ``resume``). Its return value is reported as the run's status if it is a
:class:`WorkflowResult` or a string."""


def adapter_resumer(adapter: DistributedAdapter) -> Resumer:
    """A :data:`Resumer` that resumes distributed runs through ``adapter``.

    It completes the endpoint's awaiting node with the delivery's output (routing with no
    action) and reports the run's status right after, usually ``running``.
    """

    async def resume(endpoint: WebhookEndpoint, output: Any) -> str:
        await adapter.resume_with_action(endpoint.run_id, None, output, node_id=endpoint.node_id)
        return await adapter.status(endpoint.run_id)

    return resume


class WebhookRegistry(RunHooks):
    """Endpoints of awaiting webhook nodes, and how deliveries resume their runs.

    :meth:`install` it into a :class:`FlowRuntime` (in-memory runs) or a distributed adapter
    (workers, and the process serving the app): it becomes ``dependencies["webhooks"]``, which
    the ``webhook`` node registers with, and a run hook, which keeps a paused in-memory run's
    state and forgets the endpoints of runs that ended.

    Args:
        runtime: The in-memory runtime that resumes runs (set by :meth:`install`).
        secret: The secret of webhook nodes that name none.
        secret_resolver: Turns ``params.secretName`` into the secret (e.g. from a vault or the
            environment); returns ``None`` for an unknown name.
        resumer: Resumes runs itself instead of the in-memory runtime (set by :meth:`install`
            on an adapter).
        store: Where endpoints and delivery ids are kept. By default in this process, or, once
            installed into a distributed adapter, in that adapter's coordination store.
        max_deliveries: How many delivery ids the default in-process store remembers.
    """

    def __init__(
        self,
        runtime: FlowRuntime | None = None,
        *,
        secret: str | None = None,
        secret_resolver: Callable[[str], str | None] | None = None,
        resumer: Resumer | None = None,
        store: WebhookStore | None = None,
        max_deliveries: int = 100_000,
    ) -> None:
        self.runtime = runtime
        self.secret = secret
        self.secret_resolver = secret_resolver
        self.resumer = resumer
        self.store: WebhookStore = store or InMemoryWebhookStore(max_deliveries)
        self._chosen_store = store is not None
        self._paused: dict[str, _Paused] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- wiring

    def install(self, target: _Target) -> _Target:
        """Wire this registry into a runtime or a distributed adapter; returns ``target``.

        Into either it becomes ``dependencies["webhooks"]`` and a run hook. Into an adapter it
        also keeps its endpoints in the adapter's coordination store (unless a store was given)
        and resumes runs through the adapter (unless a resumer was given), so the app in one
        process resumes runs whose webhook node ran in another.
        """
        if isinstance(target, DistributedAdapter):
            if not self._chosen_store:
                self.store = CoordinationWebhookStore.for_adapter(target)
                self._chosen_store = True
            if self.resumer is None:
                self.resumer = adapter_resumer(target)
        else:
            self.runtime = target
        target.dependencies = {**target.dependencies, "webhooks": self}
        if self not in target.hooks:
            target.hooks.append(self)
        return target

    async def after_run(self, run: RunInfo, result: WorkflowResult) -> None:
        """Keep the state of an in-memory run paused at webhooks; forget ended runs."""
        run_id = run.run_id
        if result.status != "awaiting":
            self._paused.pop(run_id, None)
            self._locks.pop(run_id, None)
            await self.store.drop_run(run_id)
            return
        if run.distributed or run.blueprint is None:
            return  # a distributed run is held by its backend
        if await self.store.endpoints(run_id):
            self._paused[run_id] = _Paused(run.blueprint, result.serialized_context, run.registry)
        else:
            self._paused.pop(run_id, None)

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
        secret, secret_name, default_secret = self._secret_for(node_id, params)
        event = params.get("event")
        endpoint = WebhookEndpoint(
            path=path,
            run_id=run_id,
            node_id=node_id,
            blueprint_id=str(params.get("blueprintId", "")),
            secret=secret,
            event=None if event is None else str(event),
            secret_name=secret_name,
            default_secret=default_secret,
            id=uuid.uuid4().hex,
        )
        holder = await self.store.add(endpoint)
        if (holder.run_id, holder.node_id) != (run_id, node_id):
            raise BlueprintError(
                f"webhook node '{node_id}': path {path} is already registered by node"
                f" '{holder.node_id}' of run {holder.run_id}; put {{runId}} in params.path",
                node_id=node_id,
            )
        return {"path": path}

    def _secret_for(self, node_id: str, params: Mapping[str, Any]) -> tuple[str, str | None, bool]:
        """The node's secret, the secret name it was resolved from, and whether it is the
        registry's default."""
        secret = params.get("secret")
        name = params.get("secretName")
        resolved_from: str | None = None
        if secret is None and isinstance(name, str) and self.secret_resolver is not None:
            secret = self.secret_resolver(name)
            resolved_from = name if secret is not None else None
        default = secret is None
        if default:
            secret = self.secret
        if not isinstance(secret, str) or not secret:
            raise BlueprintError(
                f"webhook node '{node_id}' has no secret: set params.secret, params.secretName"
                " (with a secret_resolver) or the registry's default secret",
                node_id=node_id,
            )
        return secret, resolved_from, default

    # ----------------------------------------------------------------- the app's side

    async def endpoint(self, path: str) -> WebhookEndpoint | None:
        """The endpoint registered at ``path``, or recently spent there (to answer replays).

        An endpoint from a shared store gets its secret resolved here; one whose secret this
        registry cannot resolve is treated as unknown (and logged).
        """
        found = await self.store.get("/" + path.strip("/"))
        if found is None or found.secret:
            return found
        secret = None
        if found.secret_name is not None and self.secret_resolver is not None:
            secret = self.secret_resolver(found.secret_name)
        elif found.default_secret:
            secret = self.secret
        if not secret:
            _log.error(
                "webhook %s of run %s: this process cannot resolve its secret (%s)",
                found.path,
                found.run_id,
                f"secret name {found.secret_name!r}" if found.secret_name else "default secret",
            )
            return None
        return replace(found, secret=secret)

    async def endpoints(self, run_id: str) -> list[WebhookEndpoint]:
        """The live endpoints of ``run_id``."""
        return await self.store.endpoints(run_id)

    async def deliver(
        self, endpoint: WebhookEndpoint, delivery_id: str, output: Any, *, background: bool
    ) -> tuple[int, dict[str, Any]]:
        """Resume ``endpoint``'s run with ``output`` once per delivery id.

        Returns:
            The HTTP status and JSON body to answer with.
        """
        outcome: dict[str, Any] = {
            "runId": endpoint.run_id,
            "nodeId": endpoint.node_id,
            "deliveryId": delivery_id,
        }
        verdict, recorded = await self.store.spend(endpoint, delivery_id, outcome)
        if verdict == "duplicate":
            return 200, {**recorded, "duplicate": True}
        if verdict == "gone":
            return 409, {"error": f"run {endpoint.run_id} no longer awaits {endpoint.path}"}
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
        # One resumption of a run at a time: each continues from the state the last one left
        # (after_run stores it before the resumption returns).
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
    adapter: DistributedAdapter | None = None,
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
        adapter: Instead of ``runtime``, an adapter of a distributed backend: the registry is
            installed into it, so it finds endpoints registered by any worker and resumes
            their runs through the adapter. The inspector then records nothing (runs execute
            on the workers).
        registry: The webhook registry (one is made from ``secret``/``secret_resolver``).
        recorder: The run recorder behind the inspector pages (one is made if needed).
        secret: Default secret of webhook nodes that name none.
        secret_resolver: Resolves ``params.secretName`` to a secret.
        max_body: Largest accepted body in bytes; larger ones get 413.
        background: Answer 202 at once and resume in the background (default), or resume
            first and answer 200 with the run's new status.
        inspector: Serve the inspector pages and JSON.

    The objects are reachable as ``app.state.registry`` and ``app.state.recorder``.

    Raises:
        ValueError: Both ``runtime`` and ``adapter`` were given.
    """
    if runtime is not None and adapter is not None:
        raise ValueError("create_app takes a runtime or an adapter, not both")
    if registry is None:
        registry = WebhookRegistry(secret=secret, secret_resolver=secret_resolver)
    if recorder is None and inspector:
        recorder = RunRecorder()
    if adapter is not None:
        registry.install(adapter)
    if runtime is not None:
        registry.install(runtime)
        if recorder is not None:
            recorder.install(runtime)
    hooks = registry

    async def receive(request: Request) -> Response:
        path = request.url.path[len(request.scope.get("root_path", "")) :]
        endpoint = await hooks.endpoint(path)
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

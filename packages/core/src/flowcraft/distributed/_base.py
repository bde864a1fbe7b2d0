"""The parts a distributed adapter is composed of, and what every layer above reads of them.

The adapter is built in layers, each a module importing only the ones below it:
``_base`` (the parts) → ``_runs`` (counting jobs in flight, ending runs, parking and resuming)
→ ``_routing`` (joins, skips, dead paths) → ``_operations`` (the client's calls, reconcile,
timers) → ``_hopping`` (hops planned for the one-step fast path) → ``adapter`` (handling one
delivery, with ``_execute`` and ``_subflow``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from flowcraft.blueprint import Blueprint, NodeDefinition
from flowcraft.builtins import BUILTINS
from flowcraft.distributed._events import EventForwarder, StoreEventLog
from flowcraft.distributed._keys import DYNAMIC, Keys
from flowcraft.distributed._protocols import (
    ArrivalReader,
    ContextStore,
    CoordinationStore,
    EventLog,
    HopCommitter,
    HopCoordination,
    Queue,
    ResultChannel,
)
from flowcraft.distributed._results import PollingResultChannel
from flowcraft.distributed._splithop import SplitHop
from flowcraft.distributed._ticker import Ticker
from flowcraft.errors import JobRejected
from flowcraft.evaluator import Evaluator, SafeEvaluator
from flowcraft.events import EventBus
from flowcraft.hooks import RunHooks
from flowcraft.middleware import Middleware
from flowcraft.runtime._graph import Graph, graph_for

__all__ = ["Parts"]

Closer = Callable[[], Awaitable[None]]


class Parts:
    """The backend's parts and the adapter's settings (see
    :class:`~flowcraft.distributed.DistributedAdapter` for the arguments)."""

    builtins: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Implementations a layer above puts in place of core's built-ins (subflows run as child
    runs in distributed mode, not inside the node)."""

    def __init__(
        self,
        *,
        queue: Queue,
        context: ContextStore,
        coordination: CoordinationStore,
        results: ResultChannel | None = None,
        hops: HopCommitter | None = None,
        arrivals: ArrivalReader | None = None,
        events: EventLog | None = None,
        run_events: bool = False,
        closers: Sequence[Closer] = (),
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        middleware: list[Middleware] | None = None,
        event_bus: EventBus | None = None,
        evaluator: Evaluator | None = None,
        namespace: str = "flowcraft",
        ttl: float = 7 * 86400,
        lease: float = 30.0,
        cancel_poll: float = 0.5,
        hooks: list[RunHooks] | None = None,
    ) -> None:
        _check("queue", queue, Queue)
        _check("context", context, ContextStore)
        _check("coordination", coordination, CoordinationStore)
        if results is not None:
            _check("results", results, ResultChannel)
        if hops is not None:
            _check("hops", hops, HopCommitter)
        split = coordination if isinstance(coordination, HopCoordination) else None
        if hops is None and split is not None:
            hops = SplitHop(split, context, queue)
        if arrivals is not None:
            _check("arrivals", arrivals, ArrivalReader)
        if events is not None:
            _check("events", events, EventLog)
        self.queue = queue
        self.context = context
        self.coordination = coordination
        self.results: ResultChannel = results or PollingResultChannel()
        self.hops = hops
        self.counts_done = split
        """The coordination store, when it counts a job done in one step."""
        self.arrivals = arrivals
        self.closers = list(closers)
        self.registry: dict[str, Any] = {**BUILTINS, **self.builtins, **(registry or {})}
        self.blueprints = dict(blueprints or {})
        self.dependencies: Mapping[str, Any] = dict(dependencies or {})
        self.middleware: list[Middleware] = list(middleware or [])
        self.event_bus = event_bus
        self.evaluator = evaluator or SafeEvaluator()
        self.keys = Keys(namespace)
        self.ttl = ttl
        self.lease = lease
        self.cancel_poll = cancel_poll
        self.hooks: list[RunHooks] = list(hooks or [])
        self.event_log: EventLog = events or StoreEventLog(coordination, self.keys, ttl=ttl)
        self.forwarder: EventForwarder | None = None
        if run_events:
            # Every event of this process is built and written: off by default for speed.
            self.event_bus = event_bus or EventBus()
            self.forwarder = EventForwarder(self.event_log, self.event_bus)
        self.graphs: dict[tuple[str, frozenset[str]], Graph] = {}
        self.renewals = Ticker(lease / 3, "lease heartbeat")
        self.watches = Ticker(cancel_poll, "cancellation watcher")

    def blueprint(self, blueprint_id: str) -> Blueprint:
        """A registered blueprint.

        Raises:
            JobRejected: ``blueprint_id`` is not registered.
        """
        try:
            return self.blueprints[blueprint_id]
        except KeyError:
            raise JobRejected(f"blueprint '{blueprint_id}' is not registered") from None

    async def meta(self, run_id: str) -> tuple[str, str | None] | None:
        """The run's ``(blueprintId, version)`` recorded at its start, or None."""
        return parse_meta(await self.coordination.get(self.keys.meta(run_id)))

    async def graph_of(
        self, run_id: str, blueprint: Blueprint, emitters: set[str] | None = None
    ) -> Graph:
        """The run's graph: the blueprint plus the dynamic nodes its results spliced in.

        ``emitters`` is the run's set of splicing nodes when the caller just read it.
        """
        if emitters is None:
            emitters = await self.coordination.members(self.keys.dynamic(run_id))
        base = graph_for(blueprint)
        if not emitters:
            return base
        cache_key = (run_id, frozenset(emitters))
        cached = self.graphs.get(cache_key)
        if cached is not None:
            return cached
        graph = base.copy()
        # Sorted so every worker splices in the same order and edge positions agree.
        stored = await self.context.get_many(run_id, [DYNAMIC + e for e in sorted(emitters)])
        for emitter in sorted(emitters):
            splice = stored.get(DYNAMIC + emitter) or {}
            _splice(graph, emitter, splice.get("nodes") or [], splice.get("gather"))
        if len(self.graphs) > 256:
            self.graphs.clear()
        self.graphs[cache_key] = graph
        return graph


def parse_meta(raw: str | None) -> tuple[str, str | None] | None:
    """A run's meta record (``Keys.meta``) as ``(blueprintId, version)``."""
    if raw is None:
        return None
    blueprint_id, version = orjson.loads(raw)
    return str(blueprint_id), version


def _check(name: str, part: object, protocol: type) -> None:
    if not isinstance(part, protocol):
        raise TypeError(
            f"{name}={type(part).__name__} does not implement {protocol.__name__}"
            " (see docs/backends.md)"
        )


def _splice(graph: Graph, emitter: str, nodes: list[dict[str, Any]], gather: Any) -> None:
    # The same splice as the in-memory engine's Run._splice.
    for raw in nodes:
        preds = list(raw.get("predecessors") or [emitter])
        definition = NodeDefinition.model_validate(
            {k: v for k, v in raw.items() if k != "predecessors"}
        )
        graph.add_node(definition, preds)
        graph.dynamic.append((raw, []))
        if isinstance(gather, str) and gather in graph.nodes:
            graph.add_node(graph.nodes[gather].definition, [definition.id])

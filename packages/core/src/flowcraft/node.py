"""What a node is: its result, the context it receives, and the class-node base.

A node is either a function (async or sync; sync ones run in a worker thread unless marked
:func:`inline`) taking a :class:`NodeContext`, or a subclass of :class:`Node` with
``prep``/``exec``/``post``/``fallback``/``recover`` phases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "AsyncContext",
    "CancelSignal",
    "Node",
    "NodeContext",
    "NodeFunction",
    "NodeImplementation",
    "NodeResult",
    "PatchOperation",
    "inline",
    "is_inline",
    "to_node_result",
]

_INLINE = "__flowcraft_inline__"
_Implementation = TypeVar("_Implementation")


@dataclass(slots=True)
class NodeResult:
    """What a node returns.

    Attributes:
        output: Stored as ``_outputs.<nodeId>`` and handed to successors.
        action: Selects the outgoing edges whose ``action`` equals it.
        dynamic_nodes: Node definitions (camelCase dicts) spliced into the running graph, each
            with the emitting node as its predecessor.
    """

    output: Any = None
    action: str | None = None
    dynamic_nodes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape, as stored for redelivered jobs."""
        out: dict[str, Any] = {"output": self.output}
        if self.action is not None:
            out["action"] = self.action
        if self.dynamic_nodes:
            out["dynamicNodes"] = self.dynamic_nodes
        return out


_RESULT_KEYS = frozenset({"output", "action", "dynamic_nodes", "dynamicNodes"})


def to_node_result(value: Any) -> NodeResult:
    """Normalise what a node returned.

    A :class:`NodeResult` is kept; ``None`` means no output; a dict whose keys are all among
    ``output``, ``action``, ``dynamic_nodes`` (or ``dynamicNodes``) is read as a result; any other
    value is the output itself.
    """
    if value is None:
        return NodeResult()
    if type(value) is NodeResult:
        return value
    if isinstance(value, dict) and value and _RESULT_KEYS.issuperset(value):
        action = value.get("action")
        dynamic = value.get("dynamic_nodes", value.get("dynamicNodes")) or []
        return NodeResult(
            output=value.get("output"),
            action=None if action is None else str(action),
            dynamic_nodes=list(dynamic),
        )
    if isinstance(value, NodeResult):
        return value
    return NodeResult(output=value)


PatchOperation = Mapping[str, Any]
"""``{"op": "set", "key": k, "value": v}`` or ``{"op": "delete", "key": k}``."""


@runtime_checkable
class AsyncContext(Protocol):
    """The per-run key/value state as a node sees it. Values are JSON-compatible."""

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""

    async def has(self, key: str) -> bool:
        """Whether ``key`` is present."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was present."""

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The present keys among ``keys``."""

    async def patch(self, operations: Iterable[PatchOperation]) -> None:
        """Apply set/delete operations all-or-nothing."""

    async def to_dict(self) -> dict[str, Any]:
        """A snapshot of the whole context."""


class CancelSignal(Protocol):
    """Anything with ``is_set()``, such as :class:`asyncio.Event`."""

    def is_set(self) -> bool:
        """Whether cancellation was requested."""


class NodeContext:
    """What a node receives.

    Attributes:
        input: The node's input, resolved from its ``inputs`` mapping or its incoming edges.
        context: The run's context (async get/set/has/delete/get_many/patch/to_dict).
        params: The node's ``params`` (``{}`` when absent).
        dependencies: The runtime's dependencies (user services).
        signal: Set when the run is cancelled; long nodes should watch it.
        node_id: This node's id.
        run_id: The run's id.
        blueprint_id: The blueprint's id.
        attempt: The attempt number, from 1.
    """

    __slots__ = (
        "_run",
        "attempt",
        "blueprint_id",
        "context",
        "dependencies",
        "input",
        "node_id",
        "params",
        "run_id",
        "signal",
    )

    def __init__(
        self,
        *,
        input: Any,
        context: AsyncContext,
        params: Mapping[str, Any],
        dependencies: Mapping[str, Any],
        signal: CancelSignal,
        node_id: str,
        run_id: str,
        blueprint_id: str,
        attempt: int = 1,
        run: Any = None,
    ) -> None:
        self.input = input
        self.context = context
        self.params = params
        self.dependencies = dependencies
        self.signal = signal
        self.node_id = node_id
        self.run_id = run_id
        self.blueprint_id = blueprint_id
        self.attempt = attempt
        self._run = run

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled."""
        return self.signal.is_set()


class Node:
    """Base class of class nodes. A fresh instance runs each execution.

    Phases: ``prep`` (not retried) → ``exec`` (retried up to ``maxRetries`` attempts) →
    ``fallback`` if ``exec`` failed for good (default re-raises) → ``post`` (not retried).
    ``recover`` runs last whenever the node ends in failure. Each phase may be async or sync.
    """

    def __init__(self, params: Mapping[str, Any], node_id: str) -> None:
        self.params = params
        self.node_id = node_id

    def prep(self, ctx: NodeContext) -> Any:
        """Prepare what ``exec`` receives; defaults to the node's input."""
        return ctx.input

    def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        """Do the work; the only retried phase."""
        raise NotImplementedError(f"{type(self).__name__}.exec is not implemented")

    def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        """Produce a result when ``exec`` failed for good; defaults to re-raising."""
        raise error

    def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        """Turn the exec result into the node result; defaults to passing it through."""
        return exec_result

    def recover(self, error: BaseException, ctx: NodeContext) -> Any:
        """Clean up after a failure; errors raised here are logged and ignored."""
        return None


NodeFunction = Callable[[NodeContext], Awaitable[Any] | Any]
NodeImplementation = NodeFunction | type[Node]


def inline(implementation: _Implementation) -> _Implementation:
    """Mark a sync node function, a :class:`Node` subclass or one of its phases as cheap enough
    to run on the event loop.

    Sync node code runs in a worker thread by default, so that blocking code never stalls the
    event loop; the thread hop costs tens of microseconds per call. A function marked ``inline``
    is called directly on the loop, like the body of an async node: use it only for code that
    neither blocks nor runs long (no I/O, no sleeps, no heavy computation)::

        @inline
        def double(ctx: NodeContext) -> int:
            return ctx.input * 2

    On a class it applies to every sync phase. Async functions run on the loop anyway: marking
    them changes nothing.

    Raises:
        TypeError: ``implementation`` takes no attributes (a bound method or a builtin): wrap it
            in a ``def``.
    """
    try:
        setattr(implementation, _INLINE, True)
    except (AttributeError, TypeError) as exc:
        raise TypeError(
            f"inline() cannot mark {implementation!r}: wrap it in a def and mark that"
        ) from exc
    return implementation


def is_inline(implementation: Any) -> bool:
    """Whether :func:`inline` marked ``implementation`` (or, for a method, its function)."""
    return getattr(implementation, _INLINE, False) is True

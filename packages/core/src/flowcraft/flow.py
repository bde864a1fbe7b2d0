"""The fluent builder: ``create_flow("id").node(...).edge(...).to_blueprint()``.

Functions and :class:`~flowcraft.node.Node` classes handed to the builder are registered under
deterministic uses keys (``"<module>:<qualname>"``, see :func:`uses_key_for`), so every process
that builds the same flow agrees on the keys without coordination, whatever the build order.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import types
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, TypeVar

from pydantic import ValidationError

from flowcraft.blueprint import Blueprint, NodeConfig, load_blueprint
from flowcraft.errors import BlueprintError
from flowcraft.node import NodeImplementation

__all__ = ["Flow", "SupportsRun", "create_flow", "uses_key_for"]

_ResultT_co = TypeVar("_ResultT_co", covariant=True)
_ResultT = TypeVar("_ResultT")


class SupportsRun(Protocol[_ResultT_co]):
    """A runtime as :meth:`Flow.run` and :meth:`Flow.resume` use it, e.g. ``FlowRuntime``."""

    def run(self, *args: Any, **kwargs: Any) -> Awaitable[_ResultT_co]:
        """``run(blueprint, initial_state, *, function_registry, **options)``."""
        ...

    def resume(self, *args: Any, **kwargs: Any) -> Awaitable[_ResultT_co]:
        """``resume(blueprint, state, resume_data, node_id, *, function_registry, **options)``."""
        ...


def _stable_repr(value: object) -> str:
    # repr() of a code object embeds its address and a frozenset's order follows string hashes
    # (randomised per process), so both are spelled out field by field, in sorted order.
    if isinstance(value, types.CodeType):
        fields = (
            value.co_qualname,
            value.co_code.hex(),
            _stable_repr(value.co_consts),
            repr(value.co_names),
            repr(value.co_varnames),
            repr(value.co_freevars),
        )
        return "code(" + "|".join(fields) + ")"
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(_stable_repr(item) for item in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(_stable_repr(item) for item in value) + ")"
    return repr(value)


def _fingerprint(target: Any, qualname: str) -> str:
    parts = [qualname]
    if isinstance(target, type):
        parts += [f"{base.__module__}:{base.__qualname__}" for base in target.__bases__]
        for name, member in sorted(vars(target).items()):
            function = getattr(member, "__func__", member)  # staticmethod / classmethod
            code = getattr(function, "__code__", None)
            parts.append(name if code is None else f"{name}={_stable_repr(code)}")
    else:
        code = getattr(target, "__code__", None)
        if code is not None:
            parts.append(_stable_repr(code))
    return "\n".join(parts)


def _key_target(implementation: object) -> Any:
    if isinstance(implementation, types.MethodType):
        return implementation.__func__
    if isinstance(implementation, type) or inspect.isroutine(implementation):
        return implementation
    # A callable instance is keyed by its class.
    return type(implementation)


def uses_key_for(implementation: object) -> str:
    """The deterministic uses key the builder registers an implementation under.

    ``"<module>:<qualname>"``, e.g. ``"myapp.nodes:fetch"`` or ``"myapp.nodes:Fetch"``. A lambda or
    a function or class defined inside a function (``<lambda>`` or ``<locals>`` in its qualified
    name) gets ``"#"`` and 8 hex digits of a SHA-256 of its code (bytecode, constants, names and
    qualified name), so two different lambdas differ while the same source gives the same key in
    every process. Bound methods are keyed by their function, callable instances by their class.

    Args:
        implementation: A node function, a :class:`~flowcraft.node.Node` subclass or a callable.

    Returns:
        The uses key.
    """
    target = _key_target(implementation)
    module = getattr(target, "__module__", None) or "__unknown__"
    qualname = str(getattr(target, "__qualname__", None) or getattr(target, "__name__", "?"))
    key = f"{module}:{qualname}"
    if "<lambda>" in qualname or "<locals>" in qualname:
        digest = hashlib.sha256(_fingerprint(target, qualname).encode()).hexdigest()
        key += "#" + digest[:8]
    return key


def _describe(implementation: object) -> str:
    target = _key_target(implementation)
    code = getattr(target, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(target, '__qualname__', repr(target))}{where}"


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    # The TypeScript builder leaves unset options out of the JSON rather than writing null.
    return {key: value for key, value in values.items() if value is not None}


def _context_ref(node_id: str) -> str:
    # json.dumps quotes and escapes the id in a form that is also a valid expression literal.
    return f"context[{json.dumps(node_id)}]"


_CONFIG_KEYS = frozenset(
    name for key, info in NodeConfig.model_fields.items() for name in (key, info.alias) if name
)


@dataclass(slots=True)
class _EdgeSpec:
    source: str
    target: str
    action: str | None = None
    condition: str | None = None
    transform: str | None = None
    loop_end: str | None = None
    """For a loop's ``continue`` edge: the end node whose output the transform hands back."""


@dataclass(frozen=True, slots=True)
class _LoopSpec:
    id: str
    start: str
    end: str


class Flow:
    """A workflow under construction; every building method returns the flow itself.

    Args:
        flow_id: The blueprint id.

    Raises:
        BlueprintError: ``flow_id`` is empty.
    """

    def __init__(self, flow_id: str) -> None:
        if not flow_id:
            raise BlueprintError("a flow id must be a non-empty string")
        self._id = flow_id
        self._nodes: list[dict[str, Any]] = []
        self._taken: set[str] = set()
        self._batches: dict[str, None] = {}
        self._loops: dict[str, _LoopSpec] = {}
        self._edges: list[_EdgeSpec] = []
        self._registry: dict[str, NodeImplementation] = {}
        self._version: str | None = None
        self._entry_points: list[str] = []
        self._extra_metadata: dict[str, Any] = {}

    @property
    def id(self) -> str:
        """The blueprint id."""
        return self._id

    @property
    def function_registry(self) -> dict[str, NodeImplementation]:
        """A copy of the map uses key → implementation of everything registered by this flow."""
        return dict(self._registry)

    def __repr__(self) -> str:
        return f"Flow({self._id!r}, nodes={len(self._nodes)}, edges={len(self._edges)})"

    def node(
        self,
        node_id: str,
        impl: NodeImplementation | str,
        *,
        params: Mapping[str, Any] | None = None,
        inputs: str | Mapping[str, str] | None = None,
        config: NodeConfig | Mapping[str, Any] | None = None,
    ) -> Self:
        """Add a node.

        Args:
            node_id: The node id, unique in the flow.
            impl: An async or sync function taking a :class:`~flowcraft.node.NodeContext`, a
                :class:`~flowcraft.node.Node` subclass, or the uses key of an implementation
                registered elsewhere (a runtime registry or a built-in such as ``"wait"``).
            params: The node's ``params``.
            inputs: A context reference, or a map field → reference.
            config: A :class:`~flowcraft.blueprint.NodeConfig` or a dict with camelCase or
                snake_case keys (``maxRetries`` or ``max_retries``, ...).

        Raises:
            BlueprintError: The id is taken, the config is invalid, or a different implementation
                already has this implementation's uses key.
        """
        self._check_free(node_id)
        node_config = self._config(node_id, config)
        uses = self._register(impl, f"node '{node_id}'")
        self._taken.add(node_id)
        return self._add(node_id, uses, params=params, inputs=inputs, config=node_config)

    def edge(
        self,
        source: str,
        target: str,
        *,
        action: str | None = None,
        condition: str | None = None,
        transform: str | None = None,
    ) -> Self:
        """Add an edge; a batch or loop id may be used as either end (see :meth:`batch`)."""
        self._edges.append(_EdgeSpec(source, target, action, condition, transform))
        return self

    def batch(
        self,
        batch_id: str,
        worker: NodeImplementation | str,
        *,
        input_key: str,
        output_key: str | None = None,
        chunk_size: int | None = None,
    ) -> Self:
        """Run ``worker`` once per item of the list at ``input_key``, in parallel.

        Adds ``<batch_id>_scatter`` (``batch-scatter``) and ``<batch_id>_gather``
        (``batch-gather``, an ``all`` join) joined by an edge. Edges into ``batch_id`` are
        retargeted to the scatter node and edges out of it re-sourced at the gather node when
        the blueprint is built. The worker is registered but is not a node of the blueprint.

        Args:
            batch_id: The batch id; ``<id>_scatter`` and ``<id>_gather`` must be free too.
            worker: The per-item implementation, or its uses key.
            input_key: Context reference of the input list.
            output_key: Where the gather node stores the results (default: its own output).
            chunk_size: How many workers to start at once (default: all).

        Raises:
            BlueprintError: An id is taken, ``chunk_size`` is not positive, or a uses key clash.
        """
        scatter, gather = f"{batch_id}_scatter", f"{batch_id}_gather"
        for node_id in (batch_id, scatter, gather):
            self._check_free(node_id)
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise BlueprintError(
                f"batch '{batch_id}': chunk_size must be a positive integer, not {chunk_size!r}",
                node_id=scatter,
                blueprint_id=self._id,
            )
        worker_key = self._register(worker, f"batch '{batch_id}' worker")
        self._taken.add(batch_id)
        self._batches[batch_id] = None
        self._claim(scatter)
        self._claim(gather)
        scatter_params = {
            "workerUsesKey": worker_key,
            "outputKey": output_key,
            "gatherNodeId": gather,
            "chunkSize": chunk_size,
        }
        gather_params = {"outputKey": output_key, "gatherNodeId": gather}
        self._add(scatter, "batch-scatter", params=_present(scatter_params), inputs=input_key)
        self._add(
            gather, "batch-gather", params=_present(gather_params), config={"joinStrategy": "all"}
        )
        return self.edge(scatter, gather)

    def loop(self, loop_id: str, *, start_node_id: str, end_node_id: str, condition: str) -> Self:
        """Repeat the nodes from ``start_node_id`` to ``end_node_id`` while ``condition`` holds.

        Adds a ``loop-controller`` node ``loop_id`` (an ``any`` join), an edge from the end node
        to it, and an edge from it back to the start node with action ``"continue"`` and the
        transform ``context["<end>"]``. Enter the loop with an edge into ``loop_id`` (the
        condition is then checked before the first iteration, a *while* loop) and leave it with
        edges out of ``loop_id``: when the blueprint is built, those get action ``"break"``
        unless they carry their own, and the transform ``context["<end>"]`` unless they carry
        their own. (The TypeScript builder overwrites a user's transform; this one keeps it.)

        Raises:
            BlueprintError: ``loop_id`` is taken. A missing start or end node is reported by
                :meth:`to_blueprint`.
        """
        self._claim(loop_id)
        self._add(
            loop_id,
            "loop-controller",
            params={"condition": condition},
            config={"joinStrategy": "any"},
        )
        self._loops[loop_id] = _LoopSpec(loop_id, start_node_id, end_node_id)
        self._edges.append(_EdgeSpec(end_node_id, loop_id))
        self._edges.append(_EdgeSpec(loop_id, start_node_id, "continue", loop_end=end_node_id))
        return self

    def sleep(self, node_id: str, *, duration: int | float | str) -> Self:
        """Add a ``sleep`` node: milliseconds, or digits with ``s``, ``m``, ``h`` or ``d``."""
        self._claim(node_id)
        return self._add(node_id, "sleep", params={"duration": duration})

    def wait(
        self,
        node_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        config: NodeConfig | Mapping[str, Any] | None = None,
    ) -> Self:
        """Add a ``wait`` node: the run pauses there (``awaiting``) until resumed."""
        node_config = self._config(node_id, config)
        self._claim(node_id)
        return self._add(node_id, "wait", params=params, config=node_config)

    def webhook(
        self, node_id: str, *, path: str | None = None, params: Mapping[str, Any] | None = None
    ) -> Self:
        """Add a ``webhook`` node; ``path`` is stored as ``params.path``."""
        self._claim(node_id)
        merged = {**(params or {}), **({"path": path} if path is not None else {})}
        return self._add(node_id, "webhook", params=merged or None)

    def subflow(
        self,
        node_id: str,
        blueprint_id: str,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        config: NodeConfig | Mapping[str, Any] | None = None,
    ) -> Self:
        """Add a ``subflow`` node running the blueprint registered as ``blueprint_id``.

        ``inputs`` maps child key → parent key (copied in); ``outputs`` maps parent key → child
        key (copied back when the child completes).
        """
        node_config = self._config(node_id, config)
        self._claim(node_id)
        params: dict[str, Any] = {"blueprintId": blueprint_id}
        if inputs is not None:
            params["inputs"] = dict(inputs)
        if outputs is not None:
            params["outputs"] = dict(outputs)
        return self._add(node_id, "subflow", params=params, config=node_config)

    def set_cycle_entry_point(self, node_id: str) -> Self:
        """Prefer ``node_id`` as the entry of a cycle that has no start node."""
        if node_id not in self._entry_points:
            self._entry_points.append(node_id)
        return self

    def version(self, version: str) -> Self:
        """Set ``metadata.version`` (distributed workers refuse jobs of another version)."""
        self._version = version
        return self

    def metadata(self, **values: Any) -> Self:
        """Set metadata keys; ``version`` and ``cycle_entry_points`` are understood."""
        for key, value in values.items():
            if key == "version":
                self._version = value
            elif key in ("cycle_entry_points", "cycleEntryPoints"):
                self._entry_points = list(value)
            else:
                self._extra_metadata[key] = value
        return self

    def to_blueprint(self) -> Blueprint:
        """Build and check a new :class:`~flowcraft.blueprint.Blueprint` (one per call).

        Edges come in the TypeScript builder's order: loop exits (rewired), edges touching a
        batch id (rewired), then the others in the order they were added.

        Raises:
            BlueprintError: The flow has no nodes, a loop's start or end node or a cycle entry
                point is missing, or the blueprint is invalid (e.g. an edge names no node).
        """
        if not self._nodes:
            raise BlueprintError(f"flow '{self._id}' has no nodes", blueprint_id=self._id)
        node_ids = {node["id"] for node in self._nodes}
        for loop in self._loops.values():
            for role, ref in (("start", loop.start), ("end", loop.end)):
                if ref not in node_ids and ref not in self._batches:
                    raise BlueprintError(
                        f"flow '{self._id}': loop '{loop.id}' has {role} node '{ref}',"
                        " which is not a node",
                        node_id=loop.id,
                        blueprint_id=self._id,
                    )
        loop_rank = {loop_id: rank for rank, loop_id in enumerate(self._loops)}

        def group(spec: _EdgeSpec) -> tuple[int, int]:
            if self._loop_exit_of(spec) is not None:
                return (0, loop_rank[spec.source])
            touches_batch = spec.source in self._batches or spec.target in self._batches
            return (1, 0) if touches_batch else (2, 0)

        # sorted() is stable, so each group keeps the order in which its edges were added.
        edges = [self._edge_json(spec) for spec in sorted(self._edges, key=group)]
        raw: dict[str, Any] = {"id": self._id, "nodes": copy.deepcopy(self._nodes), "edges": edges}
        metadata = self._metadata_json()
        if metadata:
            raw["metadata"] = metadata
        return load_blueprint(raw)

    def to_json(self, *, indent: bool = False) -> str:
        """The blueprint as camelCase JSON text."""
        return self.to_blueprint().to_json(indent=indent)

    async def run(
        self,
        runtime: SupportsRun[_ResultT],
        initial_state: Mapping[str, Any] | str | None = None,
        **options: Any,
    ) -> _ResultT:
        """Run this flow on ``runtime`` with its implementations as the function registry.

        Args:
            runtime: A runtime such as :class:`flowcraft.FlowRuntime`.
            initial_state: The starting context, as a mapping or serialized text.
            **options: Passed on to ``runtime.run`` (``concurrency``, ``signal``, ...).
        """
        return await runtime.run(
            self.to_blueprint(), initial_state, function_registry=self.function_registry, **options
        )

    async def resume(
        self,
        runtime: SupportsRun[_ResultT],
        state: Mapping[str, Any] | str,
        resume_data: Mapping[str, Any] | None = None,
        node_id: str | None = None,
        **options: Any,
    ) -> _ResultT:
        """Resume a paused run of this flow at an awaiting node.

        Args:
            runtime: The runtime.
            state: The paused run's (serialized) context.
            resume_data: ``{"output": ..., "action": ...}`` for the resumed node.
            node_id: The awaiting node to resume (default: the first).
            **options: Passed on to ``runtime.resume``.
        """
        return await runtime.resume(
            self.to_blueprint(),
            state,
            resume_data,
            node_id,
            function_registry=self.function_registry,
            **options,
        )

    def _check_free(self, node_id: str) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise BlueprintError(
                f"flow '{self._id}': a node id must be a non-empty string, not {node_id!r}",
                blueprint_id=self._id,
            )
        if node_id in self._taken:
            raise BlueprintError(
                f"flow '{self._id}' already has a node or batch '{node_id}'",
                node_id=node_id,
                blueprint_id=self._id,
            )

    def _claim(self, node_id: str) -> None:
        self._check_free(node_id)
        self._taken.add(node_id)

    def _config(
        self, node_id: str, config: NodeConfig | Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        if config is None or isinstance(config, NodeConfig):
            return None if config is None else config.model_dump(by_alias=True, exclude_none=True)
        # NodeConfig ignores unknown keys; a misspelt "max_retry" must not vanish silently.
        unknown = sorted(set(config) - _CONFIG_KEYS)
        reason = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else None
        if reason is None:
            try:
                return NodeConfig.model_validate(dict(config)).model_dump(
                    by_alias=True, exclude_none=True
                )
            except ValidationError as exc:
                first = exc.errors()[0]
                reason = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        raise BlueprintError(
            f"flow '{self._id}': node '{node_id}' has an invalid config: {reason}",
            node_id=node_id,
            blueprint_id=self._id,
            field="config",
        )

    def _register(self, impl: NodeImplementation | str, what: str) -> str:
        if isinstance(impl, str):
            if not impl:
                raise BlueprintError(f"flow '{self._id}': {what} has an empty uses key")
            return impl
        if not callable(impl):
            raise BlueprintError(
                f"flow '{self._id}': {what} needs a function, a Node subclass or a uses key,"
                f" not {type(impl).__name__}",
                blueprint_id=self._id,
            )
        key = uses_key_for(impl)
        existing = self._registry.get(key)
        if existing is not None and existing is not impl and existing != impl:
            raise BlueprintError(
                f"flow '{self._id}': {what}: {_describe(impl)} and {_describe(existing)} are"
                f" different implementations with the same uses key '{key}'; define them under"
                " distinct names (e.g. at module level) or register one and pass its key",
                blueprint_id=self._id,
            )
        self._registry[key] = impl
        return key

    def _add(
        self,
        node_id: str,
        uses: str,
        *,
        params: Mapping[str, Any] | None = None,
        inputs: str | Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Self:
        node: dict[str, Any] = {"id": node_id, "uses": uses}
        if params is not None:
            # A snapshot: later changes to the caller's dict do not reach the flow.
            node["params"] = copy.deepcopy(dict(params))
        if inputs is not None:
            node["inputs"] = inputs if isinstance(inputs, str) else dict(inputs)
        if config:
            node["config"] = dict(config)
        self._nodes.append(node)
        return self

    def _resolve(self, ref: str, end: Literal["source", "target"]) -> str:
        if ref in self._batches:
            return f"{ref}_gather" if end == "source" else f"{ref}_scatter"
        return ref

    def _loop_exit_of(self, spec: _EdgeSpec) -> _LoopSpec | None:
        loop = self._loops.get(spec.source)
        return loop if loop is not None and spec.target != loop.start else None

    def _edge_json(self, spec: _EdgeSpec) -> dict[str, Any]:
        action, transform, end = spec.action, spec.transform, spec.loop_end
        exit_of = self._loop_exit_of(spec)
        if exit_of is not None:
            action, end = action or "break", exit_of.end
        if transform is None and end is not None:
            # The controller has no output of its own; hand on the loop body's last output.
            transform = _context_ref(self._resolve(end, "source"))
        edge = {
            "source": self._resolve(spec.source, "source"),
            "target": self._resolve(spec.target, "target"),
            "action": action,
            "condition": spec.condition,
            "transform": transform,
        }
        return _present(edge)

    def _metadata_json(self) -> dict[str, Any]:
        metadata = dict(self._extra_metadata)
        if self._version is not None:
            metadata["version"] = self._version
        entry_points: list[str] = []
        node_ids = {node["id"] for node in self._nodes}
        for ref in self._entry_points:
            resolved = self._resolve(ref, "target")
            if resolved not in node_ids:
                raise BlueprintError(
                    f"flow '{self._id}': cycle entry point '{ref}' is not a node",
                    node_id=ref,
                    blueprint_id=self._id,
                )
            entry_points.append(resolved)
        if entry_points:
            metadata["cycleEntryPoints"] = entry_points
        return metadata


def create_flow(flow_id: str) -> Flow:
    """Start building a flow whose blueprint id is ``flow_id``."""
    return Flow(flow_id)

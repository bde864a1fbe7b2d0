"""The blueprint model: a JSON-serialisable workflow graph in the TypeScript Flowcraft's shape.

Python attributes are snake_case; JSON keeps the camelCase names (``maxRetries``, ``joinStrategy``,
``cycleEntryPoints``) so blueprints travel between the TypeScript and Python implementations.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from flowcraft.errors import BlueprintError

__all__ = [
    "Blueprint",
    "BlueprintMetadata",
    "EdgeDefinition",
    "JoinStrategy",
    "NodeConfig",
    "NodeDefinition",
    "load_blueprint",
]

JoinStrategy = Literal["all", "any"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


class NodeConfig(_Model):
    """Resilience and join settings of one node.

    ``max_retries`` is the total number of attempts (at least one always runs); ``retry_delay`` is
    the base of an exponential back-off in milliseconds; ``timeout`` bounds each attempt in
    milliseconds; ``fallback`` names the node that runs when this one fails for good.
    """

    max_retries: int | None = Field(default=None, ge=0)
    retry_delay: int | float | None = Field(default=None, ge=0)
    timeout: int | float | None = Field(default=None, gt=0)
    fallback: str | None = None
    join_strategy: JoinStrategy | None = None


class NodeDefinition(_Model):
    """One node of a blueprint: ``uses`` is the registry key of its implementation."""

    id: str = Field(min_length=1)
    uses: str = Field(min_length=1)
    params: dict[str, Any] | None = None
    inputs: str | dict[str, str] | None = None
    config: NodeConfig | None = None

    @property
    def join_strategy(self) -> JoinStrategy:
        """The node's join strategy, ``"all"`` unless configured."""
        if self.config is None or self.config.join_strategy is None:
            return "all"
        return self.config.join_strategy


class EdgeDefinition(_Model):
    """A directed edge; ``action``, ``condition`` and ``transform`` are optional."""

    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    action: str | None = None
    condition: str | None = None
    transform: str | None = None


class BlueprintMetadata(_Model):
    """Open metadata: ``version`` and ``cycleEntryPoints`` are understood; other keys pass."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )

    version: str | None = None
    cycle_entry_points: list[str] | None = None


def _items(value: Any) -> Any:
    # The TypeScript sanitizer accepts an object whose values are the items.
    if isinstance(value, Mapping):
        return list(value.values())
    return value


class Blueprint(_Model):
    """A workflow graph. Build one with :func:`flowcraft.create_flow` or load JSON with
    :func:`load_blueprint`."""

    id: str = Field(min_length=1)
    nodes: list[NodeDefinition]
    edges: list[EdgeDefinition] = Field(default_factory=list)
    metadata: BlueprintMetadata | None = None

    _nodes_by_id: dict[str, NodeDefinition] | None = None

    @field_validator("nodes", "edges", mode="before")
    @classmethod
    def _accept_mappings(cls, value: Any) -> Any:
        return _items(value)

    @property
    def version(self) -> str | None:
        """``metadata.version``, used by distributed workers to refuse stale jobs."""
        return None if self.metadata is None else self.metadata.version

    def node(self, node_id: str) -> NodeDefinition:
        """The node with this id.

        Raises:
            BlueprintError: No such node.
        """
        if self._nodes_by_id is None:
            self._nodes_by_id = {n.id: n for n in self.nodes}
        try:
            return self._nodes_by_id[node_id]
        except KeyError:
            raise BlueprintError(
                f"blueprint '{self.id}' has no node '{node_id}'",
                node_id=node_id,
                blueprint_id=self.id,
            ) from None

    def check(self) -> Blueprint:
        """Check the graph's references and return ``self``.

        Raises:
            BlueprintError: Duplicate node ids, edges or fallbacks naming missing nodes.
        """
        seen: set[str] = set()
        for index, node in enumerate(self.nodes):
            if node.id in seen:
                raise BlueprintError(
                    f"blueprint '{self.id}': nodes[{index}] repeats the node id '{node.id}'",
                    node_id=node.id,
                    blueprint_id=self.id,
                    field=f"nodes[{index}].id",
                )
            seen.add(node.id)
        for index, edge in enumerate(self.edges):
            for end in ("source", "target"):
                ref = getattr(edge, end)
                if ref not in seen:
                    raise BlueprintError(
                        f"blueprint '{self.id}': edges[{index}] ({edge.source} -> {edge.target})"
                        f" has {end} '{ref}', which is not a node",
                        node_id=ref,
                        blueprint_id=self.id,
                        field=f"edges[{index}].{end}",
                    )
        for index, node in enumerate(self.nodes):
            fallback = node.config.fallback if node.config else None
            if fallback is not None and fallback not in seen:
                raise BlueprintError(
                    f"blueprint '{self.id}': node '{node.id}' names fallback '{fallback}',"
                    " which is not a node",
                    node_id=node.id,
                    blueprint_id=self.id,
                    field=f"nodes[{index}].config.fallback",
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The camelCase JSON object, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def to_json(self, *, indent: bool = False) -> str:
        """The camelCase JSON text."""
        option = orjson.OPT_INDENT_2 if indent else 0
        return orjson.dumps(self.to_dict(), option=option).decode()


def _describe_location(raw: Any, loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    current: Any = raw
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
            if isinstance(current, list) and step < len(current):
                current = current[step]
                if isinstance(current, Mapping) and isinstance(current.get("id"), str):
                    parts.append(f" (id '{current['id']}')")
            else:
                current = None
        else:
            parts.append(f".{step}" if parts else str(step))
            current = current.get(step) if isinstance(current, Mapping) else None
    return "".join(parts)


def load_blueprint(source: Blueprint | Mapping[str, Any] | str | bytes | Path) -> Blueprint:
    """Load and check a blueprint from a dict, JSON text or a JSON file.

    Args:
        source: A :class:`Blueprint`, a mapping, JSON text, or a :class:`~pathlib.Path`.

    Returns:
        The validated blueprint.

    Raises:
        BlueprintError: The JSON is malformed or the blueprint is invalid; the message names the
            bad node, edge or field.
    """
    if isinstance(source, Blueprint):
        return source.check()
    raw: Any = source
    if isinstance(source, Path):
        try:
            raw = source.read_bytes()
        except OSError as exc:
            raise BlueprintError(f"cannot read blueprint file {source}: {exc}") from exc
    if isinstance(raw, str | bytes):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BlueprintError(f"blueprint is not valid JSON: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise BlueprintError(f"a blueprint must be a JSON object, not {type(raw).__name__}")
    raw = {k: (_items(v) if k in ("nodes", "edges") else v) for k, v in raw.items()}
    try:
        blueprint = Blueprint.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _describe_location(raw, tuple(first["loc"]))
        bp_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        raise BlueprintError(
            f"invalid blueprint{f' {bp_id!r}' if bp_id else ''}: {where}: {first['msg']}",
            blueprint_id=bp_id,
            field=where,
        ) from exc
    return blueprint.check()

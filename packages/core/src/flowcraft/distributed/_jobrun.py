"""What a node sees while one distributed job runs it.

``StoreContext`` is the node's ``ctx.context``: every call goes straight to the run's
:class:`ContextStore`, so a node reads only the keys it asks for and writes deltas. ``JobRun`` is
the small part of the in-memory ``Run`` that built-in nodes use (``data``, ``pause``,
``evaluator``, ``bus``, and for subflows ``blueprints`` and ``child``); its ``data`` holds only
the keys the job loaded, and what a built-in changes in it is written back as one patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flowcraft.blueprint import Blueprint
from flowcraft.context import ChangeListener
from flowcraft.distributed._protocols import ContextStore
from flowcraft.evaluator import Evaluator
from flowcraft.events import EventBus
from flowcraft.node import PatchOperation

__all__ = ["JobRun", "StoreContext"]

_MISSING: Any = object()


class StoreContext:
    """An :class:`~flowcraft.node.AsyncContext` bound to one run of a :class:`ContextStore`.

    ``on_change`` is told of every write once the store has it (``context:change`` events).
    """

    __slots__ = ("_on_change", "_run_id", "_store")

    def __init__(
        self, store: ContextStore, run_id: str, on_change: ChangeListener | None = None
    ) -> None:
        self._store = store
        self._run_id = run_id
        self._on_change = on_change

    async def get(self, key: str, default: Any = None) -> Any:
        found = await self._store.get_many(self._run_id, [key])
        return found.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        await self._store.set(self._run_id, key, value)
        if self._on_change is not None:
            self._on_change("set", key, value)

    async def has(self, key: str) -> bool:
        return await self._store.has(self._run_id, key)

    async def delete(self, key: str) -> bool:
        existed = await self._store.delete(self._run_id, key)
        if existed and self._on_change is not None:
            self._on_change("delete", key, None)
        return existed

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return await self._store.get_many(self._run_id, keys)

    async def patch(self, operations: Iterable[PatchOperation]) -> None:
        operations = list(operations)
        await self._store.patch(self._run_id, operations)
        if self._on_change is not None:
            for op in operations:
                self._on_change(str(op["op"]), str(op["key"]), op.get("value"))

    async def to_dict(self) -> dict[str, Any]:
        return await self._store.to_dict(self._run_id)


class JobRun:
    """The ``ctx._run`` of a distributed job, for built-in nodes.

    Attributes:
        data: The context keys this job loaded; built-ins may change it.
        blueprints: The blueprints the worker can run (subflows start them).
        paused: The details passed to :meth:`pause`, when the node paused.
        child: ``(blueprint id, initial context)`` of the child run a subflow node asked for.
    """

    def __init__(
        self,
        run_id: str,
        data: dict[str, Any],
        evaluator: Evaluator,
        bus: EventBus | None,
        blueprints: Mapping[str, Blueprint],
    ) -> None:
        self.run_id = run_id
        self.data = data
        self.evaluator = evaluator
        self.bus = bus
        self.blueprints = blueprints
        self.paused: dict[str, Any] | None = None
        self.child: tuple[str, dict[str, Any]] | None = None
        self._original = dict(data)

    def pause(self, node_id: str, details: dict[str, Any]) -> None:
        """Record that the node paused (wait, sleep, webhook, subflow)."""
        self.paused = details

    def changes(self) -> list[PatchOperation]:
        """The set/delete operations a built-in made to :attr:`data`."""
        ops: list[PatchOperation] = []
        for key, value in self.data.items():
            if self._original.get(key, _MISSING) is not value:
                ops.append({"op": "set", "key": key, "value": value})
        ops.extend({"op": "delete", "key": k} for k in self._original if k not in self.data)
        return ops

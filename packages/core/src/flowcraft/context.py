"""The in-memory context and the read-only views that expressions see.

Naming rule shared by inputs and expressions: a key starting with ``_`` is read verbatim; any
other name ``k`` means the output of node ``k`` (``_outputs.k``) when that node has produced one,
else the plain context key ``k``. Node outputs are stored only under ``_outputs.<id>`` (never a
bare ``<id>`` key), so user keys are never overwritten and in-memory and distributed runs see the
same context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from flowcraft.node import PatchOperation

__all__ = ["OUTPUTS", "ContextView", "MemoryContext", "resolve_key"]

OUTPUTS = "_outputs."
_MISSING: Any = object()


def resolve_key(data: Mapping[str, Any], name: str) -> Any:
    """Read ``name`` with the naming rule of this module; None when absent."""
    if name[:1] == "_":
        return data.get(name)
    value = data.get(OUTPUTS + name, _MISSING)
    if value is _MISSING:
        return data.get(name)
    return value


class ContextView(Mapping[str, Any]):
    """A read-only mapping over context data that applies :func:`resolve_key` on lookup."""

    __slots__ = ("_data", "_extra")

    def __init__(self, data: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
        self._data = data
        self._extra = extra

    def __getitem__(self, key: str) -> Any:
        if self._extra is not None and key in self._extra:
            return self._extra[key]
        return resolve_key(self._data, key)

    def get(self, key: str, default: Any = None) -> Any:
        value = self[key]
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if self._extra is not None and key in self._extra:
            return True
        return key in self._data or (key[:1] != "_" and OUTPUTS + key in self._data)

    def __iter__(self) -> Iterator[str]:
        yield from self._data
        if self._extra is not None:
            yield from self._extra

    def __len__(self) -> int:
        return len(self._data) + (0 if self._extra is None else len(self._extra))


ChangeListener = Callable[[str, str, Any], None]


class MemoryContext:
    """An :class:`~flowcraft.node.AsyncContext` over a dict, used by the in-memory runtime."""

    __slots__ = ("data", "on_change")

    def __init__(
        self, data: dict[str, Any] | None = None, on_change: ChangeListener | None = None
    ) -> None:
        self.data: dict[str, Any] = {} if data is None else data
        self.on_change = on_change

    async def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        if self.on_change is not None:
            self.on_change("set", key, value)

    async def has(self, key: str) -> bool:
        return key in self.data

    async def delete(self, key: str) -> bool:
        existed = self.data.pop(key, _MISSING) is not _MISSING
        if existed and self.on_change is not None:
            self.on_change("delete", key, None)
        return existed

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        data = self.data
        return {k: data[k] for k in keys if k in data}

    async def patch(self, operations: Iterable[PatchOperation]) -> None:
        ops = list(operations)
        for op in ops:
            if op.get("op") not in ("set", "delete") or not isinstance(op.get("key"), str):
                raise ValueError(f"invalid patch operation {op!r}: need op set/delete and a key")
            if op["op"] == "set" and "value" not in op:
                raise ValueError(f"patch operation {op!r} sets no value")
        for op in ops:
            if op["op"] == "set":
                await self.set(op["key"], op["value"])
            else:
                await self.delete(op["key"])

    async def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

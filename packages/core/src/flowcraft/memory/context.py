"""``MemoryContextStore``: per-run contexts in this process, stored as JSON bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import orjson

from flowcraft.distributed._storage import encode_value, patch_writes
from flowcraft.node import PatchOperation

__all__ = ["MemoryContextStore"]


class MemoryContextStore:
    """A :class:`~flowcraft.distributed.ContextStore` over dicts of JSON bytes.

    Values are kept encoded so the reference backend has the same JSON semantics (and
    copy-on-read isolation) as a real one.
    """

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    async def get(self, run_id: str, key: str) -> Any:
        with self._lock:
            raw = self._runs.get(run_id, {}).get(key)
        return None if raw is None else orjson.loads(raw)

    async def set(self, run_id: str, key: str, value: Any) -> None:
        raw = encode_value(key, value)
        with self._lock:
            self._runs.setdefault(run_id, {})[key] = raw

    async def has(self, run_id: str, key: str) -> bool:
        with self._lock:
            return key in self._runs.get(run_id, {})

    async def delete(self, run_id: str, key: str) -> bool:
        with self._lock:
            return self._runs.get(run_id, {}).pop(key, None) is not None

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        return self.fields(run_id, keys)

    def fields(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        """The present ``keys``, synchronously (the hop step reads a successor's input)."""
        with self._lock:
            data = self._runs.get(run_id, {})
            found = {k: data[k] for k in keys if k in data}
        return {k: orjson.loads(v) for k, v in found.items()}

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        with self._lock:
            self.apply(run_id, sets, deletes)

    def apply(self, run_id: str, sets: dict[str, bytes], deletes: list[str]) -> None:
        """Write validated, encoded values (the caller holds the lock or is the hop step)."""
        data = self._runs.setdefault(run_id, {})
        for key in deletes:
            data.pop(key, None)
        data.update(sets)

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            data = dict(self._runs.get(run_id, {}))
        return {k: orjson.loads(v) for k, v in data.items()}

    async def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def purge(self) -> None:
        """Forget every run."""
        with self._lock:
            self._runs.clear()

"""``MemoryContextStore``: per-run contexts in this process, stored as JSON bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import orjson

from flowcraft.errors import SerializationError
from flowcraft.node import PatchOperation

__all__ = ["MemoryContextStore"]


def _encode(key: str, value: Any) -> bytes:
    # Values are kept encoded so the reference backend has the same JSON semantics (and
    # copy-on-read isolation) as a real one.
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise SerializationError(f"context key '{key}': value is not JSON: {exc}") from exc


class MemoryContextStore:
    """A :class:`~flowcraft.distributed.ContextStore` over dicts of JSON bytes."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    async def get(self, run_id: str, key: str) -> Any:
        with self._lock:
            raw = self._runs.get(run_id, {}).get(key)
        return None if raw is None else orjson.loads(raw)

    async def set(self, run_id: str, key: str, value: Any) -> None:
        raw = _encode(key, value)
        with self._lock:
            self._runs.setdefault(run_id, {})[key] = raw

    async def has(self, run_id: str, key: str) -> bool:
        with self._lock:
            return key in self._runs.get(run_id, {})

    async def delete(self, run_id: str, key: str) -> bool:
        with self._lock:
            return self._runs.get(run_id, {}).pop(key, None) is not None

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        with self._lock:
            data = self._runs.get(run_id, {})
            found = {k: data[k] for k in keys if k in data}
        return {k: orjson.loads(v) for k, v in found.items()}

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        staged: list[tuple[str, bytes | None]] = []
        for op in operations:
            kind, key = op.get("op"), op.get("key")
            if kind not in ("set", "delete") or not isinstance(key, str):
                raise ValueError(f"invalid patch operation {op!r}: need op set/delete and a key")
            if kind == "set":
                if "value" not in op:
                    raise ValueError(f"patch operation {op!r} sets no value")
                staged.append((key, _encode(key, op["value"])))
            else:
                staged.append((key, None))
        with self._lock:
            data = self._runs.setdefault(run_id, {})
            for key, raw in staged:
                if raw is None:
                    data.pop(key, None)
                else:
                    data[key] = raw

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

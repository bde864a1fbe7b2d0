"""``MemoryCoordinationStore``: atomic keys with TTLs in this process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["MemoryCoordinationStore", "Step"]


class MemoryCoordinationStore:
    """A :class:`~flowcraft.distributed.CoordinationStore` over a dict.

    Every operation holds one lock, so it is atomic for tasks and threads alike. Expired keys
    are dropped when touched.
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._data[key]
            return None
        return entry[0]

    async def increment(self, key: str, ttl: float) -> int:
        with self._lock:
            value = int(self._live(key) or 0) + 1
            self._data[key] = (value, time.monotonic() + ttl)
            return value

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._data[key] = (value, time.monotonic() + ttl)
            return True

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        with self._lock:
            members = self._live(key)
            if not isinstance(members, set):
                members = set()
            members.add(member)
            self._data[key] = (members, time.monotonic() + ttl)
            return len(members)

    async def remove_from_set(self, key: str, member: str) -> int:
        with self._lock:
            members = self._live(key)
            if not isinstance(members, set):
                return 0
            members.discard(member)
            return len(members)

    async def members(self, key: str) -> set[str]:
        with self._lock:
            members = self._live(key)
            return set(members) if isinstance(members, set) else set()

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        return [await self.get(k) for k in keys], [await self.members(k) for k in set_keys]

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        with self._lock:
            value = self._live(key)
            if value is None:
                return False
            self._data[key] = (value, time.monotonic() + ttl)
            return True

    async def get(self, key: str) -> str | None:
        with self._lock:
            value = self._live(key)
            if value is None:
                return None
            if isinstance(value, set):
                return ",".join(sorted(value))
            return str(value)

    async def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    async def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    @contextlib.contextmanager
    def step(self) -> Iterator[Step]:
        """Several operations as one atomic step (the reference hop step uses it)."""
        with self._lock:
            yield Step(self)

    def purge(self) -> None:
        """Forget every key."""
        with self._lock:
            self._data.clear()


class Step:
    """Synchronous operations inside :meth:`MemoryCoordinationStore.step` (lock held)."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryCoordinationStore) -> None:
        self._store = store

    def get(self, key: str) -> str | None:
        value = self._store._live(key)
        return None if value is None or isinstance(value, set) else str(value)

    def members(self, key: str) -> set[str]:
        value = self._store._live(key)
        return set(value) if isinstance(value, set) else set()

    def set(self, key: str, value: str, ttl: float) -> None:
        self._store._data[key] = (value, time.monotonic() + ttl)

    def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        if self._store._live(key) is not None:
            return False
        self.set(key, value, ttl)
        return True

    def add(self, key: str, member: str, ttl: float) -> int:
        members = self.members(key)
        members.add(member)
        self._store._data[key] = (members, time.monotonic() + ttl)
        return len(members)

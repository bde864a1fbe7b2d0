"""Firestore requests of one event-loop tick, sent together.

A worker's jobs move in step: they read their inputs in the same tick and write their results
in the same tick. Firestore charges each request a fixed cost whatever it carries (measured on
the emulator: one ``Commit`` of one document about 1 ms of its serialised time, of 32
documents about 4 ms), so a tick's patches go out as one batched write and its reads as one
``BatchGetDocuments``:

* ``Writes``: callers' write lists merged into batches of at most 500 writes and 9 MiB, never
  two writes of one document in a batch (a caller whose writes would break either starts the
  next batch). A batch is atomic, so each caller's writes still apply all or nothing; a failed
  batch fails each of its callers, who retry their own writes.
* ``Reads``: every document asked for in a tick, read in one call (at most 500 per call);
  each caller gets the snapshots of its own references.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot

__all__ = ["MAX_BATCH_BYTES", "MAX_WRITES", "Reads", "Write", "Writes"]

MAX_WRITES = 500
"""Writes per batch (Firestore's limit on a commit)."""
MAX_BATCH_BYTES = 9 * 1024 * 1024
"""Bytes per batch, under the 10 MiB limit of a request."""
_MAX_READS = 500

Write = tuple[AsyncDocumentReference, dict[str, Any] | None, int]
"""A document to set (its data) or delete (None), and its size in bytes."""

Snapshot = DocumentSnapshot[Any]


class _Tick(ABC):
    """Callers queued in this tick, grouped into requests at its end."""

    def __init__(self) -> None:
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _queue(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) == 1:
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        pending, self._pending = self._pending, []
        for group in self._groups(pending):
            task = asyncio.ensure_future(self._send_group(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @abstractmethod
    def _groups(
        self, pending: list[tuple[Any, asyncio.Future[Any]]]
    ) -> list[list[tuple[Any, asyncio.Future[Any]]]]:
        """The callers split into requests."""

    @abstractmethod
    async def _send(self, items: list[Any]) -> list[Any]:
        """One request for ``items``; each one's reply."""

    async def _send_group(self, group: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send([item for item, _ in group])
        except asyncio.CancelledError:
            for _, future in group:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(group, replies, strict=True):
            if not future.done():
                future.set_result(reply)

    def cancel(self) -> None:
        """Stop the requests in flight (their callers see the cancellation)."""
        for task in list(self._tasks):
            task.cancel()


class Writes(_Tick):
    """One tick's write lists, as few batched writes.

    Args:
        client: The Firestore client of the moment (it is created lazily).
    """

    def __init__(self, client: Callable[[], firestore.AsyncClient]) -> None:
        super().__init__()
        self._client = client

    def fits(self, writes: Sequence[Write]) -> bool:
        """Whether ``writes`` fit in one batch (then :meth:`commit` takes them)."""
        return len(writes) <= MAX_WRITES and sum(w[2] for w in writes) <= MAX_BATCH_BYTES

    async def commit(self, writes: list[Write]) -> None:
        """Write ``writes`` atomically, in a batch with other callers' of this tick."""
        await self._queue(writes)

    def _groups(
        self, pending: list[tuple[Any, asyncio.Future[Any]]]
    ) -> list[list[tuple[Any, asyncio.Future[Any]]]]:
        groups: list[list[tuple[Any, asyncio.Future[Any]]]] = []
        count = size = 0
        paths: set[str] = set()
        for entry in pending:
            writes: list[Write] = entry[0]
            mine = {ref.path for ref, _, _ in writes}
            weight = sum(w[2] for w in writes)
            if (
                not groups
                or count + len(writes) > MAX_WRITES
                or size + weight > MAX_BATCH_BYTES
                or not paths.isdisjoint(mine)
            ):
                groups.append([])
                count = size = 0
                paths = set()
            groups[-1].append(entry)
            count += len(writes)
            size += weight
            paths |= mine
        return groups

    async def _send(self, items: list[Any]) -> list[Any]:
        batch = self._client().batch()
        for writes in items:
            for ref, data, _ in writes:
                if data is None:
                    batch.delete(ref)
                else:
                    batch.set(ref, data)
        await batch.commit()
        return [None] * len(items)


class Reads(_Tick):
    """One tick's document reads, as one batch get.

    Args:
        client: The Firestore client of the moment (it is created lazily).
    """

    def __init__(self, client: Callable[[], firestore.AsyncClient]) -> None:
        super().__init__()
        self._client = client

    async def get(self, refs: list[AsyncDocumentReference]) -> list[Snapshot]:
        """The snapshots of ``refs`` (missing documents too), in their order."""
        found: list[Snapshot] = await self._queue(refs)
        return found

    def _groups(
        self, pending: list[tuple[Any, asyncio.Future[Any]]]
    ) -> list[list[tuple[Any, asyncio.Future[Any]]]]:
        groups: list[list[tuple[Any, asyncio.Future[Any]]]] = []
        count = 0
        for entry in pending:
            size = len(entry[0])
            if not groups or count + size > _MAX_READS:
                groups.append([])
                count = 0
            groups[-1].append(entry)
            count += size
        return groups

    async def _send(self, items: list[Any]) -> list[Any]:
        unique: dict[str, AsyncDocumentReference] = {}
        for refs in items:
            for ref in refs:
                unique.setdefault(ref.path, ref)
        snapshots: dict[str, Snapshot] = {}
        async for snapshot in self._client().get_all(list(unique.values())):
            snapshots[snapshot.reference.path] = snapshot
        return [[snapshots[ref.path] for ref in refs] for refs in items]

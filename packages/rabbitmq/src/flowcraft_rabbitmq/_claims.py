"""At most one live holder per job: PostgreSQL session advisory locks keyed by the job body.

Core's generic path may put a second copy of a job on the queue while the first still runs:
a job redelivered after its worker died between enqueueing a successor and acking enqueues
that successor again. Both copies would run at once. A worker therefore claims a job before
handing it out, with a session lock on a hash of the queue name and body; a copy whose claim
is held elsewhere is dropped (acked), which is safe because the first copy is unacked (or
parked) and comes back by itself if its holder dies: the holder's session ends with its
process, which releases the lock at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from psycopg import AsyncConnection

from flowcraft_rabbitmq._pg import translated
from flowcraft_rabbitmq.settings import RabbitSettings

__all__ = ["Claims"]

_log = logging.getLogger("flowcraft.rabbitmq")


def claim_key(queue: str, body: bytes) -> int:
    """A signed 64-bit advisory-lock key for a job of ``queue``."""
    digest = hashlib.blake2b(body, digest_size=8, person=queue.encode()[:16]).digest()
    return int.from_bytes(digest, "big", signed=True)


class Claims:
    """One PostgreSQL session holding this process's claims on the jobs it runs."""

    def __init__(self, settings: RabbitSettings) -> None:
        self._settings = settings
        self._conn: AsyncConnection[tuple[object, ...]] | None = None
        self._held: set[int] = set()
        self._releasing: set[int] = set()
        self._flushing: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._unlock = "SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) AS k"

    async def _connection(self) -> AsyncConnection[tuple[object, ...]]:
        conn = self._conn
        if conn is None or conn.closed:
            # A new session holds none of the old one's locks: they went with it.
            self._held.clear()
            async with translated:
                conn = self._conn = await AsyncConnection.connect(
                    self._settings.database_url,
                    autocommit=True,
                    application_name=self._settings.client_name,
                )
        return conn

    async def claim(self, keys: list[int]) -> list[bool]:
        """Whether each job is now this process's to run (False: a live holder has it)."""
        async with self._lock:
            fresh = [k for k in dict.fromkeys(keys) if k not in self._held]
            won: set[int] = set()
            if fresh:
                conn = await self._connection()
                async with translated:
                    cursor = await conn.execute(
                        "SELECT k FROM unnest(%s::bigint[]) AS k WHERE pg_try_advisory_lock(k)",
                        (fresh,),
                    )
                    won = {int(str(row[0])) for row in await cursor.fetchall()}
            self._held |= won
        # A key claimed twice in one batch is won by its first copy only.
        out = []
        for key in keys:
            out.append(key in won)
            won.discard(key)
        return out

    def release(self, key: int) -> None:
        """Give a claim up (its job was settled), soon: claims given up meanwhile go in one
        statement, off the path of the job that settled. Until then a copy of the job is
        dropped, which is safe since the job is settled."""
        if key not in self._held:
            return
        self._releasing.add(key)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._releasing:
            keys, self._releasing = self._releasing, set()
            async with self._lock:
                keys &= self._held
                self._held -= keys
                conn = self._conn
                if not keys or conn is None or conn.closed:
                    continue
                try:
                    async with translated:
                        await conn.execute(self._unlock, (list(keys),))
                except Exception as exc:
                    # The session is broken; it ends, and its locks with it.
                    _log.warning("could not release claims (%s); closing their session", exc)
                    await self.close()
                    return

    def drop(self) -> None:
        """Forget every claim without releasing it (an abandoned worker's session ends
        with :meth:`close`)."""
        self._held.clear()
        self._releasing.clear()

    async def close(self) -> None:
        """End the session, which releases every claim."""
        conn, self._conn = self._conn, None
        self._held.clear()
        self._releasing.clear()
        flushing, self._flushing = self._flushing, None
        if flushing is not None and flushing is not asyncio.current_task():
            flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flushing
        if conn is not None:
            await conn.close()

"""``PostgresResultChannel``: final results in a runs row, waiters woken by ``LISTEN``.

The row is written once (``INSERT … ON CONFLICT DO NOTHING``) in the same transaction as the
``NOTIFY`` (delivered at commit, so a woken waiter finds the result) and as the expiry of the
run's context rows. The payload is the run id only: ``NOTIFY`` payloads must stay under 8,000
bytes, results need not. Every adapter of a process shares one ``LISTEN`` connection per
database and channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

import orjson
from psycopg import AsyncConnection, sql

from flowcraft.backend import Woken, ts_status
from flowcraft.result import WorkflowResult
from flowcraft_rabbitmq._pg import Pool

__all__ = ["PostgresResultChannel"]

_log = logging.getLogger("flowcraft.rabbitmq")
_BACKOFF_MAX = 2.0


class PostgresResultChannel:
    """A :class:`~flowcraft.backend.ResultChannel` on PostgreSQL ``NOTIFY``/``LISTEN``."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        ttl = f"now() + make_interval(secs => {int(pool.settings.state_ttl_seconds)})"
        self._final = pool.query(
            "WITH stored AS ("
            " INSERT INTO {runs} (run_id, status, status_data, expires_at)"
            f" VALUES (%(run)s, %(status)s, %(data)s::jsonb, {ttl})"
            " ON CONFLICT (run_id) DO NOTHING),"
            f" kept AS (UPDATE {{context}} SET expires_at = {ttl} WHERE run_id = %(run)s)"
            " SELECT pg_notify(%(channel)s, %(run)s)"
        )
        self._wake = "SELECT pg_notify(%s, %s)"
        self._woken: Woken | None = None

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Store the TypeScript status record (final results) and wake every waiter."""
        channel = self._pool.channel
        if result is None or result.status == "awaiting":
            await self._pool.fetch(self._wake, (channel, run_id))
            return
        data = orjson.dumps(ts_status(result)).decode()
        params = {"run": run_id, "status": result.status, "data": data, "channel": channel}
        await self._pool.fetch(self._final, params)

    async def listen(self, woken: Woken) -> None:
        """Join this process's listener of the channel; return once it listens."""
        if self._woken is None:
            self._woken = woken
            await _Listener.join(self._pool, woken)

    async def close(self) -> None:
        """Leave the listener (closed when its last adapter leaves)."""
        woken, self._woken = self._woken, None
        if woken is not None:
            await _Listener.leave(self._pool, woken)


class _Listener:
    """One ``LISTEN`` connection of this process, shared by every adapter on it."""

    _all: ClassVar[dict[tuple[str, str], _Listener]] = {}

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.woken: list[Woken] = []
        self._listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._run())

    @classmethod
    async def join(cls, pool: Pool, woken: Woken) -> None:
        key = (pool.settings.database_url, pool.channel)
        listener = cls._all.get(key)
        if listener is None or listener._task.done():
            listener = cls._all[key] = cls(pool)
        listener.woken.append(woken)
        try:
            await asyncio.shield(listener._listening)
        except BaseException:
            await cls.leave(pool, woken)
            raise

    @classmethod
    async def leave(cls, pool: Pool, woken: Woken) -> None:
        key = (pool.settings.database_url, pool.channel)
        listener = cls._all.get(key)
        if listener is None:
            return
        with contextlib.suppress(ValueError):
            listener.woken.remove(woken)
        if not listener.woken:
            del cls._all[key]
            listener._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener._task

    def _wake(self, run_id: str | None) -> None:
        for woken in list(self.woken):
            woken(run_id)

    async def _run(self) -> None:
        pause = 0.05
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._pool.channel))
        while True:
            conn: AsyncConnection[tuple[object, ...]] | None = None
            try:
                conn = await self._pool.listen_connection()
                await conn.execute(listen)
                if self._listening.done():
                    # Notifications sent while we were away are lost: waiters look again.
                    self._wake(None)
                else:
                    self._listening.set_result(None)
                pause = 0.05
                async for notify in conn.notifies():
                    self._wake(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._listening.done():
                    self._listening.set_exception(exc)
                    return
                _log.warning("result listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(pause)
                pause = min(_BACKOFF_MAX, pause * 2)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

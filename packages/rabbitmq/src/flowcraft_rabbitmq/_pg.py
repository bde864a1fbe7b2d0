"""The PostgreSQL connection pool the stores share, its schema and its error translation.

Schema changes are additive and idempotent (``CREATE … IF NOT EXISTS``, ``ADD COLUMN IF NOT
EXISTS``): every adapter applies :data:`SCHEMA` on first use, so a newer release migrates the
tables in place as its first worker starts, and older workers keep working on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import AsyncConnection, sql

from flowcraft.backend import ConnectionFailed, translate_errors
from flowcraft_rabbitmq.settings import RabbitSettings

__all__ = ["Pool", "translated"]

_log = logging.getLogger("flowcraft.rabbitmq")
T = TypeVar("T")

translated = translate_errors(
    "postgresql",
    retryable=(psycopg.OperationalError, psycopg_pool.PoolTimeout, OSError),
    errors=(psycopg.Error,),
)

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {context} (
    run_id text NOT NULL,
    key text NOT NULL,
    value jsonb NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS {context_expiry} ON {context} (expires_at);
CREATE TABLE IF NOT EXISTS {runs} (
    run_id text PRIMARY KEY,
    status text NOT NULL,
    status_data jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {runs_expiry} ON {runs} (expires_at);
CREATE TABLE IF NOT EXISTS {coordination} (
    key text PRIMARY KEY,
    value text,
    members text[],
    token text,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {coordination_expiry} ON {coordination} (expires_at);
"""

_RETRIES = 5
_BACKOFF = 0.05


class Pool:
    """One adapter's PostgreSQL connections (autocommit; a transaction where a write needs
    several statements), opened on first use, with the schema created then."""

    def __init__(self, settings: RabbitSettings) -> None:
        self.settings = settings
        schema = sql.Identifier(settings.schema)
        prefix = settings.table_prefix
        self.names = {
            "schema": schema,
            **{
                table: sql.Identifier(settings.schema, f"{prefix}{table}")
                for table in ("context", "runs", "coordination")
            },
            **{
                f"{table}_expiry": sql.Identifier(f"{prefix}{table}_expiry")
                for table in ("context", "runs", "coordination")
            },
        }
        self.channel = f"{settings.schema}.{prefix}runs"
        """The ``NOTIFY`` channel of final results (payload: the run id)."""
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None

    def query(self, text: str) -> str:
        """``text`` with ``{context}``, ``{runs}``, ``{coordination}`` and ``{schema}``
        replaced by their quoted names."""
        return sql.SQL(text).format(**self.names).as_string(None)

    async def _open(self) -> None:
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._ready)
        except BaseException:
            if self._ready.done():
                self._ready = None
            raise

    async def _start(self) -> None:
        # A closed psycopg pool cannot be opened again: each start makes a new one.
        pool = psycopg_pool.AsyncConnectionPool(
            self.settings.database_url,
            min_size=1,
            max_size=self.settings.pool_size,
            kwargs={"autocommit": True, "application_name": self.settings.client_name},
            open=False,
            reconnect_timeout=60,
        )
        async with translated:
            try:
                await pool.open(wait=True, timeout=10)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            # Concurrent first starts would race on CREATE … IF NOT EXISTS (it is not atomic in
            # the catalog): one at a time, across processes.
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7170301)")
                await conn.execute(self.query(SCHEMA))
        if self.settings.cleanup_seconds > 0:
            self._cleanup = asyncio.ensure_future(self._clean())

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[tuple[object, ...]]]:
        """A pooled connection; driver errors come out as Flowcraft's."""
        await self._open()
        assert self._pool is not None
        async with translated, self._pool.connection() as conn:
            yield conn

    async def run(self, step: Callable[[AsyncConnection[tuple[object, ...]]], Awaitable[T]]) -> T:
        """``step`` on a pooled connection, tried again on a lost connection (a server
        restart): steps are written to be safe to repeat."""
        pause = _BACKOFF
        for attempt in range(_RETRIES):
            try:
                async with self.connection() as conn:
                    return await step(conn)
            except ConnectionFailed:
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    async def _clean(self) -> None:
        delete = [
            self.query(f"DELETE FROM {{{table}}} WHERE expires_at < now()")
            for table in ("context", "runs", "coordination")
        ]
        while True:
            await asyncio.sleep(self.settings.cleanup_seconds)
            try:
                async with self.connection() as conn:
                    for statement in delete:
                        await conn.execute(statement)
            except Exception as exc:
                _log.warning("deleting expired rows failed (%s); trying again later", exc)

    async def listen_connection(self) -> AsyncConnection[tuple[object, ...]]:
        """A connection of its own (not pooled), for ``LISTEN``."""
        await self._open()
        async with translated:
            return await AsyncConnection.connect(
                self.settings.database_url,
                autocommit=True,
                application_name=self.settings.client_name,
            )

    async def close(self) -> None:
        """Stop the cleanup and close every pooled connection; safe to call twice."""
        task, self._cleanup = self._cleanup, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

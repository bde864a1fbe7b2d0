"""The PostgreSQL connection pool the stores share, its schema and its error translation.

Schema changes are additive and idempotent (``CREATE … IF NOT EXISTS``, ``ADD COLUMN IF NOT
EXISTS``): every adapter applies :data:`SCHEMA` on first use, so a newer release migrates the
tables in place as its first worker starts, and older workers keep working on them.

Statements go through :meth:`Pool.fetch`, which sends the statements queued in one event-loop
tick together, pipelined on one connection: a burst (thousands of waits and starts in one
client, a worker's concurrent jobs) costs a round trip per batch instead of per statement, and
a pooled connection per batch instead of per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import AsyncConnection, sql

from flowcraft.backend import ConnectionFailed, translate_errors
from flowcraft_rabbitmq.settings import RabbitSettings

__all__ = ["Pool", "translated"]

_log = logging.getLogger("flowcraft.rabbitmq")

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
CREATE OR REPLACE FUNCTION {sadd}(k text, m text, expires timestamptz) RETURNS text[]
LANGUAGE sql AS $$
    INSERT INTO {coordination} AS c (key, value, members, token, expires_at)
    VALUES (k, NULL, ARRAY[m], NULL, expires)
    ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = EXCLUDED.expires_at,
        members = CASE WHEN c.expires_at <= now() OR c.members IS NULL THEN EXCLUDED.members
            WHEN m = ANY(c.members) THEN c.members ELSE array_append(c.members, m) END
    RETURNING members
$$;
CREATE OR REPLACE FUNCTION {setnx}(k text, v text, t text, expires timestamptz) RETURNS boolean
LANGUAGE sql AS $$
    WITH won AS (
        INSERT INTO {coordination} AS c (key, value, members, token, expires_at)
        VALUES (k, v, NULL, t, expires)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, members = NULL,
            token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
        WHERE c.expires_at <= now()
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM won)
$$;
-- A hop (flowcraft.backend.Hop) in one statement, step for step as flowcraft.memory.hop: NULL
-- when the result is stored already or the run has spliced nodes (nothing changed), else the
-- outcome followed by the members of the targets whose fences it won. Targets come sorted by
-- member and context keys sorted, so concurrent hops lock shared rows in one order.
CREATE OR REPLACE FUNCTION {hop}(
    hop jsonb, keys text[], vals text[], deletes text[], state_ttl float8
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => (hop->>'ttl')::float8);
    target jsonb;
    fired text[] := ARRAY[]::text[];
    resolved text[];
    done integer;
    enqueued integer;
BEGIN
    PERFORM 1 FROM {coordination} c
    WHERE c.key = hop->>'dynamic' AND c.expires_at > now() AND cardinality(c.members) > 0;
    IF FOUND OR NOT {setnx}(hop->>'result_key', hop->>'record', hop->>'token', expires) THEN
        RETURN NULL;
    END IF;
    DELETE FROM {context} WHERE run_id = hop->>'run' AND key = ANY(deletes);
    INSERT INTO {context} (run_id, key, value, expires_at)
    SELECT hop->>'run', k, v::jsonb, now() + make_interval(secs => state_ttl)
    FROM unnest(keys, vals) AS w(k, v)
    ON CONFLICT (run_id, key)
    DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at;
    FOR target IN SELECT jsonb_array_elements(hop->'targets') LOOP
        PERFORM {sadd}(target->>'taken', target->>'mark', expires);
        PERFORM {sadd}(target->>'resolved', target->>'source', expires);
    END LOOP;
    FOR target IN SELECT jsonb_array_elements(hop->'targets') LOOP
        SELECT c.members INTO resolved FROM {coordination} c WHERE c.key = target->>'resolved';
        IF NOT ARRAY(SELECT jsonb_array_elements_text(target->'preds'))
                <@ coalesce(resolved, ARRAY[]::text[]) THEN
            PERFORM {sadd}(hop->>'pending', target->>'member', expires);
            CONTINUE;
        END IF;
        PERFORM {sadd}(hop->>'enqueued', target->>'member', expires);
        IF {setnx}(target->>'fence', 'fired:' || (hop->>'member'), hop->>'token', expires) THEN
            fired := fired || (target->>'member');
        ELSIF EXISTS (SELECT 1 FROM {coordination} c WHERE c.key = target->>'fence'
                AND c.expires_at > now() AND c.value = 'skipped') THEN
            PERFORM {sadd}(hop->>'done', target->>'member', expires);
        END IF;
    END LOOP;
    done := cardinality({sadd}(hop->>'done', hop->>'member', expires));
    enqueued := cardinality({sadd}(hop->>'enqueued', hop->>'member', expires));
    RETURN array_prepend(
        CASE WHEN done >= enqueued THEN 'quiescent' ELSE 'applied' END, fired);
END
$$;
"""

_RETRIES = 5
_BACKOFF = 0.05
_BATCH = 64
"""Most statements in one pipelined round trip."""

Params = Sequence[Any] | Mapping[str, Any]
Rows = list[tuple[Any, ...]]
_Queued = tuple[str, Params, "asyncio.Future[Rows]"]


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
            **{
                function: sql.Identifier(settings.schema, f"{prefix}{function}")
                for function in ("sadd", "setnx", "hop")
            },
        }
        self.channel = f"{settings.schema}.{prefix}runs"
        """The ``NOTIFY`` channel of final results (payload: the run id)."""
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._pending: list[_Queued] = []
        self._kicked = False
        self._senders: set[asyncio.Task[None]] = set()
        self._starting = 0

    def query(self, text: str) -> str:
        """``text`` with ``{context}``, ``{runs}``, ``{coordination}``, ``{schema}`` and the
        functions' names (``{hop}``, …) replaced by their quoted names."""
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
            await self._migrate(pool)
        if self.settings.cleanup_seconds > 0:
            self._cleanup = asyncio.ensure_future(self._clean())

    async def _migrate(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        """Apply :data:`SCHEMA` unless this release applied it already (its digest is the hop
        function's comment).

        Not on every start: ``CREATE INDEX IF NOT EXISTS`` share-locks its table even when
        the index exists, so a starting worker's DDL deadlocked with running hops (which
        write the coordination and context tables in one transaction), and every ``CREATE OR
        REPLACE FUNCTION`` makes each session re-plan the hop function. When it does run, a
        deadlock rolls it back whole and it is tried again.
        """
        ddl = self.query(SCHEMA)
        digest = hashlib.blake2b(ddl.encode(), digest_size=12).hexdigest()
        hop = sql.Identifier(self.settings.schema, f"{self.settings.table_prefix}hop")
        signature = sql.SQL("{}(jsonb, text[], text[], text[], float8)").format(hop)
        current = sql.SQL("SELECT obj_description(to_regprocedure({}), 'pg_proc') = {}").format(
            sql.Literal(signature.as_string(None)), sql.Literal(digest)
        )
        mark = sql.SQL("COMMENT ON FUNCTION {} IS {}").format(signature, sql.Literal(digest))
        async with pool.connection() as conn:
            row = await (await conn.execute(current)).fetchone()
            if row is not None and row[0]:
                return
            pause = _BACKOFF
            for attempt in range(_RETRIES):
                try:
                    # Concurrent first starts would race on CREATE … IF NOT EXISTS (it is not
                    # atomic in the catalog): one at a time, across processes.
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(7170301)")
                        await conn.execute(ddl)
                        await conn.execute(mark)
                    return
                except psycopg.errors.DeadlockDetected:
                    if attempt == _RETRIES - 1:
                        raise
                    await asyncio.sleep(pause)
                    pause *= 2

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[tuple[object, ...]]]:
        """A pooled connection; driver errors come out as Flowcraft's."""
        await self._open()
        assert self._pool is not None
        async with translated, self._pool.connection() as conn:
            yield conn

    async def fetch(self, statement: str, params: Params = ()) -> Rows:
        """The rows of one statement (none for a statement that returns none), sent with the
        others queued in this tick.

        Each statement is a transaction of its own, as if sent alone; one that fails is run
        again alone and its caller gets the error. A batch whose connection drops is sent
        again on a new one (statements are written to be safe to repeat).

        Raises:
            ConnectionFailed: PostgreSQL could not be reached in :data:`_RETRIES` attempts.
            AdapterError: The statement failed.
        """
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        self._pending.append((statement, params, future))
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        self._kicked = False
        # A sender takes its batch when it starts; more start while the ones starting would
        # leave statements behind, up to one per pooled connection.
        while (
            self._starting * _BATCH < len(self._pending)
            and len(self._senders) < self.settings.pool_size
        ):
            self._starting += 1
            task = asyncio.ensure_future(self._send())
            self._senders.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._senders.discard(task)
        if self._pending and not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._kick)

    async def _send(self) -> None:
        self._starting -= 1
        batch = [item for item in self._pending[:_BATCH] if not item[2].done()]
        del self._pending[:_BATCH]
        if not batch:
            return
        try:
            pause = _BACKOFF
            for attempt in range(_RETRIES):
                try:
                    async with self.connection() as conn:
                        await _execute(conn, batch)
                    return
                except ConnectionFailed:
                    if attempt == _RETRIES - 1:
                        raise
                    await asyncio.sleep(pause)
                    pause *= 2
                    await self._discard_broken()
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _discard_broken(self) -> None:
        # After a server restart every idle connection of the pool is dead, and the pool
        # hands them out unchecked: the next attempt would fail on the next dead one.
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.check()

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
        for sender in list(self._senders):
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        for _, _, future in self._pending:
            future.cancel()
        self._pending.clear()
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _execute(conn: AsyncConnection[tuple[object, ...]], batch: list[_Queued]) -> None:
    """Run ``batch`` on ``conn`` and settle its futures; raise only when the connection broke."""
    alone = batch
    if len(batch) > 1:
        cursors = [conn.cursor() for _ in batch]
        try:
            async with conn.pipeline() as pipeline:
                for cursor, (statement, params, _) in zip(cursors, batch, strict=True):
                    try:
                        # Not prepared: in a pipeline psycopg marks a statement prepared
                        # before the server confirms it, which a failure before it undoes.
                        await cursor.execute(statement, params, prepare=False)
                    except psycopg.Error:
                        # An earlier statement's error, surfacing here; this one is queued.
                        if conn.broken:
                            raise
                    # A Sync after every statement: each is a transaction of its own, as
                    # when sent alone, so batches of different connections never wait on
                    # each other's row locks (or deadlock), and an error stays with its
                    # statement. psycopg has no public call that queues a Sync without
                    # waiting for the results; test_batches.py pins the behaviour.
                    pipeline._enqueue_sync()
                await pipeline.sync()
        except psycopg.Error:
            if conn.broken:
                raise
        alone = []
        for cursor, item in zip(cursors, batch, strict=True):
            if cursor.pgresult is None:
                # It failed (its cursor never got a result): alone again, for its own error.
                alone.append(item)
                continue
            rows = await cursor.fetchall() if cursor.description is not None else []
            if not item[2].done():
                item[2].set_result(rows)
    for statement, params, future in alone:
        if future.done():
            continue
        try:
            rows = await _one(conn, statement, params)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            future.set_exception(_translated_error(exc))
        else:
            future.set_result(rows)


async def _one(conn: AsyncConnection[tuple[object, ...]], statement: str, params: Params) -> Rows:
    pause = _BACKOFF
    for attempt in range(_RETRIES):
        try:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchall() if cursor.description is not None else []
        except psycopg.errors.TransactionRollback:
            # A deadlock or serialization failure rolled the statement back: safe to repeat.
            if attempt == _RETRIES - 1 or conn.broken:
                raise
            await asyncio.sleep(pause)
            pause *= 2
    raise AssertionError("unreachable")


def _translated_error(exc: psycopg.Error) -> BaseException:
    try:
        with translated:
            raise exc
    except BaseException as error:
        return error
    raise AssertionError("unreachable")

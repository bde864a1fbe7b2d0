"""``CassandraContextStore``: one row per context key, ``(run_id, key) -> JSON text``.

A run is one partition, so a patch is one logged batch inside it (atomic and isolated on the
replica) and no write ever rewrites the whole context. Every row carries the TTL of
``settings.ttl_seconds``. cassandra-driver has no asyncio API: its ``execute_async`` futures
complete on the driver's reactor thread (libev where the wheel has it) and are handed to the
event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
from cassandra import (
    ConsistencyLevel,
    DriverException,
    OperationTimedOut,
    RequestExecutionException,
)
from cassandra import Unavailable as _Unavailable
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
)
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from flowcraft.backend import decode_value, encode_value, patch_writes, translate_errors
from flowcraft.node import PatchOperation
from flowcraft_kafka.settings import KafkaSettings

__all__ = ["CassandraContextStore", "CassandraSession"]

_T = TypeVar("_T")

translated = translate_errors(
    "cassandra",
    retryable=(NoHostAvailable, OperationTimedOut, _Unavailable, ConnectionException),
    errors=(DriverException, RequestExecutionException),
)
"""Cassandra driver errors as Flowcraft's (one instance wraps every request)."""


def _connection_class() -> Any:
    # libev measured 1.7x the asyncio reactor here; wheels without it fall back.
    try:
        from cassandra.io.libevreactor import LibevConnection
    except ImportError:
        return None
    return LibevConnection


class CassandraSession:
    """One driver session per adapter, connected on first use (schema created if missing).

    Args:
        settings: Contact points, keyspace and table names.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._cluster: Cluster | None = None
        self._session: Any = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._connecting = asyncio.Lock()
        self._up = _HostsUp()

    async def session(self) -> Any:
        """The connected driver session."""
        if self._session is None:
            async with self._connecting:
                if self._session is None:
                    async with translated:
                        self._session = await asyncio.to_thread(self._connect)
        return self._session

    def _connect(self) -> Any:
        settings = self.settings
        profile = ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=settings.local_dc),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            request_timeout=settings.request_timeout,
        )
        options: dict[str, Any] = {}
        connection_class = _connection_class()
        if connection_class is not None:
            options["connection_class"] = connection_class
        cluster = Cluster(
            [p.strip() for p in settings.contact_points.split(",") if p.strip()],
            port=settings.cassandra_port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            application_name=settings.name,
            connect_timeout=settings.request_timeout,
            control_connection_timeout=settings.request_timeout,
            # The driver's default backs off up to 10 minutes: a node back after a restart
            # would wait that long for its clients.
            reconnection_policy=ExponentialReconnectionPolicy(0.2, 2.0),
            **options,
        )
        cluster.register_listener(self._up)
        self._cluster = cluster
        session = cluster.connect()
        if settings.create_schema:
            for statement in _schema(settings):
                session.execute(statement, timeout=60)
        return session

    async def prepared(self, name: str, cql: str) -> PreparedStatement:
        """``cql`` prepared once per session (keyspace and tables already substituted)."""
        statement = self._prepared.get(name)
        if statement is None:
            session = await self.session()
            async with translated:
                statement = await self._available(lambda: asyncio.to_thread(session.prepare, cql))
            self._prepared[name] = statement
        return statement

    async def execute(self, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
        """Every row of ``statement`` (all pages), awaited on the event loop."""
        session = await self.session()
        async with translated:
            return await self._available(lambda: self._execute(session, statement, params))

    async def _available(self, request: Callable[[], Awaitable[_T]]) -> _T:
        # With every node marked down the driver fails a request at once, also in the moment
        # after a node came back and before the driver reconnected: wait for a node to be up
        # (the driver's host listener says so) within the request timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout
        while True:
            self._up.arm(loop)
            try:
                return await request()
            except NoHostAvailable:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                cluster = self._cluster
                if cluster is not None and any(h.is_up for h in cluster.metadata.all_hosts()):
                    # Up, its connection pool still opening.
                    await asyncio.sleep(min(0.05, left))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._up.wait(), left)

    async def _execute(
        self, session: Any, statement: Any, params: Sequence[Any] | None
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        future = session.execute_async(statement, params)

        def page(result: Any) -> None:
            if result:
                rows.extend(result)
            if future.has_more_pages:
                future.start_fetching_next_page()
            else:
                _call(loop, _set, done, rows)

        def failed(exc: BaseException) -> None:
            _call(loop, _fail, done, exc)

        future.add_callbacks(page, failed)
        return await done

    async def close(self) -> None:
        """Shut the cluster connection down; safe to call twice."""
        cluster, self._cluster = self._cluster, None
        self._session = None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)


class _HostsUp:
    """Wakes requests waiting for a node to come back: a driver host-state listener (the
    driver calls it on its threads)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop or self._event is None:
            self._loop, self._event = loop, asyncio.Event()
        self._event.clear()

    async def wait(self) -> None:
        assert self._event is not None
        await self._event.wait()

    def _wake(self) -> None:
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            _call(loop, event.set)

    def on_up(self, host: Any) -> None:
        self._wake()

    def on_add(self, host: Any) -> None:
        self._wake()

    def on_down(self, host: Any) -> None:
        return

    def on_remove(self, host: Any) -> None:
        return


def _schema(settings: KafkaSettings) -> list[str]:
    ks = settings.keyspace
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication ="
        f" {{'class': 'SimpleStrategy', 'replication_factor': {settings.replication}}}",
        f"CREATE TABLE IF NOT EXISTS {ks}.{settings.context_table}"
        " (run_id text, key text, value text, PRIMARY KEY (run_id, key))",
        # The TypeScript adapter's status table, read by its clients.
        f"CREATE TABLE IF NOT EXISTS {ks}.{settings.status_table}"
        " (run_id text PRIMARY KEY, status text, status_data text, updated_at timestamp)",
        # The TypeScript adapter's context table, where its clients put a run's initial context.
        f"CREATE TABLE IF NOT EXISTS {ks}.{settings.ts_context_table}"
        " (run_id text PRIMARY KEY, context_data text)",
    ]


def _call(loop: asyncio.AbstractEventLoop, *args: Any) -> None:
    # The loop may be gone when a request of a killed worker completes.
    try:
        loop.call_soon_threadsafe(*args)
    except RuntimeError:
        return


def _set(done: asyncio.Future[list[Any]], rows: list[Any]) -> None:
    if not done.done():
        done.set_result(rows)


def _fail(done: asyncio.Future[list[Any]], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)


class CassandraContextStore:
    """A :class:`~flowcraft.backend.ContextStore` on a Cassandra table.

    Args:
        session: The adapter's Cassandra session.
    """

    def __init__(self, session: CassandraSession) -> None:
        self._db = session
        settings = session.settings
        self._ttl = settings.ttl_seconds
        table = f"{settings.keyspace}.{settings.context_table}"
        self._cql = {
            "get": f"SELECT value FROM {table} WHERE run_id = ? AND key = ?",
            "many": f"SELECT key, value FROM {table} WHERE run_id = ? AND key IN ?",
            "all": f"SELECT key, value FROM {table} WHERE run_id = ?",
            "set": f"INSERT INTO {table} (run_id, key, value) VALUES (?, ?, ?) USING TTL ?",
            "delete": f"DELETE FROM {table} WHERE run_id = ? AND key = ?",
            "drop": f"DELETE FROM {table} WHERE run_id = ?",
            "ts": f"SELECT context_data FROM {settings.keyspace}.{settings.ts_context_table}"
            " WHERE run_id = ?",
        }

    async def _run(self, name: str, *params: Any) -> list[Any]:
        statement = await self._db.prepared(name, self._cql[name])
        return await self._db.execute(statement, params)

    async def get(self, run_id: str, key: str) -> Any:
        rows = await self._run("get", run_id, key)
        return decode_value(rows[0].value) if rows else None

    async def set(self, run_id: str, key: str, value: Any) -> None:
        raw = encode_value(key, value).decode()
        await self._run("set", run_id, key, raw, self._ttl)

    async def has(self, run_id: str, key: str) -> bool:
        return bool(await self._run("get", run_id, key))

    async def delete(self, run_id: str, key: str) -> bool:
        present = await self.has(run_id, key)
        if present:
            await self._run("delete", run_id, key)
        return present

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        rows = await self._run("many", run_id, wanted)
        return {row.key: decode_value(row.value) for row in rows}

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        if not sets and not deletes:
            return
        insert = await self._db.prepared("set", self._cql["set"])
        delete = await self._db.prepared("delete", self._cql["delete"])
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        for key, raw in sets.items():
            batch.add(insert, (run_id, key, raw.decode(), self._ttl))
        for key in deletes:
            batch.add(delete, (run_id, key))
        await self._db.execute(batch)

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        rows = await self._run("all", run_id)
        return {row.key: decode_value(row.value) for row in rows}

    async def delete_run(self, run_id: str) -> None:
        await self._run("drop", run_id)

    async def adopt(self, run_id: str) -> None:
        """Import the initial context a TypeScript client wrote for ``run_id`` (one JSON
        object in its context table) as this store's rows, in one patch; nothing when it
        wrote none."""
        rows = await self._run("ts", run_id)
        raw = rows[0].context_data if rows else None
        if not raw:
            return
        try:
            context = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(context, dict):
            await self.patch(
                run_id, [{"op": "set", "key": str(k), "value": v} for k, v in context.items()]
            )

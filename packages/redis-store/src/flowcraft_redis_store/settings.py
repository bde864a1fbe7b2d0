"""Connection settings and the key layout of the Redis backend."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError

from flowcraft.backend import env_settings, merge_settings
from flowcraft_redis_store.cluster import slot_connection_class

__all__ = ["DEFAULT_URL", "RedisSettings", "clone_pool", "url_of"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 2.0
_CONNECT_TIMEOUT = 5.0
# Linux names; elsewhere the system's keepalive defaults apply.
_KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where Redis is and how keys are named.

    The defaults keep the TypeScript BullMQ adapter's layout (``workflow:state:<runId>``,
    ``workflow:status:<runId>``, queue ``flowcraft-queue``) so TS clients can drive Python
    workers.

    Attributes:
        url: ``redis://host:port/db``.
        queue_name: The BullMQ queue (and the Streams stream's base name).
        state_prefix: Prefix of each run's context hash.
        status_prefix: Prefix of each run's final status key.
        coordination_prefix: Prefix of join marks, fences, counters and timers.
        state_ttl_seconds: TTL given to a finished run's keys (0 keeps them forever).
        lease_seconds: How long a job's lock lasts without renewal; a dead worker's jobs come
            back after it.
        retries: How often a command that lost its connection (or met a server still loading
            its data after a restart) is retried, reconnecting with jittered exponential
            back-off from 50 ms up to 2 s between tries: 10 rides out about 10 s.
        socket_timeout: Seconds a command may wait for its reply before its connection is
            dropped and the command retried; 0 (the default) sets none. Without it, a peer
            that vanished without closing the connection is found by TCP keepalive instead
            (probes after 5 s idle, every 2 s, 3 lost: about 11 s). redis-py pays for a
            per-command timeout with a task and a timer on every command, about a third of
            the client's CPU per round trip here (see ``benchmarks/RESULTS.md``).
        max_connections: Most connections one client's pool opens. The pool blocks: a
            burst of commands waits for a free connection, it never fails for want of one.
            Most traffic shares one pipelined connection besides (``batch.py``), and result
            waits one subscription.
        client_name: ``CLIENT SETNAME`` of every connection (empty: none), to tell a
            process's connections apart in ``CLIENT LIST``.
        prefix: BullMQ's ``prefix`` option: the BullMQ transport's keys are
            ``<prefix>:<queue>:*`` (the Streams transport does not use it).
        cluster: ``url`` names a node of a Redis Cluster. Every key then carries the hash tag
            (below), so a deployment lives in one slot, and connections go to the master that
            serves that slot, found again on every reconnect (a failover or a moved slot).
        hash_tag: The ``{tag}`` every key starts with (default: none standalone, the queue
            name in a cluster). Setting it standalone prepares a move to a cluster.
    """

    url: str = DEFAULT_URL
    queue_name: str = "flowcraft-queue"
    state_prefix: str = "workflow:state:"
    status_prefix: str = "workflow:status:"
    coordination_prefix: str = ""
    state_ttl_seconds: int = 86_400
    lease_seconds: float = 30.0
    retries: int = 10
    socket_timeout: float = 0.0
    max_connections: int = 16
    client_name: str = ""
    prefix: str = "bull"
    cluster: bool = False
    hash_tag: str = ""
    # Every key name starts with it: worked out once, not per key.
    _tag: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = self.hash_tag or (self.queue_name if self.cluster else "")
        object.__setattr__(self, "_tag", f"{{{tag}}}:" if tag else "")

    @classmethod
    def from_env(cls, **overrides: Any) -> RedisSettings:
        """Settings from ``REDIS_URL`` and ``FLOWCRAFT_REDIS_<FIELD>`` variables (e.g.
        ``FLOWCRAFT_REDIS_QUEUE_NAME``), then keyword overrides."""
        values: dict[str, Any] = {"url": os.environ.get("REDIS_URL", DEFAULT_URL)}
        values.update(env_settings(cls, "FLOWCRAFT_REDIS_", os.environ))
        return merge_settings(cls(), {**values, **overrides}, backend="Redis")

    @classmethod
    def from_connection(
        cls, connection: Mapping[str, Any] | str, **overrides: Any
    ) -> RedisSettings:
        """Settings from a DSN or a ``{host, port, db, username, password, tls}`` mapping (the
        TypeScript adapter's ``connection`` object), then keyword overrides."""
        url = connection if isinstance(connection, str) else url_of(connection)
        return cls.from_env(url=url, **overrides)

    def prefixed(self, prefix: str) -> RedisSettings:
        """These settings with ``prefix`` before the context, status and coordination key
        prefixes: a deployment of its own on a shared server."""
        return replace(
            self,
            state_prefix=prefix + self.state_prefix,
            status_prefix=prefix + self.status_prefix,
            coordination_prefix=prefix + self.coordination_prefix,
        )

    @property
    def tag(self) -> str:
        """The ``{hash tag}`` every key starts with (with its colon), or empty."""
        return self._tag

    def client(self) -> aioredis.Redis:
        """A new client (connection pool) for these settings, reconnecting as ``retries`` says.

        redis-py's default retry policy differs between releases (none before 6.0), so it is
        set here. ``BusyLoadingError`` is a ``ConnectionError``: a restarted server replaying
        its append-only file is waited for too.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=None,
            decode_responses=False,
            retry=self.retry(),
            retry_on_error=[ConnectionError, TimeoutError],
            socket_timeout=self.socket_timeout or None,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_keepalive=True,
            socket_keepalive_options=_KEEPALIVE,
            client_name=self.client_name or None,
        )
        if self.cluster:
            pool.connection_class = slot_connection_class(pool.connection_class)
            pool.connection_kwargs["cluster_slot_key"] = self.tag
        return aioredis.Redis.from_pool(pool)

    def namespaced(self, tag: str) -> RedisSettings:
        """These settings with a queue and key prefixes of their own, ``tag`` in each: for
        deployments, tests or benchmarks that share one server and must not see each other's
        jobs or runs. Every key then contains ``tag``."""
        return replace(
            self,
            queue_name=f"{self.queue_name}-{tag}",
            state_prefix=f"{tag}:{self.state_prefix}",
            status_prefix=f"{tag}:{self.status_prefix}",
            coordination_prefix=f"{tag}:{self.coordination_prefix}",
        )

    def retry(self) -> Retry:
        """The reconnect policy: ``retries`` tries with jittered exponential back-off."""
        return Retry(ExponentialWithJitterBackoff(_BACKOFF_CAP, _BACKOFF_BASE), self.retries)

    def state_key(self, run_id: str) -> str:
        """The hash holding a run's context."""
        return f"{self.tag}{self.state_prefix}{run_id}"

    def status_key(self, run_id: str) -> str:
        """The string holding a run's final result."""
        return f"{self.tag}{self.status_prefix}{run_id}"

    def coordination_key(self, key: str) -> str:
        """A coordination key in this namespace."""
        return f"{self.tag}{self.coordination_prefix}{key}"

    def queue_key(self, suffix: str) -> str:
        """A key of the Streams transport's queue: ``<queue>:<suffix>``."""
        return f"{self.tag}{self.queue_name}:{suffix}"

    @property
    def bullmq_prefix(self) -> str:
        """The ``prefix`` option BullMQ gets: ``prefix``, behind the hash tag."""
        return f"{self.tag}{self.prefix}"


def url_of(connection: Mapping[str, Any]) -> str:
    """The DSN of a ``{host, port, db, username, password, tls}`` mapping (``tls``: true or
    ioredis' TLS options object, which turns on ``rediss://``)."""
    scheme = "rediss" if connection.get("tls") or connection.get("ssl") else "redis"
    user = quote(str(connection.get("username") or ""), safe="")
    password = quote(str(connection.get("password") or ""), safe="")
    auth = f"{user}:{password}@" if user or password else ""
    host = connection.get("host") or "127.0.0.1"
    port = int(connection.get("port") or 6379)
    return f"{scheme}://{auth}{host}:{port}/{int(connection.get('db') or 0)}"


def clone_pool(client: aioredis.Redis, **overrides: Any) -> ConnectionPool:
    """A new pool to where ``client``'s connections go (server, credentials, TLS, cluster
    slot), with ``overrides`` (e.g. ``decode_responses``)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, **overrides}
    return ConnectionPool(connection_class=pool.connection_class, **kwargs)

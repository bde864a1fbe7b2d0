"""Contract-suite fixture of flowcraft-rabbitmq (RabbitMQ + PostgreSQL, coordination on Redis).

Provisioning: ``AMQP_URL``, ``DATABASE_URL`` and ``REDIS_URL`` if set, else the servers of
``flowcraft_services`` (RabbitMQ and PostgreSQL from Debian, Redis). Each test gets a queue,
a PostgreSQL schema and a Redis key prefix of its own; reset deletes all three. The restart
test gets the servers privately (``restartable``), so that killing them disturbs nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import secrets
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pika
import psutil
import psycopg
import redis as sync_redis
from flowcraft_services import procs
from flowcraft_services.providers import postgres as postgres_provider
from flowcraft_services.providers import rabbitmq as rabbitmq_provider
from psycopg import sql

from backends._fixture import spawn_worker
from backends._restart import PrivateServer, PrivateServers, aof_redis, restart_port
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_rabbitmq import RabbitAdapter, RabbitPostgresAdapter, RabbitSettings
from flowcraft_rabbitmq.queue import RabbitQueue

__all__ = ["Deployment", "Fixture"]

REASON = "x-flowcraft-reason"


class Deployment:
    """One test's share of the servers."""

    def __init__(self, base: RabbitSettings, lease: float) -> None:
        tagged = base.namespaced(f"t{uuid.uuid4().hex[:10]}")
        self.settings = dataclasses.replace(tagged, lease_seconds=lease)
        self.lease = lease
        self.adapters: list[DistributedAdapter] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "rabbitmq"
    adapter_class: type[RabbitAdapter] | type[RabbitPostgresAdapter] = RabbitAdapter
    carries_raw_text = True
    """Message bodies are the bytes published, JSON or not."""
    services = (("rabbitmq", "AMQP_URL"), ("postgres", "DATABASE_URL"), ("redis", "REDIS_URL"))

    def __init__(self) -> None:
        self.base = RabbitSettings()

    def provision(self) -> None:
        """Reach the servers named in the environment, or start them."""
        env = {name: os.environ[name] for _, name in self.services if os.environ.get(name)}
        for service, variable in self.services:
            if variable not in env:
                from flowcraft_services import resolve

                env[variable] = resolve(service).start()[variable]
        self.base = RabbitSettings.from_env(
            amqp_url=env["AMQP_URL"],
            database_url=env["DATABASE_URL"],
            **({"redis_url": env["REDIS_URL"]} if "REDIS_URL" in env else {}),
        )
        with self._channel() as channel:
            channel.queue_declare("flowcraft-probe", exclusive=True)
        with psycopg.connect(self.base.database_url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        if "REDIS_URL" in env:
            with sync_redis.Redis.from_url(self.base.redis_url, socket_timeout=5) as client:
                client.ping()

    def _channel(self) -> Any:
        params = pika.URLParameters(self.base.amqp_url)
        params.socket_timeout = 5
        connection = pika.BlockingConnection(params)

        class Closing:
            def __enter__(self) -> Any:
                return connection.channel()

            def __exit__(self, *exc: object) -> None:
                if connection.is_open:
                    connection.close()

        return Closing()

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` (for SIGKILL tests)."""
        return spawn_worker(self.name, app, {**env, **deployment.settings.to_env()})

    @contextlib.asynccontextmanager
    async def restartable(
        self, *, lease: float
    ) -> AsyncIterator[tuple[Deployment, Callable[[float], Awaitable[None]]]]:
        """A deployment on a private RabbitMQ node, PostgreSQL cluster and (``rabbitmq``)
        Redis server, and their restart: all SIGKILLed at once, a pause, then started again on
        their ports and data. Each keeps what it acknowledged across a killed process, as a
        production deployment configures it: the quorum queue confirms a publish once it is
        in its log, PostgreSQL commits with ``synchronous_commit`` on (its default; the WAL is
        written before the commit returns), Redis with ``appendfsync always``."""
        with tempfile.TemporaryDirectory(prefix="flowcraft-rabbitmq-restart-") as workdir:
            servers = _PrivateServers(Path(workdir), redis=self.adapter_class is RabbitAdapter)
            deployment: Deployment | None = None
            try:
                await asyncio.to_thread(servers.start)
                env = servers.env
                base = RabbitSettings(
                    amqp_url=env["AMQP_URL"],
                    database_url=env["DATABASE_URL"],
                    **({"redis_url": env["REDIS_URL"]} if "REDIS_URL" in env else {}),
                )
                deployment = Deployment(base, lease)
                # Killed within about 3 s of its declaration, the node would come back without
                # the quorum queue's Raft member (ra's directory is a dets table with delayed
                # writes): the queue never gets a leader, publishes no confirm and consumers
                # hang. A deployment's queues are declared before its servers can fail.
                queue = RabbitQueue(deployment.settings)
                try:
                    await queue.declare()
                finally:
                    await queue.close()
                await asyncio.to_thread(servers.wait_quorum_member_stored, queue.name)

                async def restart(down_for: float) -> None:
                    await asyncio.to_thread(servers.restart, down_for)

                yield deployment, restart
            except BaseException:
                servers.keep_logs(self.name)
                raise
            finally:
                for adapter in deployment.adapters if deployment is not None else ():
                    await adapter.close()
                await asyncio.to_thread(servers.stop)

    def deployment(self, *, lease: float) -> Deployment:
        """A fresh queue, schema and key prefix for one test."""
        return Deployment(self.base, lease)

    def adapter(
        self,
        deployment: Deployment,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        options.setdefault("lease", deployment.lease)
        settings = dataclasses.replace(
            deployment.settings, client_name=f"fc-{uuid.uuid4().hex[:12]}"
        )
        adapter = self.adapter_class(settings, registry=registry, blueprints=blueprints, **options)
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """The stores of an adapter of their own (closed at reset)."""
        adapter = self.adapter_class(deployment.settings)
        deployment.adapters.append(adapter)
        return adapter.coordination, adapter.context

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """The adapter's PostgreSQL and Redis connections, counted by the servers under its
        client name, and its AMQP connection (RabbitMQ lists connections only through its
        management plugin or CLI, which the fixture does not assume)."""
        assert isinstance(adapter, RabbitAdapter | RabbitPostgresAdapter)
        name = adapter.settings.client_name
        with psycopg.connect(deployment.settings.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        opened = int(row[0]) if row else 0
        opened += int(adapter.queue.connected)
        if isinstance(adapter, RabbitAdapter):
            with sync_redis.Redis.from_url(deployment.settings.redis_url) as client:
                opened += sum(1 for c in client.client_list() if c.get("name") == name)
        return opened

    def queued_jobs(self, deployment: Deployment) -> int:
        """Ready messages in the job queue and parked copies (unacked ones are held by live
        workers, whose jobs are over once the runs are)."""
        name = deployment.settings.queue_name
        total = 0
        with self._channel() as channel:
            for queue in (name, f"{name}.parked"):
                try:
                    declared = channel.queue_declare(queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    return total
                total += int(declared.method.message_count)
        return total

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """Reasons of the messages in the dead-letter queue (left in it)."""
        reasons: list[str] = []
        with self._channel() as channel:
            queue = f"{deployment.settings.queue_name}.dead"
            try:
                channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return reasons
            # Read without acking; closing the channel puts them all back.
            while True:
                method, properties, _ = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    return reasons
                headers = properties.headers or {}
                reason = headers.get(REASON) or headers.get("x-first-death-reason") or ""
                reasons.append(reason.decode() if isinstance(reason, bytes) else str(reason))

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Publish a raw (possibly malformed) job, as a foreign producer could."""
        with self._channel() as channel:
            channel.confirm_delivery()
            channel.basic_publish(
                "",
                deployment.settings.queue_name,
                body.encode(),
                pika.BasicProperties(delivery_mode=2),
            )

    async def reset(self, deployment: Deployment) -> None:
        """Close the test's adapters; delete its queues, schema and keys."""
        # Kept in the list: a test may use an adapter again after a reset (it reconnects),
        # and the final reset must close it again.
        for adapter in deployment.adapters:
            await adapter.close()
        settings = deployment.settings
        with self._channel() as channel:
            for suffix in ("", ".dead", ".parked"):
                channel.queue_delete(f"{settings.queue_name}{suffix}")
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.schema))
            )
        if self.adapter_class is not RabbitAdapter:
            return
        with sync_redis.Redis.from_url(settings.redis_url) as client:
            keys = list(client.scan_iter(match=f"*{settings.coordination_prefix}*", count=1000))
            if keys:
                client.delete(*keys)


class _PrivateServers(PrivateServers):
    """A RabbitMQ node, a PostgreSQL cluster and (``redis``) a Redis server of the restart
    test's own."""

    def __init__(self, workdir: Path, *, redis: bool) -> None:
        self._epmd_port = restart_port()
        self._rabbitmq_home = workdir / "rabbitmq"
        servers = [self._rabbitmq(self._rabbitmq_home), self._postgres(workdir)]
        if redis:
            servers.append(aof_redis(workdir / "redis"))
        super().__init__(servers)

    def wait_quorum_member_stored(self, queue: str, timeout: float = 30.0) -> None:
        """Wait until the node's Raft directory (``names.dets``) holds ``queue``'s member, so
        that a node killed from now on restarts it."""
        member = f"%2F_{queue}".encode()
        deadline = time.monotonic() + timeout
        while True:
            stored = self._rabbitmq_home.glob("mnesia/*/quorum/*/names.dets")
            if any(member in path.read_bytes() for path in stored):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"quorum queue {queue}'s member not on disk in {timeout} s")
            time.sleep(0.1)

    def _rabbitmq(self, home: Path) -> PrivateServer:
        home.mkdir()
        port, dist_port = restart_port(), restart_port()
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {procs.LOOPBACK}:{port}\n"
            "loopback_users.guest = true\n"
            # Info: a quorum queue's recovery and leader elections are logged at that level,
            # and they are what a publish or consume that hangs after the restart waits for.
            "log.console = true\nlog.console.level = info\nlog.file = false\n"
        )
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        env = {
            "HOME": str(home),
            "RABBITMQ_NODENAME": f"flowcraft{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": procs.LOOPBACK,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_ADDRESS": procs.LOOPBACK,
            "ERL_EPMD_PORT": str(self._epmd_port),
            "RABBITMQ_BASE": str(home),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        return PrivateServer(
            "rabbitmq",
            home,
            [str(rabbitmq_provider.SERVER)],
            rabbitmq_provider.RabbitMQService.probe,
            {"AMQP_URL": f"amqp://guest:guest@{procs.LOOPBACK}:{port}/%2F"},
            process_env=env,
        )

    def _postgres(self, workdir: Path) -> PrivateServer:
        # PostgreSQL refuses to run as root, and its user must reach the cluster's directory:
        # a directory of its own, made over to that user.
        user = "postgres" if os.geteuid() == 0 else None
        home = Path(tempfile.mkdtemp(prefix="flowcraft-postgres-", dir=workdir))
        home.chmod(0o755)
        workdir.chmod(0o755)
        data, sockets, pwfile = home / "data", home / "sockets", home / "pwfile"
        sockets.mkdir()
        pwfile.write_text(postgres_provider.PASSWORD + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (home, sockets, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        bindir = postgres_provider._bindir()
        postgres_provider._initdb(bindir, data, pwfile, user, home)
        port = restart_port()
        argv = [
            str(bindir / "postgres"),
            *("-D", str(data), "-p", str(port)),
            *("-c", f"listen_addresses={procs.LOOPBACK}"),
            *("-c", f"unix_socket_directories={sockets}"),
            # A killed process, not a lost machine: what was written survives in the page
            # cache, so flushing it to disk would only slow the test.
            *("-c", "fsync=off", "-c", "max_connections=200"),
        ]
        p = postgres_provider
        url = f"postgresql://{p.USER}:{p.PASSWORD}@{procs.LOOPBACK}:{port}/{p.DATABASE}"
        return PrivateServer(
            "postgres", home, argv, p.PostgresService.probe, {"DATABASE_URL": url}, user=user
        )

    def stop(self) -> None:
        super().stop()
        # The node's epmd detaches from its start script, so it is found by its port.
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == self._epmd_port:
                with contextlib.suppress(psutil.NoSuchProcess, TypeError):
                    epmd = psutil.Process(conn.pid)
                    if epmd.name() == "epmd":
                        epmd.kill()

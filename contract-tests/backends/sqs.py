"""Contract-suite fixture of flowcraft-sqs: SQS on ElasticMQ, DynamoDB on DynamoDB Local.

``FLOWCRAFT_SQS_SERVERS=moto`` runs the suite against moto server instead (both services in
one process; it enforces limits ElasticMQ does not, e.g. the 12-hour visibility cap).

The endpoints each provider returns are passed to the adapters and workers explicitly, never
left to ambient variables: moto exports ``AWS_ENDPOINT_URL`` (every service), ElasticMQ
``AWS_ENDPOINT_URL_SQS`` and DynamoDB Local ``AWS_ENDPOINT_URL_DYNAMODB``, and botocore prefers
the per-service ones, so a shell with all three set reaches the emulators whatever the
profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3

from backends._fixture import spawn_worker
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_sqs import (
    DynamoContextStore,
    DynamoCoordinationStore,
    SqsAdapter,
    SqsQueue,
    SqsSettings,
    Table,
)
from flowcraft_sqs.clients import Clients

__all__ = ["Deployment", "Fixture"]

_PROFILES = {"emulators": ("elasticmq", "dynamodb-local"), "moto": ("moto", "moto")}
_TABLE = "flowcraft-contract"
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_UP_WITHIN = 120.0
"""Seconds a private server may take to answer (two JVMs starting on a loaded machine)."""


def _start(name: str) -> dict[str, str]:
    from flowcraft_services import resolve

    return dict(resolve(name).start())


class Deployment:
    """One test's share: a job queue, a dead-letter queue and a table of its own (deleted at
    reset: cheaper than scanning a shared table for the test's items)."""

    def __init__(self, base: SqsSettings, lease: float) -> None:
        tag = f"t{uuid.uuid4().hex[:10]}"
        self.settings = replace(
            base, queue=tag, table=f"{_TABLE}-{tag}", key_prefix=f"{tag}/", lease_seconds=lease
        )
        self.lease = lease
        self.adapters: list[DistributedAdapter] = []
        self.clients: list[Clients] = []
        self.dead: list[str] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "sqs"
    profile: str | None = None
    """The servers (a key of ``_PROFILES``); None: ``FLOWCRAFT_SQS_SERVERS``, else emulators."""

    def __init__(self) -> None:
        self.base = SqsSettings()
        self.env: dict[str, str] = {}

    def provision(self) -> None:
        """Start (or reach) the profile's servers."""
        profile = self.profile or os.environ.get("FLOWCRAFT_SQS_SERVERS", "emulators")
        if profile not in _PROFILES:
            raise ValueError(f"FLOWCRAFT_SQS_SERVERS must be one of {sorted(_PROFILES)}")
        sqs_name, dynamodb_name = _PROFILES[profile]
        sqs_env = _start(sqs_name)
        dynamodb_env = sqs_env if dynamodb_name == sqs_name else _start(dynamodb_name)
        sqs = sqs_env.get("AWS_ENDPOINT_URL_SQS") or sqs_env["AWS_ENDPOINT_URL"]
        dynamodb = dynamodb_env.get("AWS_ENDPOINT_URL_DYNAMODB") or dynamodb_env["AWS_ENDPOINT_URL"]
        self.env = {
            "AWS_ACCESS_KEY_ID": sqs_env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": sqs_env["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": sqs_env["AWS_DEFAULT_REGION"],
            "AWS_ENDPOINT_URL_SQS": sqs,
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb,
        }
        # In-process clients get the same, explicitly (botocore reads no env var over them).
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ.setdefault(name, self.env[name])
        self.base = SqsSettings(
            table=_TABLE,
            region=self.env["AWS_DEFAULT_REGION"],
            sqs_endpoint=sqs,
            dynamodb_endpoint=dynamodb,
        )
        self._sqs().list_queues()
        self._dynamodb().list_tables()

    def _client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.env[f"AWS_ENDPOINT_URL_{service.upper()}"],
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def _sqs(self) -> Any:
        return self._client("sqs")

    def _dynamodb(self) -> Any:
        return self._client("dynamodb")

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment``."""
        settings = deployment.settings
        settings_env = {
            **self.env,
            "FLOWCRAFT_SQS_QUEUE": settings.queue,
            "FLOWCRAFT_SQS_TABLE": settings.table,
            "FLOWCRAFT_SQS_KEY_PREFIX": settings.key_prefix,
            "FLOWCRAFT_SQS_LEASE_SECONDS": str(deployment.lease),
        }
        # The worker's backend is the package's entry point, whatever the profile.
        return spawn_worker("sqs", app, {**env, **settings_env})

    def deployment(self, *, lease: float) -> Deployment:
        """A fresh queue and key prefix for one test."""
        return Deployment(self.base, lease)

    @contextlib.asynccontextmanager
    async def restartable(
        self, *, lease: float
    ) -> AsyncIterator[tuple[Deployment, Callable[[float], Awaitable[None]]]]:
        """A deployment on a private ElasticMQ and DynamoDB Local that keep their data on disk
        (ElasticMQ's queue and message storage, DynamoDB Local's ``-dbPath``), and their
        restart: both SIGKILLed, a pause, both started again on their ports and data.
        The emulators' profile only: moto server keeps everything in memory."""
        with tempfile.TemporaryDirectory(prefix="flowcraft-sqs-restart-") as workdir:
            servers = _PrivateServers(Path(workdir))
            deployment: Deployment | None = None
            try:
                await asyncio.to_thread(servers.start)
                base = replace(
                    self.base,
                    region=_CREDENTIALS["AWS_DEFAULT_REGION"],
                    sqs_endpoint=servers.sqs_url,
                    dynamodb_endpoint=servers.dynamodb_url,
                )
                deployment = Deployment(base, lease)

                async def restart(down_for: float) -> None:
                    await asyncio.to_thread(servers.restart, down_for)

                yield deployment, restart
            finally:
                for adapter in deployment.adapters if deployment is not None else ():
                    await adapter.close()
                await asyncio.to_thread(servers.stop)

    def adapter(
        self,
        deployment: Deployment,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        options.setdefault("lease", deployment.lease)
        adapter = SqsAdapter(
            deployment.settings, registry=registry, blueprints=blueprints, **options
        )
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """Stores on clients of their own (closed at reset)."""
        clients = Clients(deployment.settings)
        deployment.clients.append(clients)
        table = Table(clients)
        return DynamoCoordinationStore(table), DynamoContextStore(table)

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """HTTP connections the adapter's two clients hold open (idle or in use).

        The emulators cannot tell clients apart, so this asks the clients' aiohttp
        connectors (private attributes: test-only introspection).
        """
        assert isinstance(adapter, SqsAdapter)
        clients = adapter.clients
        total = 0
        for client in (clients._sqs, clients._dynamodb):
            if client is None:
                continue
            sessions = getattr(client._endpoint.http_session, "_sessions", None) or {}
            for session in sessions.values():
                connector = session.connector
                if connector is not None:
                    idle = sum(len(c) for c in connector._conns.values())
                    total += idle + len(connector._acquired)
        return total

    def _url(self, name: str) -> str | None:
        try:
            return str(self._sqs().get_queue_url(QueueName=name)["QueueUrl"])
        except Exception:
            return None

    def queued_jobs(self, deployment: Deployment) -> int:
        """Jobs the queue holds: visible, in flight or delayed (exact on the emulators)."""
        url = self._url(deployment.settings.queue_name)
        if url is None:
            return 0
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self._sqs().get_queue_attributes(QueueUrl=url, AttributeNames=names)
        return sum(int(attributes["Attributes"].get(n, 0)) for n in names)

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """Reasons of the dead-lettered jobs (drained from the dead-letter queue and kept)."""
        url = self._url(deployment.settings.dead_letter_queue_name)
        if url is None:
            return list(deployment.dead)
        sqs = self._sqs()
        while True:
            reply = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            )
            messages = reply.get("Messages", [])
            if not messages:
                return list(deployment.dead)
            for message in messages:
                reason = message.get("MessageAttributes", {}).get("reason", {})
                deployment.dead.append(str(reason.get("StringValue", "redriven by SQS")))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Put a raw (possibly malformed) job on the queue, as a foreign producer could."""
        clients = Clients(deployment.settings)
        try:
            await SqsQueue(clients).enqueue(body)
        finally:
            await clients.close()

    async def reset(self, deployment: Deployment) -> None:
        """Close the test's adapters and delete its queues and table."""
        for adapter in deployment.adapters:
            await adapter.close()
        for clients in deployment.clients:
            await clients.close()
        deployment.adapters.clear()
        deployment.clients.clear()
        deployment.dead.clear()
        settings = deployment.settings
        sqs = self._sqs()
        for name in (settings.queue_name, settings.dead_letter_queue_name):
            url = self._url(name)
            if url is not None:
                sqs.delete_queue(QueueUrl=url)
        dynamodb = self._dynamodb()
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=settings.table)


class _PrivateServers:
    """One test's ElasticMQ and DynamoDB Local, their data in ``workdir``, on fixed ports."""

    def __init__(self, workdir: Path) -> None:
        from flowcraft_services import procs

        self.workdir = workdir
        self.sqs_url = f"http://{procs.LOOPBACK}:{procs.free_port()}"
        self.dynamodb_url = f"http://{procs.LOOPBACK}:{procs.free_port()}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        from flowcraft_services import installers, loopback, procs
        from flowcraft_services.providers import dynamodb_local, elasticmq

        java = installers.java()
        artifact = f"org.elasticmq:elasticmq-server_2.13:{elasticmq.VERSION}"
        lib = installers.maven_assemble(f"elasticmq-{elasticmq.VERSION}", [artifact])
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        port = self.sqs_url.rsplit(":", 1)[1]
        conf = self.workdir / "elasticmq.conf"
        conf.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{procs.LOOPBACK}", port = {port},'
            ' context-path = "" }\n'
            f'rest-sqs {{ enabled = true, bind-port = {port}, bind-hostname = "{procs.LOOPBACK}",'
            " sqs-limits = strict }\n"
            "rest-stats { enabled = false }\n"
            'aws { region = "us-east-1", accountId = "000000000000" }\n'
            f'queues-storage {{ enabled = true, path = "{data}/queues.conf" }}\n'
            f'messages-storage {{ enabled = true, uri = "jdbc:h2:{data}/messages" }}\n'
        )
        jars = dynamodb_local._jar_dir()
        sqs_argv = [
            *(java, "-Xmx256m", *elasticmq.JVM_FLAGS, f"-Dconfig.file={conf}"),
            *("-cp", f"{lib}/*", "org.elasticmq.server.Main"),
        ]
        dynamodb_argv = [
            *(java, "-Xmx512m", *dynamodb_local.JVM_FLAGS),
            f"-Djava.library.path={jars / 'DynamoDBLocal_lib'}",
            *("-jar", str(jars / "DynamoDBLocal.jar"), "-dbPath", str(data), "-sharedDb"),
            *("-port", self.dynamodb_url.rsplit(":", 1)[1], "-disableTelemetry"),
        ]
        # DynamoDB Local has no bind address option: the shim keeps it on loopback.
        shim = {**os.environ, "LD_PRELOAD": loopback.shim_path()}
        with (self.workdir / "servers.log").open("ab") as log:
            self.processes = [
                subprocess.Popen(sqs_argv, stdout=log, stderr=subprocess.STDOUT),
                subprocess.Popen(dynamodb_argv, stdout=log, stderr=subprocess.STDOUT, env=shim),
            ]
        self._wait_up()

    def _wait_up(self) -> None:
        options = {"region_name": _CREDENTIALS["AWS_DEFAULT_REGION"]}
        keys = {
            "aws_access_key_id": _CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": _CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        sqs = boto3.client("sqs", endpoint_url=self.sqs_url, **options, **keys)
        dynamodb = boto3.client("dynamodb", endpoint_url=self.dynamodb_url, **options, **keys)
        deadline = time.monotonic() + _UP_WITHIN
        while True:
            try:
                sqs.list_queues()
                dynamodb.list_tables()
                return
            except Exception:
                if time.monotonic() > deadline:
                    log = (self.workdir / "servers.log").read_text(errors="replace")
                    raise RuntimeError(f"private servers did not start:\n{log[-3000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait()
        self.processes = []

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

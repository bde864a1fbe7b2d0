"""Fixtures of the flowcraft-kafka tests: the servers and the TS client.

The servers are the environment's (``KAFKA_BOOTSTRAP_SERVERS``, ``CASSANDRA_CONTACT_POINTS``,
``REDIS_URL``) or those ``flowcraft_services`` starts, as the contract suite's Kafka fixture
does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from flowcraft_services.cli import start_many
from flowcraft_services.installers import npm_install_locked

from flowcraft_kafka import KafkaSettings
from flowcraft_redis_store import RedisSettings

TS_CLIENT_DIR = Path(__file__).parent / "ts-client"


@pytest.fixture(scope="session")
def servers() -> dict[str, str]:
    """Connection settings of a running Kafka, Cassandra and Redis."""
    env: dict[str, str] = {}
    for name, service in start_many(["kafka", "cassandra", "redis"]).items():
        if isinstance(service, Exception):
            raise RuntimeError(f"{name} did not start: {service}") from service
        env.update(service.env)
    return env


@pytest.fixture(scope="session")
def base_settings(servers: Mapping[str, str]) -> KafkaSettings:
    """Settings on those servers, with the TypeScript adapter's names."""
    return KafkaSettings(
        bootstrap_servers=servers["KAFKA_BOOTSTRAP_SERVERS"],
        contact_points=servers["CASSANDRA_CONTACT_POINTS"],
        cassandra_port=int(servers["CASSANDRA_PORT"]),
        local_dc=servers.get("CASSANDRA_LOCAL_DC", "datacenter1"),
        redis=RedisSettings(url=servers["REDIS_URL"]),
    )


class TsClient:
    """``ts-client/client.mjs``: starts runs and polls their status as a TS client does.

    Args:
        node: The ``node`` executable.
    """

    def __init__(self, node: str) -> None:
        self.node = node

    def run(
        self,
        settings: KafkaSettings,
        runs: Sequence[Mapping[str, Any]],
        *,
        preset_version: bool = True,
        timeout: float = 90.0,
    ) -> dict[str, dict[str, str] | None]:
        """Start ``runs`` (``runId``, ``blueprint``, ``initialContext``) and wait for each
        final status row: ``{status, status_data}`` per run (None if it never came)."""
        spec = {
            "brokers": settings.bootstrap_servers.split(","),
            "cassandra": {
                "host": settings.contact_points.split(",")[0],
                "port": settings.cassandra_port,
                "dc": settings.local_dc,
            },
            "keyspace": settings.keyspace,
            "topic": settings.topic,
            "presetVersion": preset_version,
            "timeoutMs": int(timeout * 1000),
            "runs": list(runs),
        }
        done = subprocess.run(
            [self.node, str(TS_CLIENT_DIR / "client.mjs")],
            input=json.dumps(spec).encode(),
            capture_output=True,
            timeout=timeout + 60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"TS client failed ({done.returncode}):\n{done.stderr.decode(errors='replace')}"
            )
        statuses: dict[str, dict[str, str] | None] = json.loads(done.stdout)["statuses"]
        return statuses


@pytest.fixture(scope="session")
def ts_client() -> TsClient:
    """The TS client script, its npm packages installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        why = (
            "Node.js (`node` and `npm`) is not installed, so the TS-client interop tests"
            " cannot run the kafkajs client script; install Node.js 18+ to run them"
        )
        pytest.skip(reason=why)
    npm_install_locked(TS_CLIENT_DIR)
    return TsClient(node)

"""Docker mode: the same servers as containers via testcontainers, for machines with Docker.

Chosen automatically by `resolve()` when `docker info` succeeds. Host ports are bound to
127.0.0.1 only, picked by us, so advertised addresses (Kafka) can name them. Ryuk (the
testcontainers reaper) is disabled so that `up` in one process and `down` in another work;
`stop()` removes exactly the recorded container ids.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from . import procs
from .base import Service
from .errors import ServiceError
from .providers import aws, azurite, cosmos, google, postgres
from .state import RunState

Settings = Callable[[Mapping[int, int]], dict[str, str]]
H = procs.LOOPBACK


@functools.cache
def docker_available() -> bool:
    """Tell whether a Docker engine answers (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass(frozen=True)
class ImageSpec:
    """How to run one server as a container.

    Attributes:
        image: Image reference, the same one docker/compose.yaml uses.
        ports: Container ports to publish on 127.0.0.1.
        settings: Builds the provider's env vars from {container port: host port}.
        env: Container environment; "{port:N}" is replaced by the host port of N.
        command: Command override, with the same placeholder.
    """

    image: str
    ports: tuple[int, ...]
    settings: Settings
    env: Mapping[str, str] = field(default_factory=dict)
    command: str | None = None


def _aws(*keys: str) -> Settings:
    return lambda p: {
        **{k: f"http://{H}:{next(iter(p.values()))}" for k in keys},
        **aws.CREDENTIALS,
    }


_KAFKA_ENV = {
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
    "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://127.0.0.1:{port:9092}",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}

GCLOUD = "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators"

SPECS: dict[str, ImageSpec] = {
    "redis": ImageSpec("redis:7", (6379,), lambda p: {"REDIS_URL": f"redis://{H}:{p[6379]}/0"}),
    "postgres": ImageSpec(
        "postgres:16",
        (5432,),
        lambda p: {
            "DATABASE_URL": f"postgresql://{postgres.USER}:{postgres.PASSWORD}@{H}:"
            f"{p[5432]}/{postgres.DATABASE}"
        },
        env={
            "POSTGRES_USER": postgres.USER,
            "POSTGRES_PASSWORD": postgres.PASSWORD,
            "POSTGRES_DB": postgres.DATABASE,
        },
    ),
    "rabbitmq": ImageSpec(
        "rabbitmq:3.13-management",
        (5672,),
        lambda p: {"AMQP_URL": f"amqp://guest:guest@{H}:{p[5672]}/%2F"},
    ),
    "moto": ImageSpec(
        "motoserver/moto:latest",
        (5000,),
        _aws("AWS_ENDPOINT_URL"),
    ),
    "elasticmq": ImageSpec(
        "softwaremill/elasticmq-native:1.7.1", (9324,), _aws("AWS_ENDPOINT_URL_SQS")
    ),
    "dynamodb-local": ImageSpec(
        "amazon/dynamodb-local:latest",
        (8000,),
        _aws("AWS_ENDPOINT_URL_DYNAMODB"),
        command="-jar DynamoDBLocal.jar -inMemory -sharedDb",
    ),
    "pubsub": ImageSpec(
        GCLOUD,
        (8085,),
        lambda p: {
            "PUBSUB_EMULATOR_HOST": f"{H}:{p[8085]}",
            "PUBSUB_PROJECT_ID": google.PROJECT,
            "GOOGLE_CLOUD_PROJECT": google.PROJECT,
        },
        command=f"gcloud beta emulators pubsub start --host-port=0.0.0.0:8085 "
        f"--project={google.PROJECT}",
    ),
    "firestore": ImageSpec(
        GCLOUD,
        (8080,),
        lambda p: {
            "FIRESTORE_EMULATOR_HOST": f"{H}:{p[8080]}",
            "GOOGLE_CLOUD_PROJECT": google.PROJECT,
        },
        command="gcloud emulators firestore start --host-port=0.0.0.0:8080 "
        "--database-mode=firestore-native",
    ),
    "azurite": ImageSpec(
        "mcr.microsoft.com/azure-storage/azurite:3.35.0",
        (10001,),
        lambda p: {
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string(f"http://{H}:{p[10001]}")
        },
        command="azurite-queue --queueHost 0.0.0.0 --queuePort 10001 --inMemoryPersistence "
        "--skipApiVersionCheck --loose --disableTelemetry",
    ),
    "cosmos": ImageSpec(
        "mcr.microsoft.com/cosmosdb/linux/azure-cosmos-emulator:vnext-preview",
        (8081,),
        lambda p: {"COSMOS_ENDPOINT": f"https://{H}:{p[8081]}/", "COSMOS_KEY": cosmos.KEY},
        env={"PROTOCOL": "https"},
    ),
    "kafka": ImageSpec(
        "apache/kafka:4.1.1",
        (9092,),
        lambda p: {"KAFKA_BOOTSTRAP_SERVERS": f"{H}:{p[9092]}"},
        env=_KAFKA_ENV,
    ),
    "tansu": ImageSpec(
        "ghcr.io/tansu-io/tansu:latest",
        (9092,),
        lambda p: {"TANSU_BOOTSTRAP_SERVERS": f"{H}:{p[9092]}"},
        env={
            "ADVERTISED_LISTENER_URL": "tcp://127.0.0.1:{port:9092}",
            "STORAGE_ENGINE": "memory://tansu/",
        },
    ),
    "cassandra": ImageSpec(
        "cassandra:5.0",
        (9042,),
        lambda p: {
            "CASSANDRA_CONTACT_POINTS": H,
            "CASSANDRA_PORT": str(p[9042]),
            "CASSANDRA_LOCAL_DC": "datacenter1",
        },
        env={"MAX_HEAP_SIZE": "1G", "HEAP_NEWSIZE": "200M"},
    ),
}


def _fill(template: str, ports: Mapping[int, int]) -> str:
    for container_port, host_port in ports.items():
        template = template.replace(f"{{port:{container_port}}}", str(host_port))
    return template


class ContainerService(Service):
    """Runs a provider's server as a container; probe and reset are the provider's own."""

    mode: ClassVar[str] = "docker"

    def __init__(self, provider: type[Service]) -> None:
        if provider.name not in SPECS:
            raise ServiceError(f"no container image is defined for {provider.name}")
        self.provider = provider
        self.spec = SPECS[provider.name]
        self.name = provider.name  # type: ignore[misc]
        self.env_vars = provider.env_vars  # type: ignore[misc]
        self.start_timeout = max(provider.start_timeout, 180.0)  # type: ignore[misc]
        self.state = RunState.load(self.name)

    def probe(self, env: Mapping[str, str]) -> None:  # type: ignore[override]
        """Delegate to the provider's client call."""
        self.provider.probe(env)

    def wipe(self, env: Mapping[str, str]) -> None:  # type: ignore[override]
        """Delegate to the provider's reset."""
        self.provider.wipe(env)

    def running(self) -> bool:
        """Tell whether our container is up and answering."""
        if self.state is None or self.state.mode != "docker":
            return False
        try:
            self.provider.probe(self.state.env)
        except Exception:  # any client failure means "not usable"
            return False
        return True

    def start(self) -> dict[str, str]:
        """Start the container with ports on 127.0.0.1 and wait for a real client call."""
        if self.running():
            return self.env
        if self.state is not None:
            self.stop()
        # Ryuk would remove the container when this process exits; `down` does that instead.
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        try:
            from testcontainers.core.container import DockerContainer
        except ImportError as exc:
            raise ServiceError(
                "Docker mode needs testcontainers: pip install 'flowcraft-services[docker]'"
            ) from exc
        ports = {p: procs.free_port() for p in self.spec.ports}
        container = DockerContainer(self.spec.image)
        for key, value in self.spec.env.items():
            container.with_env(key, _fill(value, ports))
        for container_port, host_port in ports.items():
            container.with_bind_ports(container_port, (H, host_port))  # type: ignore[arg-type]
        if self.spec.command:
            container.with_command(_fill(self.spec.command, ports))
        began = time.monotonic()
        container.start()
        wrapped = container.get_wrapped_container()
        env = self.spec.settings(ports)
        self.state = RunState(
            name=self.name,
            mode="docker",
            env=env,
            containers=[wrapped.id],
            extra={"image": self.spec.image},
        )
        self.state.save()
        try:
            procs.wait_until(
                lambda: self.provider.probe(env),
                what=f"{self.name} container",
                timeout=self.start_timeout,
            )
        except BaseException:
            self.stop()
            raise
        self.state.start_seconds = time.monotonic() - began
        self.state.save()
        return env

    def stop(self) -> None:
        """Remove exactly the containers we recorded."""
        if self.state is not None:
            for container_id in self.state.containers:
                subprocess.run(
                    ["docker", "rm", "-f", "-v", container_id],
                    capture_output=True,
                    check=False,
                    timeout=60,
                )
        RunState.forget(self.name)
        self.state = None

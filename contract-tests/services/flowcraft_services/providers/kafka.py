"""Apache Kafka in KRaft mode (no ZooKeeper), assembled from Maven Central."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

from . import kafka_client

VERSION = "4.1.1"
ARTIFACTS = (
    f"org.apache.kafka:kafka_2.13:{VERSION}",
    # Kafka logs through SLF4J 1.x; this binds it to the log4j2 that Kafka already ships.
    "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3",
)
JVM = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
)

LOG4J2 = """\
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
"""


def prepare(workdir: Path, port: int, controller_port: int) -> list[str]:
    """Write a one-node KRaft config into ``workdir`` and format its log dir; return the
    command that runs the server (again and again on the same data, as a restart does)."""
    lib = installers.maven_assemble(f"kafka-{VERSION}", ARTIFACTS)
    data = workdir / "data"
    props = workdir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{procs.LOOPBACK}:{controller_port}",
                f"listeners=PLAINTEXT://{procs.LOOPBACK}:{port},"
                f"CONTROLLER://{procs.LOOPBACK}:{controller_port}",
                f"advertised.listeners=PLAINTEXT://{procs.LOOPBACK}:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                # One node: internal topics cannot have more replicas than that.
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # Tests want a consumer group to form at once, not after the 3 s default delay.
                "group.initial.rebalance.delay.ms=0",
                # Tests kill workers by the dozen and want their partitions back in seconds,
                # with either group protocol: these are the floors a group's own session and
                # heartbeat settings may go down to (the KIP-848 ones are 45 s and 5 s by
                # default); the defaults stay Kafka's, so clients set what they need.
                "group.min.session.timeout.ms=1000",
                "group.consumer.min.session.timeout.ms=1000",
                "group.consumer.min.heartbeat.interval.ms=100",
                "auto.create.topics.enable=true",
                "delete.topic.enable=true",
                "",
            ]
        )
    )
    log4j = workdir / "log4j2.properties"
    log4j.write_text(LOG4J2)
    java = [installers.java(), *JVM, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*"]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    installers.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
        what="formatting the KRaft log dir",
        cwd=workdir,
    )
    return [*java, "kafka.Kafka", str(props)]


class KafkaService(LocalService):
    """A single combined broker+controller node, all listeners on 127.0.0.1."""

    name: ClassVar[str] = "kafka"
    summary: ClassVar[str] = f"Apache Kafka {VERSION}, KRaft (Maven Central)"
    env_vars: ClassVar[tuple[str, ...]] = ("KAFKA_BOOTSTRAP_SERVERS",)
    start_timeout: ClassVar[float] = 120.0

    def install(self) -> None:
        """Assemble Kafka's jars from Maven Central once."""
        installers.maven_assemble(f"kafka-{VERSION}", ARTIFACTS)

    def launch(self, workdir: Path) -> Launch:
        """Format a fresh KRaft log dir, then start the server."""
        port, controller_port = procs.free_port(), procs.free_port()
        argv = prepare(workdir, port, controller_port)
        proc = procs.spawn(argv, log_path=self.log_path, cwd=workdir)
        return Launch(
            [proc],
            {"KAFKA_BOOTSTRAP_SERVERS": f"{procs.LOOPBACK}:{port}"},
            {"controller_port": controller_port},
        )

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Fetch metadata with a broker in it."""
        kafka_client.probe(env["KAFKA_BOOTSTRAP_SERVERS"])

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete topics and consumer groups."""
        kafka_client.wipe(env["KAFKA_BOOTSTRAP_SERVERS"])

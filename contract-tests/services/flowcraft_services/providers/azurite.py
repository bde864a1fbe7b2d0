"""Azurite's queue service, Microsoft's Azure Storage emulator, from npm."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

# 3.35.0 is the newest Azurite that runs on Node 20; later ones need Node >= 21.
NPM_SPEC = "azurite@3.35.0"
ACCOUNT = "devstoreaccount1"
# Azurite's published development key: it is public and only works against the emulator.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def connection_string(queue_endpoint: str) -> str:
    """Return the connection string for the development account at an endpoint."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint={queue_endpoint}/{ACCOUNT};"
    )


class AzuriteService(LocalService):
    """azurite-queue in memory (run directly, not through npx, which would orphan it)."""

    name: ClassVar[str] = "azurite"
    summary: ClassVar[str] = "Azurite 3.35.0 queue service (npm)"
    env_vars: ClassVar[tuple[str, ...]] = ("AZURE_STORAGE_CONNECTION_STRING",)
    start_timeout: ClassVar[float] = 60.0

    def install(self) -> None:
        """Install Azurite into its cached npm prefix."""
        installers.npm_install(NPM_SPEC, "azurite-queue")

    def launch(self, workdir: Path) -> Launch:
        """Start the queue service on a free loopback port."""
        exe = installers.npm_install(NPM_SPEC, "azurite-queue")
        port = procs.free_port()
        proc = procs.spawn(
            [
                str(exe),
                "--queueHost",
                procs.LOOPBACK,
                "--queuePort",
                str(port),
                "--inMemoryPersistence",
                "--disableTelemetry",
                # The current Python SDK sends an API version newer than 3.35.0 knows.
                "--skipApiVersionCheck",
                "--loose",
            ],
            log_path=self.log_path,
            cwd=workdir,
        )
        endpoint = f"http://{procs.LOOPBACK}:{port}"
        return Launch([proc], {"AZURE_STORAGE_CONNECTION_STRING": connection_string(endpoint)})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """List queues."""
        from azure.storage.queue import QueueServiceClient

        service = QueueServiceClient.from_connection_string(
            env["AZURE_STORAGE_CONNECTION_STRING"],
            retry_total=0,
            connection_timeout=2,
        )
        list(service.list_queues())

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete every queue."""
        from azure.storage.queue import QueueServiceClient

        service = QueueServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        for queue in list(service.list_queues()):
            service.delete_queue(queue.name)

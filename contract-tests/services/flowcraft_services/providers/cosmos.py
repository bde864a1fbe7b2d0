"""A Cosmos DB SQL-API server from npm (@vercel/cosmosdb-server)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

NPM_SPEC = "@vercel/cosmosdb-server@1.0.1"
# The package's command line cannot turn on keep-alive, and without it the server answers every
# request with "Connection: close": each request then pays a TLS handshake (most of a
# client's CPU per request here), which Cosmos DB itself never asks for. So the server is
# started from its library, as its command line does, with keepAlive on.
_SERVE = """
const [lib, host, port] = process.argv.slice(1);
const server = require(lib).createHttpsServer({ keepAlive: true });
server.listen(Number(port), host, () => {
  console.log(`Ready to accept HTTPS connections at ${host}:${port}`);
});
"""
# The Cosmos emulator's published key; the server accepts any valid base64 key.
KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="


def client(env: Mapping[str, str]) -> Any:
    """Return an azure-cosmos client; the server's certificate is self-signed."""
    from azure.cosmos import CosmosClient

    # Emulators advertise their own idea of their address (a container's internal port, for
    # one); endpoint discovery off keeps every request on the endpoint we were given.
    return CosmosClient(
        env["COSMOS_ENDPOINT"],
        credential=env["COSMOS_KEY"],
        connection_verify=False,
        retry_total=0,
        connection_timeout=5,
        enable_endpoint_discovery=False,
    )


@contextmanager
def quiet_tls() -> Iterator[None]:
    """Hide urllib3's warning about the self-signed certificate we knowingly accept.

    A process-wide filter, not catch_warnings(): the Cosmos client also makes requests from
    its own threads, where a scoped filter does not reach.
    """
    from urllib3.exceptions import InsecureRequestWarning

    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    yield


class CosmosService(LocalService):
    """cosmosdb-server over HTTPS with a self-signed certificate, on a free loopback port."""

    name: ClassVar[str] = "cosmos"
    summary: ClassVar[str] = "@vercel/cosmosdb-server 1.0.1 (Cosmos DB SQL API, npm)"
    env_vars: ClassVar[tuple[str, ...]] = ("COSMOS_ENDPOINT", "COSMOS_KEY")
    start_timeout: ClassVar[float] = 60.0

    def install(self) -> None:
        """Install the server into its cached npm prefix."""
        installers.npm_install(NPM_SPEC, "cosmosdb-server")

    def launch(self, workdir: Path) -> Launch:
        """Start the server; its output goes to a file (it logs a stack trace per 500)."""
        installers.npm_install(NPM_SPEC, "cosmosdb-server")
        node = installers.require_tool("node", "install Node.js (Debian: apt-get install nodejs)")
        lib = installers.npm_package_dir(NPM_SPEC)
        port = procs.free_port()
        proc = procs.spawn(
            [node, "-e", _SERVE, str(lib), procs.LOOPBACK, str(port)],
            log_path=self.log_path,
            cwd=workdir,
        )
        return Launch(
            [proc],
            {
                "COSMOS_ENDPOINT": f"https://{procs.LOOPBACK}:{port}/",
                "COSMOS_KEY": KEY,
            },
        )

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """List databases."""
        with quiet_tls():
            list(client(env).list_databases())

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete every database."""
        with quiet_tls():
            cosmos = client(env)
            for database in list(cosmos.list_databases()):
                cosmos.delete_database(database["id"])

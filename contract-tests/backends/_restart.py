"""Private servers for the server-restart test (``restartable()`` of a fixture): processes of the
test's own that it SIGKILLs and starts again on the same ports and data, so that killing them
disturbs nothing else that shares the machine's servers."""

from __future__ import annotations

import logging
import random
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flowcraft_services import installers, procs
from flowcraft_services.providers.redis import RedisService

__all__ = ["PrivateServer", "PrivateServers", "aof_redis", "restart_port"]

_log = logging.getLogger("flowcraft.contract")


class PrivateServer:
    """One server process: the same command on the same ports and data every time it starts.

    Args:
        name: For messages.
        workdir: Its working directory; its output goes to ``server.log`` there.
        argv: Its command.
        probe: Raises until the server answers (a provider's ``probe``).
        env: What a client needs to reach it (``REDIS_URL`` …).
        process_env: The process's environment (default: this one's).
        user: The user it runs as (a server that refuses root).
        start_timeout: Seconds a start may take.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        argv: list[str],
        probe: Callable[[Mapping[str, str]], None],
        env: dict[str, str],
        *,
        process_env: Mapping[str, str] | None = None,
        user: str | None = None,
        start_timeout: float = 120,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.argv = argv
        self.probe = probe
        self.env = env
        self.process_env = process_env
        self.user = user
        self.start_timeout = start_timeout
        self.process: procs.ProcessRef | None = None

    def start(self) -> None:
        log = self.workdir / "server.log"
        self.process = procs.spawn(
            self.argv, log_path=log, env=self.process_env, cwd=self.workdir, user=self.user
        )
        procs.wait_until(
            lambda: self.probe(self.env),
            what=f"private {self.name} start",
            timeout=self.start_timeout,
            proc=self.process,
            log_path=log,
        )

    def kill(self) -> None:
        # The whole tree at once (PostgreSQL's backends, the Erlang VM under its start
        # script): a postmaster killed alone leaves backends holding its shared memory.
        process, self.process = self.process, None
        if process is not None:
            procs.stop(process, sig=signal.SIGKILL)


class PrivateServers:
    """A deployment's servers, started, SIGKILLed and restarted together."""

    def __init__(self, servers: Sequence[PrivateServer]) -> None:
        self.servers = list(servers)

    @property
    def env(self) -> dict[str, str]:
        """What clients need to reach them, all servers' variables together."""
        return {k: v for server in self.servers for k, v in server.env.items()}

    def _each(self, action: Callable[[PrivateServer], None]) -> None:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            for future in [pool.submit(action, server) for server in self.servers]:
                future.result()

    def start(self) -> None:
        self._each(PrivateServer.start)

    def restart(self, down_for: float) -> None:
        """All killed at once, ``down_for`` seconds down, then started again."""
        self._each(PrivateServer.kill)
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        # Their data goes with the test's directory: nothing to shut down cleanly for.
        self._each(PrivateServer.kill)

    def keep_logs(self, label: str, tail: int = 40) -> Path:
        """Copy every server's log out of the test's directory (which goes with the test) and
        report where, with the end of each: what a failed restart test is diagnosed from.

        Returns:
            The directory the logs were copied to.
        """
        kept = Path(tempfile.mkdtemp(prefix=f"flowcraft-restart-{label}-"))
        for server in self.servers:
            log = server.workdir / "server.log"
            if not log.exists():
                continue
            shutil.copy(log, kept / f"{server.name}.log")
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            _log.warning("private %s log (end of it):\n%s", server.name, "\n".join(lines))
        _log.warning("private servers' logs kept in %s", kept)
        return kept


def restart_port() -> int:
    """A free port for a server that starts again on it, below the kernel's ephemeral range.

    A port from the ephemeral range (``procs.free_port``) is free only until some process's
    outgoing connection is given it as its local port, which any process on the machine may be
    while the server is down, the reconnecting clients of the test included: the server then
    fails to start again with ``eaddrinuse`` (seen on RabbitMQ's AMQP port under load). Below
    that range only a listener takes a port.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low <= 11000:
        return procs.free_port()
    for _ in range(200):
        port = random.randrange(10000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((procs.LOOPBACK, port))
            except OSError:
                continue
        return port
    return procs.free_port()


def aof_redis(home: Path) -> PrivateServer:
    """A Redis server with ``appendfsync always``: the durability under which a killed
    process loses no acknowledged write."""
    home.mkdir()
    port = restart_port()
    redis_server = installers.require_tool("redis-server", "apt-get install redis-server")
    return PrivateServer(
        "redis",
        home,
        [
            redis_server,
            *("--port", str(port), "--bind", procs.LOOPBACK),
            *("--dir", str(home), "--save", "", "--daemonize", "no"),
            *("--appendonly", "yes", "--appendfsync", "always"),
        ],
        RedisService.probe,
        {"REDIS_URL": f"redis://{procs.LOOPBACK}:{port}/0"},
    )

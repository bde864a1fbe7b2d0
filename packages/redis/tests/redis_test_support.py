"""Helpers of the flowcraft-redis tests: private redis-server processes and the TS client.

A test that restarts or cripples its server gets a :class:`RedisServer` of its own (own port,
own pid, own data directory), so it never disturbs the shared server other tests use.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

__all__ = ["TS_CLIENT_DIR", "RedisServer", "TsClient", "redis_server_binary"]

TS_CLIENT_DIR = Path(__file__).parent / "ts-client"
_LOOPBACK = "127.0.0.1"


def redis_server_binary() -> str:
    """The redis-server executable, installed from Debian when missing and possible."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from flowcraft_services import installers
    except ImportError:
        raise RuntimeError(
            "redis-server is not on PATH: install it (apt-get install redis-server) or the"
            " flowcraft_services tooling (pip install -e contract-tests/services)"
        ) from None
    installers.apt_install(["redis-server"])
    return installers.require_tool("redis-server", "apt-get install redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on a fixed loopback port, which can be crashed and restarted.

    Args:
        workdir: Data directory (the AOF lives here, so it survives restarts).
        persistent: Turn on the append-only file with ``appendfsync always``, the deployment
            assumption under which a restart loses no acknowledged write.
        config: Extra ``--name value`` settings.
    """

    def __init__(
        self, workdir: Path, *, persistent: bool = True, config: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.persistent = persistent
        self.config = dict(config or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{_LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The running server's pid."""
        return None if self._proc is None else self._proc.pid

    def _argv(self) -> list[str]:
        settings = {
            "port": str(self.port),
            "bind": _LOOPBACK,
            "dir": str(self.workdir),
            "save": "",
            "appendonly": "yes" if self.persistent else "no",
            "appendfsync": "always",
            "daemonize": "no",
            "protected-mode": "yes",
            **self.config,
        }
        argv = [redis_server_binary()]
        for name, value in settings.items():
            argv += [f"--{name}", value]
        return argv

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers PING (after loading its AOF)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "server.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                self._argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.workdir}/server.log")
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal the server (SIGTERM: clean shutdown, SIGKILL: a crash) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> None:
        """Stop the server, stay down ``down_for`` seconds, and start it on the same port."""
        self.stop(sig)
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        """A synchronous client (for the test's own checks)."""
        return redis.Redis.from_url(self.url, socket_timeout=10, decode_responses=True)


class TsClient:
    """``ts-client/client.mjs``: starts runs and polls their status as a TS client does.

    Args:
        node: The ``node`` executable.
    """

    def __init__(self, node: str) -> None:
        self.node = node

    def run(
        self,
        redis_url: str,
        runs: Sequence[Mapping[str, Any]],
        *,
        queue_name: str = "flowcraft-queue",
        preset_version: bool = True,
        timeout: float = 60.0,
    ) -> dict[str, str | None]:
        """Start ``runs`` (``runId``, ``blueprint``, ``initialContext``) and wait for each
        status; the raw ``workflow:status:<runId>`` text per run (None if it never came)."""
        spec = {
            "redisUrl": redis_url,
            "queueName": queue_name,
            "presetVersion": preset_version,
            "timeoutMs": int(timeout * 1000),
            "runs": list(runs),
        }
        done = subprocess.run(
            [self.node, str(TS_CLIENT_DIR / "client.mjs")],
            input=json.dumps(spec).encode(),
            capture_output=True,
            timeout=timeout + 30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"TS client failed ({done.returncode}):\n{done.stderr.decode(errors='replace')}"
            )
        statuses: dict[str, str | None] = json.loads(done.stdout)["statuses"]
        return statuses

"""The provider API: one `Service` subclass per server, local processes or otherwise."""

from __future__ import annotations

import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import procs
from .errors import ServiceError
from .paths import state_dir
from .procs import ProcessRef
from .state import RunState

_BIND_ATTEMPTS = 3


class Service(ABC):
    """A server the backends are tested against.

    Subclasses say how to talk to the server (`probe`, `wipe`, shared by every way of running
    it) and, for local providers, how to install and launch it.

    Attributes:
        name: Registry name, used on the command line and in state files.
        summary: One line for `status` and the docs.
        env_vars: Connection settings this provider exports; the first one, when already set
            in the environment, means "use that server, start nothing".
        start_timeout: Seconds a start may take before it is reported as failed.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    env_vars: ClassVar[tuple[str, ...]]
    start_timeout: ClassVar[float] = 120.0

    mode: ClassVar[str] = "local"

    def __init__(self) -> None:
        self.state: RunState | None = RunState.load(self.name)

    # --- talking to the server (shared by local, docker and external modes) -----------------

    @classmethod
    @abstractmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Make one real client call; raise if the server cannot serve it yet."""

    @classmethod
    @abstractmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete all data the tests created, leaving the server running."""

    # --- lifecycle ------------------------------------------------------------------------

    def install(self) -> None:  # noqa: B027 - providers with nothing to install keep this
        """Install whatever the server needs and is missing; cheap when nothing is."""

    @abstractmethod
    def start(self) -> dict[str, str]:
        """Start the server (or reuse a running one) and return its connection settings."""

    @abstractmethod
    def stop(self) -> None:
        """Stop exactly what `start` started."""

    @property
    def env(self) -> dict[str, str]:
        """Connection settings of the running server."""
        if self.state is None:
            raise ServiceError(
                f"{self.name} is not running; run `nox -s services -- up {self.name}`"
            )
        return dict(self.state.env)

    def ready(self) -> None:
        """Make one real client call against the running server."""
        self.probe(self.env)

    def reset(self) -> None:
        """Return the running server to an empty state between tests."""
        self.wipe(self.env)

    def running(self) -> bool:
        """Tell whether this provider's server is up and answering."""
        if self.state is None or not self.state.alive():
            return False
        try:
            self.ready()
        except Exception:  # any client failure means "not usable"
            return False
        return True

    def describe(self) -> dict[str, Any]:
        """Return facts for `status`: mode, PIDs, memory, settings."""
        if self.state is None:
            return {"name": self.name, "running": False}
        return {
            "name": self.name,
            "mode": self.state.mode,
            "running": self.state.alive(),
            "pids": [p.pid for p in self.state.processes],
            "containers": self.state.containers,
            "rss_mb": round(procs.rss_bytes(self.state.processes) / 2**20),
            "start_seconds": round(self.state.start_seconds, 2),
            "env": self.state.env,
        }


@dataclass
class Launch:
    """What a local provider's `launch` started."""

    processes: list[ProcessRef]
    env: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


class LocalService(Service):
    """A server run as processes on this machine, bound to 127.0.0.1, stopped by PID."""

    # Signal for a clean shutdown; PostgreSQL, for one, wants SIGINT for a fast one.
    stop_signal: ClassVar[int] = 15

    @abstractmethod
    def launch(self, workdir: Path) -> Launch:
        """Start the server's processes with data and logs in `workdir`; do not wait."""

    def after_ready(self, launch: Launch) -> None:
        """Hook run once the server answers, e.g. to record helper processes it spawned."""

    @property
    def workdir(self) -> Path:
        """Private directory for this server's data, config and log."""
        return state_dir() / self.name

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr."""
        return self.workdir / "server.log"

    def start(self) -> dict[str, str]:
        """Install if needed, launch, wait for a real client call to succeed, record state."""
        if self.running():
            return self.env
        if self.state is not None:
            # A previous run died or stopped answering: clear what is left of it first.
            self.stop()
        self.install()
        began = time.monotonic()
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            try:
                return self._start_once(began)
            except ServiceError as exc:
                # Free ports are picked before the server binds them; a server starting in
                # parallel can take one first. Retry with fresh ports.
                if attempt == _BIND_ATTEMPTS or "Address already in use" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, began: float) -> dict[str, str]:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        launch = self.launch(self.workdir)
        self.state = RunState(
            name=self.name,
            mode="local",
            env=launch.env,
            processes=launch.processes,
            workdir=str(self.workdir),
            extra=launch.extra,
        )
        # Saved before waiting so that `down` can stop a server that hangs during start-up.
        self.state.save()
        try:
            procs.wait_until(
                lambda: self.probe(launch.env),
                what=f"{self.name} start",
                timeout=self.start_timeout,
                proc=launch.processes[0],
                log_path=self.log_path,
            )
            self.after_ready(launch)
        except BaseException:
            self.stop()
            raise
        self.state.processes = launch.processes
        self.state.start_seconds = time.monotonic() - began
        self.state.started_at = time.time()
        self.state.save()
        self.check_loopback()
        return dict(launch.env)

    def check_loopback(self) -> None:
        """Refuse to keep a server that listens beyond loopback."""
        assert self.state is not None
        wide = [
            (addr, port)
            for addr, port in procs.listening_addresses(self.state.processes)
            if not procs.is_loopback(addr)
        ]
        if wide:
            self.stop()
            raise ServiceError(f"{self.name} listened beyond loopback on {wide}; stopped it")

    def stop(self) -> None:
        """Stop the recorded processes (and their descendants) and forget the state."""
        if self.state is not None:
            for ref in self.state.processes:
                procs.stop(ref, sig=self.stop_signal)
        RunState.forget(self.name)
        self.state = None

"""Run state of a started server, persisted as JSON so another process can find and stop it."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .paths import state_dir
from .procs import ProcessRef


@dataclass
class RunState:
    """What one `start()` left running: how to reach it and exactly what to stop.

    Attributes:
        name: Provider name.
        mode: "local" (processes on this machine), "docker" (a container) or "external"
            (settings given by environment variables; nothing to stop).
        env: Connection settings, as environment variables.
        processes: Processes to stop, by PID and start time.
        containers: Docker container ids to remove.
        workdir: Private directory holding the server's data, config and log.
        started_at: Wall-clock time when the server became ready.
        start_seconds: Time from `start()` to the first successful client call.
        extra: Provider-specific facts (chosen ports, version) needed to stop or reset it.
    """

    name: str
    mode: str
    env: dict[str, str]
    processes: list[ProcessRef] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    workdir: str = ""
    started_at: float = field(default_factory=time.time)
    start_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def path_for(name: str) -> Path:
        """Return the state file of a provider."""
        return state_dir() / f"{name}.json"

    def save(self) -> None:
        """Write the state atomically, so a concurrent `status` never reads half a file."""
        data = asdict(self)
        target = self.path_for(self.name)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(target)

    @classmethod
    def load(cls, name: str) -> RunState | None:
        """Read a provider's state, or None if it was never started or was stopped."""
        path = cls.path_for(name)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        data["processes"] = [ProcessRef(**p) for p in data.get("processes", [])]
        return cls(**data)

    @classmethod
    def forget(cls, name: str) -> None:
        """Delete a provider's state file."""
        with contextlib.suppress(FileNotFoundError):
            cls.path_for(name).unlink()

    def alive(self) -> bool:
        """Tell whether every recorded process is still running."""
        return all(p.alive() for p in self.processes)

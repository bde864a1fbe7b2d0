"""What the contract suite needs from a backend: the fixture protocol and shared helpers.

A backend's fixture module is ``backends/<name>.py`` (``-`` in a backend name is ``_`` in the
module name) and defines ``Fixture``, implementing :class:`BackendFixture`. Fixtures extend
each other by import (``from backends.redis import Fixture as RedisFixture``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter

__all__ = ["BackendFixture", "spawn_worker"]


class BackendFixture(Protocol):
    """One backend under test. A *deployment* is one test's isolated share of the servers
    (a queue and a key namespace of its own); every adapter of a test shares it."""

    name: str
    """The backend's name as ``flowcraft worker --backend`` knows it."""

    def provision(self) -> None:
        """Start or reach the servers; raise with the reason when impossible (the suite
        then fails, it never skips)."""

    def deployment(self, *, lease: float) -> Any:
        """Fresh shared state for one test; jobs are leased ``lease`` seconds."""

    def adapter(
        self,
        deployment: Any,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``; closed by :meth:`reset`."""

    def stores(self, deployment: Any) -> tuple[CoordinationStore, ContextStore]:
        """The deployment's coordination and context stores, on connections of their own."""

    def dead_letters(self, deployment: Any) -> list[str]:
        """The reasons of the deployment's dead-lettered jobs."""

    def queued_jobs(self, deployment: Any) -> int:
        """How many jobs the deployment's queue holds (waiting, delayed or leased)."""

    def client_connections(self, deployment: Any, adapter: DistributedAdapter) -> int:
        """How many server connections ``adapter`` holds open now, counted by the server where
        it can tell them apart (0 for a backend without connections)."""

    def restartable(
        self, *, lease: float
    ) -> AbstractAsyncContextManager[tuple[Any, Callable[[float], Awaitable[None]]]]:
        """Optional: a deployment on servers of its own, and how to restart them: kill them
        hard, wait the given seconds, start them again with their data. A fixture whose
        servers cannot be restarted (an emulator without persistence) leaves it out, and the
        restart test skips naming that."""

    async def inject(self, deployment: Any, body: str) -> None:
        """Put a raw (possibly malformed) job on the queue, as a foreign producer could."""

    async def reset(self, deployment: Any) -> None:
        """Close the test's adapters and delete everything the test left."""

    def spawn_worker(
        self, deployment: Any, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` with ``--app app`` (for the
        SIGKILL and chaos tests); a backend whose workers cannot live in another process
        sets ``spawn_worker = None`` instead, and those tests skip with that reason."""


def spawn_worker(
    backend: str, app: str, env: Mapping[str, str], **popen: Any
) -> subprocess.Popen[bytes]:
    """Start ``python -m flowcraft worker --backend <backend> --app <app>`` with ``env`` added
    to this process's environment (fixtures put their deployment's settings there).

    With ``FLOWCRAFT_WORKER_PYTHON`` set (nox ``wheels``), the worker is that interpreter's
    ``flowcraft`` command instead: a fresh environment holding only the backend's built wheels.
    """
    python = os.environ.get("FLOWCRAFT_WORKER_PYTHON")
    program = (
        [str(Path(python).parent / "flowcraft")] if python else [sys.executable, "-m", "flowcraft"]
    )
    command = [*program, "worker", "--backend", backend, "--app", app]
    return subprocess.Popen(command, env={**os.environ, **env}, **popen)

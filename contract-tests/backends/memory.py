"""Contract-suite fixture of the in-memory reference backend (nothing to provision)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft.memory import MemoryAdapter, MemoryBackend

__all__ = ["Fixture"]


class Fixture:
    """The memory backend with its one-step hop (see ``backends/_fixture.py``)."""

    name = "memory"
    spawn_worker = None
    """Its workers share one process's memory: there is no worker process to kill."""
    hop_step: bool | Literal["split"] = True

    def provision(self) -> None:
        """Nothing to start."""

    def deployment(self, *, lease: float) -> MemoryBackend:
        """A fresh backend for one test."""
        return MemoryBackend(visibility=lease, max_deliveries=5, hop_step=self.hop_step)

    def adapter(
        self,
        deployment: MemoryBackend,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        return MemoryAdapter(deployment, registry=registry, blueprints=blueprints, **options)

    def stores(self, deployment: MemoryBackend) -> tuple[CoordinationStore, ContextStore]:
        """The deployment's coordination and context stores."""
        return deployment.coordination, deployment.context

    def dead_letters(self, deployment: MemoryBackend) -> list[str]:
        """The reasons of dead-lettered jobs."""
        return [letter.reason for letter in deployment.queue.dead_letters]

    def queued_jobs(self, deployment: MemoryBackend) -> int:
        """Jobs in the queue, leased ones included."""
        return len(deployment.queue)

    def client_connections(self, deployment: MemoryBackend, adapter: DistributedAdapter) -> int:
        """None: everything is in this process."""
        return 0

    async def inject(self, deployment: MemoryBackend, body: str) -> None:
        """Put a raw (possibly malformed) job on the queue."""
        deployment.queue.put(body)

    async def reset(self, deployment: MemoryBackend) -> None:
        """Drop everything the test left."""
        deployment.purge()

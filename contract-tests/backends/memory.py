"""Contract-suite fixture of the in-memory reference backend (nothing to provision)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.blueprint import Blueprint
from flowcraft.distributed import BaseDistributedAdapter, ContextStore, CoordinationStore
from flowcraft.memory import MemoryAdapter, MemoryBackend

__all__ = ["Fixture"]


class Fixture:
    """What the suite needs from a backend."""

    name = "memory"
    spawn_worker = None
    """Real backends may give a callable starting a worker subprocess (to SIGKILL it)."""

    def provision(self) -> None:
        """Start or reach the services; raise with the reason when impossible."""

    def deployment(self, *, lease: float) -> Any:
        """Fresh shared state for one test."""
        return MemoryBackend(visibility=lease, max_deliveries=5)

    def adapter(
        self,
        deployment: Any,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> BaseDistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        return MemoryAdapter(deployment, registry=registry, blueprints=blueprints, **options)

    def stores(self, deployment: Any) -> tuple[CoordinationStore, ContextStore]:
        """The deployment's coordination and context stores."""
        backend: MemoryBackend = deployment
        return backend.coordination, backend.context

    def dead_letters(self, deployment: Any) -> list[str]:
        """The reasons of dead-lettered jobs."""
        backend: MemoryBackend = deployment
        return [letter.reason for letter in backend.queue.dead_letters]

    async def inject(self, deployment: Any, body: str) -> None:
        """Put a raw (possibly malformed) job on the queue."""
        backend: MemoryBackend = deployment
        backend.queue.put(body)

    async def reset(self, deployment: Any) -> None:
        """Drop everything the test left."""
        backend: MemoryBackend = deployment
        backend.purge()

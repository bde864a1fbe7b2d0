"""Contract-suite fixture of the memory backend with core's split hop: common hops are claimed
in one coordination step, then the context written and the successors enqueued apart, as on a
backend whose stores are on different servers (:mod:`flowcraft.distributed._splithop`)."""

from __future__ import annotations

from typing import Literal

from backends.memory import Fixture as MemoryFixture

__all__ = ["Fixture"]


class Fixture(MemoryFixture):
    """The memory fixture with ``hop_step="split"``."""

    name = "memory-split"
    hop_step: bool | Literal["split"] = "split"

"""Contract-suite fixture of the memory backend without its one-step hop: every hop takes the
generic path, as on a backend that has no :class:`~flowcraft.distributed.HopCommitter`."""

from __future__ import annotations

from typing import Literal

from backends.memory import Fixture as MemoryFixture

__all__ = ["Fixture"]


class Fixture(MemoryFixture):
    """The memory fixture with ``hop_step`` off."""

    name = "memory-generic"
    hop_step: bool | Literal["split"] = False

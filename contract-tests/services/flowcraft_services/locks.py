"""Cross-process file locks, so parallel `up` calls never run two installs of one thing."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from .paths import cache_dir


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock named `name` for the duration of the block."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

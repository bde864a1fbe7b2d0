"""Unique 32-hex-digit tokens (commit receipts, fence writers, delayed-set entries).

A random per-process prefix and a counter: unique across processes and calls like a UUID4,
at a fraction of its cost on the hot path (one per hop).
"""

from __future__ import annotations

import itertools
import os

__all__ = ["token"]

_PREFIX = os.urandom(8).hex()
_COUNT = itertools.count()


def _reseed() -> None:
    # A forked child must not repeat its parent's tokens.
    global _PREFIX
    _PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_reseed)


def token() -> str:
    """A new token: 32 lowercase hex digits."""
    return f"{_PREFIX}{next(_COUNT) & 0xFFFFFFFFFFFFFFFF:016x}"

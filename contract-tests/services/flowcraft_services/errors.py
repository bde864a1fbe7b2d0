"""The one exception every provider raises, so callers can report it plainly."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A server could not be installed, started, reset or stopped; the message says why."""

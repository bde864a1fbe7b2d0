"""Helpers every store implementation needs: the value codec, patch validation, retry-safe
write tokens and driver-error translation."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import orjson

from flowcraft.errors import AdapterError, ConnectionFailed, SerializationError
from flowcraft.node import PatchOperation

__all__ = [
    "decode_value",
    "encode_value",
    "patch_writes",
    "translate_errors",
    "write_token",
]


def encode_value(key: str, value: Any) -> bytes:
    """``value`` as JSON bytes, the form every store keeps context values in.

    Raises:
        SerializationError: The value is not JSON-serialisable; the message names ``key``.
    """
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise SerializationError(
            f"context key '{key}' holds a value that is not JSON: {exc}"
        ) from exc


def decode_value(raw: bytes | str | None) -> Any:
    """A stored value; None for an absent one (or the empty string a TS client writes for
    ``undefined``)."""
    if raw is None or raw == b"" or raw == "":
        return None
    return orjson.loads(raw)


def patch_writes(operations: Iterable[PatchOperation]) -> tuple[dict[str, bytes], list[str]]:
    """The net writes of patch ``operations``: encoded values by key, and keys to delete.

    A key is in at most one of the two; a later operation on a key replaces an earlier one.
    Everything is validated before the caller writes anything, so an invalid patch applies
    nothing.

    Raises:
        ValueError: An operation is not a set (with a value) or delete of a string key.
        SerializationError: A value is not JSON.
    """
    sets: dict[str, bytes] = {}
    deletes: dict[str, None] = {}
    for op in operations:
        kind, key = op.get("op"), op.get("key")
        if not isinstance(key, str) or kind not in ("set", "delete"):
            raise ValueError(f"invalid patch operation {op!r}: need op set/delete and a key")
        if kind == "set":
            if "value" not in op:
                raise ValueError(f"patch operation {op!r} sets no value")
            sets[key] = encode_value(key, op["value"])
            deletes.pop(key, None)
        else:
            sets.pop(key, None)
            deletes[key] = None
    return sets, list(deletes)


_PREFIX = os.urandom(8).hex()
_COUNT = itertools.count()


def _reseed() -> None:
    # A forked child must not repeat its parent's tokens.
    global _PREFIX
    _PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_reseed)


def write_token() -> str:
    """A token unique across processes and calls: 32 lowercase hex digits.

    A random per-process prefix and a counter, at a fraction of a UUID4's cost. Stores use it
    to recognise their own earlier attempt when a driver retries a write whose reply was lost
    (a set-if-absent that took effect must still read as won).
    """
    return f"{_PREFIX}{next(_COUNT) & 0xFFFFFFFFFFFFFFFF:016x}"


class translate_errors:
    """Re-raise driver errors as Flowcraft's: ``retryable`` ones as
    :class:`~flowcraft.errors.ConnectionFailed` ("<service> unreachable: …"), other ``errors``
    as :class:`~flowcraft.errors.AdapterError` ("<service> error: …").

    A class rather than a generator-based context manager: stores wrap every call in it, and
    one instance serves all of them (``async with`` and plain ``with`` alike).
    """

    __slots__ = ("_errors", "_retryable", "_service")

    def __init__(
        self,
        service: str,
        retryable: tuple[type[BaseException], ...],
        errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._service = service
        self._retryable = retryable
        self._errors = errors

    def _translate(self, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, AdapterError):
            return
        if isinstance(exc, self._retryable):
            raise ConnectionFailed(f"{self._service} unreachable: {exc}") from exc
        if isinstance(exc, self._errors):
            raise AdapterError(f"{self._service} error: {exc}") from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._translate(exc)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._translate(exc)

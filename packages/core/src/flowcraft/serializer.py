"""JSON serialisation of context values and run state (orjson; never pickle).

:class:`JsonSerializer` writes plain JSON that the TypeScript Flowcraft reads. Besides the JSON
types (``dict`` with ``str`` keys, ``list``, ``str``, ``int`` within 64 bits, ``float``, ``bool``,
``None``) it accepts these documented extensions, all one-way (they load back as plain JSON):

* ``datetime``/``date``/``time`` → ISO-8601 strings (a naive ``datetime`` carries no offset);
* ``UUID`` → its canonical string; ``Enum`` → its value; dataclass instances → objects;
* ``tuple``, ``set`` and ``frozenset`` → arrays (sets sorted when their items are comparable);
* pydantic models → ``model_dump(mode="json")``; ``Decimal`` → ``str`` (no precision lost);
* non-``str`` dict keys (``int``, ``float``, ``bool``, ``None``, dates, ``UUID``, ``Enum``) →
  strings, as JavaScript does (keys that collide once stringified are both written).

Like JavaScript's ``JSON.stringify``, NaN and infinities become ``null``. Anything else (bytes,
arbitrary objects, integers beyond 64 bits, lone surrogates, circular structures, nesting deeper
than 254 levels) raises :class:`~flowcraft.errors.SerializationError` naming the problem: no
placeholder is ever written in place of a value.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, Protocol, runtime_checkable

import orjson
from pydantic import BaseModel

from flowcraft.errors import SerializationError

__all__ = [
    "JsonSerializer",
    "Serializer",
    "default_serializer",
]

_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


@runtime_checkable
class Serializer(Protocol):
    """Turns context values into text and back."""

    def dumps(self, value: Any) -> str:
        """Serialise ``value``; raises :class:`SerializationError` if it cannot be."""
        ...

    def loads(self, text: str | bytes) -> Any:
        """Parse ``text``; raises :class:`SerializationError` if it is not valid."""
        ...


def _default(value: Any) -> Any:
    """Encode the extension types orjson does not handle itself."""
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:  # unorderable items keep iteration order
            return list(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):
        return str(value)
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    raise TypeError(f"a value of type {name} is not JSON-serialisable")


class JsonSerializer:
    """The default :class:`Serializer`: orjson with the extensions listed in this module."""

    def dumps_bytes(self, value: Any) -> bytes:
        """Serialise ``value`` to UTF-8 JSON bytes.

        Raises:
            SerializationError: ``value`` contains something that is not JSON-serialisable, a
                circular reference, or nesting deeper than 254 levels.
        """
        try:
            return orjson.dumps(value, default=_default, option=_OPTIONS)
        except orjson.JSONEncodeError as exc:
            cause = exc.__cause__
            if cause is not None:
                problem = str(cause) or type(cause).__name__
            elif str(exc) == "Recursion limit reached":
                problem = "it is circular or nested deeper than 254 levels"
            else:
                problem = str(exc)
            raise SerializationError(f"Cannot serialise to JSON: {problem}") from exc

    def dumps(self, value: Any) -> str:
        """Serialise ``value`` to a JSON string.

        Raises:
            SerializationError: As :meth:`dumps_bytes`.
        """
        return self.dumps_bytes(value).decode()

    def loads(self, text: str | bytes) -> Any:
        """Parse JSON ``text`` (``str`` or UTF-8 ``bytes``).

        Raises:
            SerializationError: ``text`` is not valid JSON.
        """
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"Invalid JSON: {exc}") from exc


default_serializer: Final = JsonSerializer()

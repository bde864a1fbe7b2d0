"""A backend's settings dataclass read from a DSN, environment variables and keyword arguments
by one set of rules.

Every backend takes the same sources in the same order (its standard variables such as
``REDIS_URL``, then ``FLOWCRAFT_<NAME>_URL``, then ``FLOWCRAFT_<NAME>_<FIELD>``, then keyword
arguments), and a string from the environment or a DSN becomes the field's type by the same
rules, so ``FLOWCRAFT_<NAME>_CREATE=false`` is False in every backend and a typo in a name or a
number is an error that names the setting, not a default silently kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from flowcraft.errors import FlowcraftError

__all__ = ["InvalidSettings", "dsn_values", "env_settings", "merge_settings", "settings_env"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")


class InvalidSettings(FlowcraftError, ValueError):
    """A backend setting that does not exist or whose value does not parse as its type."""


def merge_settings(settings: S, values: Mapping[str, Any], *, backend: str) -> S:
    """``settings`` with ``values`` replacing fields; strings (from the environment or a DSN)
    are parsed as the field's type. The dataclass's own checks (``__post_init__``) run on the
    result.

    Raises:
        InvalidSettings: A name that is not a field, or a string that is not of its type.
    """
    known = {f.name for f in dataclasses.fields(settings) if f.init}
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            raise InvalidSettings(f"unknown {backend} backend setting {name!r}")
        typed[name] = _parse(backend, name, value, getattr(settings, name))
    return dataclasses.replace(settings, **typed)


def env_settings(
    cls: type[DataclassInstance],
    prefix: str,
    env: Mapping[str, str],
    standard: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``<prefix><FIELD>`` variables of ``env`` (e.g. ``FLOWCRAFT_SQS_LEASE_SECONDS``), by
    field name, as strings for :func:`merge_settings`; ``standard`` maps a field to a
    well-known variable (``"redis_url": "REDIS_URL"``) read when its own is not set."""
    found = {name: env[variable] for name, variable in (standard or {}).items() if variable in env}
    for item in dataclasses.fields(cls):
        variable = prefix + item.name.upper()
        if item.init and variable in env:
            found[item.name] = env[variable]
    return found


def settings_env(settings: DataclassInstance, prefix: str) -> dict[str, str]:
    """``settings`` as the ``<prefix><FIELD>`` variables :func:`env_settings` reads (a worker
    process started with them gets the same settings). None is written as an empty string;
    nested settings objects are left to the caller."""
    env: dict[str, str] = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if not item.init or dataclasses.is_dataclass(value):
            continue
        env[prefix + item.name.upper()] = "" if value is None else str(value)
    return env


def dsn_values(dsn: str, scheme: str) -> tuple[str, str, dict[str, str]]:
    """A ``<scheme>://<host>/<path>?<field>=<value>&…`` DSN as its host, its path (without
    slashes at either end) and its query parameters, each URL-decoded.

    Raises:
        InvalidSettings: ``dsn`` is not of ``scheme``.
    """
    parts = urlsplit(dsn)
    if parts.scheme != scheme:
        raise InvalidSettings(f"not a {scheme}:// DSN: {dsn!r}")
    return unquote(parts.netloc), unquote(parts.path.strip("/")), dict(parse_qsl(parts.query))


def _parse(backend: str, name: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
        return value
    text = value.strip()
    if isinstance(current, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise InvalidSettings(f"{backend} setting {name}: {value!r} is not a boolean")
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        kind = "an integer" if isinstance(current, int) else "a number"
        raise InvalidSettings(f"{backend} setting {name}: {value!r} is not {kind}") from None
    if current is None:
        return text or None
    return value

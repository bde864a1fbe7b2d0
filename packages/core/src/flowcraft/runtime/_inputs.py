"""Input resolution: what value a node receives (reference §4.2, with deterministic fan-in)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.context import OUTPUTS

__all__ = ["resolve_inputs", "resolve_reference"]


def resolve_reference(data: Mapping[str, Any], ref: str) -> Any:
    """Resolve one ``inputs`` reference against context data.

    ``_key`` reads the key verbatim; ``node.path.to.field`` walks into the output of ``node``;
    a bare ``name`` is the output of node ``name`` if it produced one, else the context key.
    """
    if ref[:1] == "_":
        return data.get(ref)
    base, dot, path = ref.partition(".")
    if not dot:
        key = OUTPUTS + ref
        return data[key] if key in data else data.get(ref)
    value = data.get(OUTPUTS + base)
    for step in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def resolve_inputs(data: Mapping[str, Any], inputs: str | Mapping[str, str]) -> Any:
    """Resolve a node's ``inputs``: one reference, or a mapping of field → reference."""
    if isinstance(inputs, str):
        return resolve_reference(data, inputs)
    return {name: resolve_reference(data, ref) for name, ref in inputs.items()}

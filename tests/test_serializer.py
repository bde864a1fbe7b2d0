"""Tests of the JSON serializer (design item 18)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from flowcraft.errors import FlowcraftError, SerializationError
from flowcraft.serializer import JsonSerializer, Serializer, default_serializer

S = JsonSerializer()


def roundtrip(value: Any) -> Any:
    text = S.dumps(value)
    assert isinstance(text, str)
    assert json.loads(text) == S.loads(text)  # plain JSON any reader accepts
    return S.loads(text)


def test_protocol_and_default_instance() -> None:
    assert isinstance(S, Serializer)
    assert isinstance(default_serializer, JsonSerializer)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.25,
        "",
        "text",
        [],
        {},
        [1, "a", None, [2, [3]], {"k": {"j": []}}],
        {"a": 1, "b": [True, None], "c": {"d": "e"}},
    ],
)
def test_json_types_round_trip(value: Any) -> None:
    assert roundtrip(value) == value


@pytest.mark.parametrize(
    "text", ["héllo", "日本語", "emoji 🎉", 'quote " and \\ backslash', "\x00\n\t\u2028", "𝔘"]
)
def test_unicode_round_trips(text: str) -> None:
    assert roundtrip({text: text}) == {text: text}


def test_dumps_bytes_and_loads_bytes() -> None:
    data = S.dumps_bytes({"a": "é"})
    assert isinstance(data, bytes)
    assert S.loads(data) == {"a": "é"}
    assert S.loads(data.decode()) == {"a": "é"}


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children)
        | st.dictionaries(st.text(alphabet=st.characters(exclude_categories=["Cs"])), children)
    ),
    max_leaves=20,
)


@given(JSON)
def test_any_json_value_round_trips(value: Any) -> None:
    assert S.loads(S.dumps(value)) == value


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model(BaseModel):
    name: str
    when: dt.date
    tags: set[str]


def test_extensions() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "datetime": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 5, 6, 7, 8, 9),
        "date": dt.date(2024, 5, 6),
        "time": dt.time(7, 8, 9),
        "uuid": ident,
        "enum": Colour.RED,
        "dataclass": Point(1, 2),
        "tuple": (1, 2),
        "set": {3, 1, 2},
        "frozenset": frozenset({"b", "a"}),
        "mixed_set": {1, "a"},
        "model": Model(name="m", when=dt.date(2024, 1, 2), tags={"x"}),
        "decimal": Decimal("1.10"),
    }
    loaded = roundtrip(value)
    assert loaded["datetime"] == "2024-05-06T07:08:09+00:00"
    assert loaded["naive"] == "2024-05-06T07:08:09"
    assert loaded["date"] == "2024-05-06"
    assert loaded["time"] == "07:08:09"
    assert loaded["uuid"] == str(ident)
    assert loaded["enum"] == "red"
    assert loaded["dataclass"] == {"x": 1, "y": 2}
    assert loaded["tuple"] == [1, 2]
    assert loaded["set"] == [1, 2, 3]  # sorted, so the output is deterministic
    assert loaded["frozenset"] == ["a", "b"]
    assert sorted(loaded["mixed_set"], key=str) == [1, "a"]
    assert loaded["model"] == {"name": "m", "when": "2024-01-02", "tags": ["x"]}
    assert loaded["decimal"] == "1.10"
    assert dt.datetime.fromisoformat(loaded["datetime"]) == value["datetime"]


def test_non_string_keys_become_strings() -> None:
    value = {1: "a", 2.5: "b", None: "d", dt.date(2024, 1, 2): "e"}
    assert roundtrip(value) == {"1": "a", "2.5": "b", "null": "d", "2024-01-02": "e"}
    assert roundtrip({True: "c"}) == {"true": "c"}


def test_nan_becomes_null_like_javascript() -> None:
    assert S.loads(S.dumps([float("nan"), float("inf")])) == [None, None]


def test_circular_structures_raise() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(SerializationError, match="circular"):
        S.dumps(looped)
    cyclic: dict[str, Any] = {}
    cyclic["self"] = {"again": cyclic}
    with pytest.raises(SerializationError, match="circular"):
        S.dumps({"context": cyclic})


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (Opaque(), "Opaque"),
        ({"nested": [object()]}, "builtins.object"),
        (b"bytes", "bytes"),
        (bytearray(b"x"), "bytearray"),
        (lambda: 1, "function"),
        (1 + 2j, "complex"),
        (2**64, "64-bit"),
        ({(1, 2): "tuple key"}, "key"),
        ("\ud800", "surrogates"),
    ],
)
def test_unsupported_values_raise(value: Any, fragment: str) -> None:
    with pytest.raises(SerializationError) as info:
        S.dumps(value)
    assert fragment in info.value.message
    assert isinstance(info.value, FlowcraftError)


@pytest.mark.parametrize(
    "text", ["", "{", "[1,", "{'a': 1}", "undefined", "NaN", "[1] x", b"\xff\xfe", "\ud800"]
)
def test_invalid_json_raises(text: str | bytes) -> None:
    with pytest.raises(SerializationError, match="Invalid JSON"):
        S.loads(text)


def test_no_placeholder_is_written_for_bad_values() -> None:
    with pytest.raises(SerializationError):
        S.dumps({"ok": 1, "bad": Opaque()})

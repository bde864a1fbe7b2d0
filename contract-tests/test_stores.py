"""Store contract: coordination atomicity and TTLs, context round-trips and atomic patches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Harness


async def test_increment_is_atomic_under_50_callers(harness: Harness) -> None:
    coordination, _ = harness.stores
    values = await asyncio.gather(*(coordination.increment("c:n", 60) for _ in range(50)))
    assert sorted(values) == list(range(1, 51))


async def test_set_if_not_exist_has_one_winner_among_50(harness: Harness) -> None:
    coordination, _ = harness.stores
    wins = await asyncio.gather(
        *(coordination.set_if_not_exist("c:lock", str(i), 60) for i in range(50))
    )
    assert wins.count(True) == 1
    assert await coordination.get("c:lock") == str(wins.index(True))


async def test_add_to_set_is_idempotent(harness: Harness) -> None:
    coordination, _ = harness.stores
    sizes = await asyncio.gather(
        *(coordination.add_to_set("c:s", f"m{i % 5}", 60) for i in range(50))
    )
    assert max(sizes) == 5
    assert await coordination.add_to_set("c:s", "m0", 60) == 5
    assert await coordination.members("c:s") == {f"m{i}" for i in range(5)}
    assert await coordination.remove_from_set("c:s", "m0") == 4


async def test_read_answers_strings_and_sets_in_order(harness: Harness) -> None:
    coordination, _ = harness.stores
    await coordination.set_if_not_exist("c:a", "1", 60)
    await coordination.add_to_set("c:s", "x", 60)
    await coordination.add_to_set("c:s", "y", 60)
    strings, sets = await coordination.read(["c:missing", "c:a"], ["c:s", "c:none"])
    assert strings == [None, "1"]
    assert sets == [{"x", "y"}, set()]
    assert await coordination.read([], []) == ([], [])


async def test_ttls_expire_and_extend(harness: Harness) -> None:
    coordination, _ = harness.stores
    assert await coordination.set_if_not_exist("c:short", "v", 0.2)
    assert await coordination.set_if_not_exist("c:kept", "v", 0.2)
    assert await coordination.extend_ttl("c:kept", 60)
    await asyncio.sleep(0.5)
    assert await coordination.get("c:short") is None
    assert await coordination.get("c:kept") == "v"
    assert not await coordination.extend_ttl("c:short", 60)
    await coordination.delete("c:kept")
    assert await coordination.get("c:kept") is None


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**53,
    3.25,
    "",
    "text",
    "ünïcödé ✓ 𝄞 中文",
    [],
    [1, "a", None, [2]],
    {},
    {"nested": {"list": [1.5, {"x": None}]}},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
async def test_context_round_trips_json(harness: Harness, value: Any) -> None:
    _, context = harness.stores
    await context.set("run", "key", value)
    assert await context.get("run", "key") == value
    assert await context.has("run", "key")
    assert (await context.to_dict("run"))["key"] == value


async def test_context_keys_with_dots_and_large_values(harness: Harness) -> None:
    _, context = harness.stores
    big = "x" * (1024 * 1024)
    await context.set("run", "_outputs.a.b", {"v": 1})
    await context.set("run", "big", big)
    assert await context.get_many("run", ["_outputs.a.b", "big", "missing"]) == {
        "_outputs.a.b": {"v": 1},
        "big": big,
    }
    assert await context.get("run", "_outputs.a") is None
    assert await context.delete("run", "big")
    assert not await context.delete("run", "big")
    await context.delete_run("run")
    assert await context.to_dict("run") == {}


async def test_context_patch_is_all_or_nothing(harness: Harness) -> None:
    _, context = harness.stores
    await context.set("run", "a", 1)
    with pytest.raises(ValueError, match="invalid patch operation"):
        await context.patch(
            "run",
            [{"op": "set", "key": "b", "value": 2}, {"op": "nope", "key": "a"}],
        )
    assert await context.to_dict("run") == {"a": 1}
    await context.patch(
        "run", [{"op": "set", "key": "b", "value": 2}, {"op": "delete", "key": "a"}]
    )
    assert await context.to_dict("run") == {"b": 2}


async def test_contexts_of_runs_are_separate(harness: Harness) -> None:
    _, context = harness.stores
    await context.set("r1", "k", 1)
    await context.set("r2", "k", 2)
    assert await context.get("r1", "k") == 1
    assert await context.get("r2", "k") == 2

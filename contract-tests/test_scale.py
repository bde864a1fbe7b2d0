"""Scale: one client process starts and waits on thousands of runs at once.

Every wait of a process shares one listener of the backend's result channel, and the client's
connection pools are bounded and blocking: a burst waits for a free connection and never fails
for want of one. ``FLOWCRAFT_WAITS`` sets the number of runs (default 2,000).
"""

from __future__ import annotations

import asyncio
import os

from conftest import Harness

from flowcraft import NodeContext, create_flow

WAITS = int(os.environ.get("FLOWCRAFT_WAITS", "2000"))
MAX_CONNECTIONS = 20
"""What one client may open by default, waits, starts and its queue producer included."""
T = 600.0


async def test_one_client_starts_and_awaits_thousands_of_runs_at_once(harness: Harness) -> None:
    async def double(ctx: NodeContext) -> int:
        return int(ctx.input) * 2

    harness.add(create_flow("waits").node("double", double, inputs="n"))
    harness.worker(concurrency=32)
    harness.worker(concurrency=32)
    client = harness.client

    async def run(n: int) -> object:
        run_id = await client.start("waits", {"n": n})
        result = await client.wait(run_id, timeout=T)
        return result.status, result.context.get("_outputs.double")

    results = await asyncio.gather(*(run(n) for n in range(WAITS)))
    wrong = [(n, got) for n, got in enumerate(results) if got != ("completed", 2 * n)]
    assert not wrong, f"{len(wrong)} of {WAITS} runs wrong, e.g. {wrong[:5]}"
    opened = harness.backend.client_connections(harness.deployment, client.adapter)
    print(f"{WAITS} runs awaited at once; the client holds {opened} connections")
    assert opened <= MAX_CONNECTIONS, f"the client holds {opened} connections"

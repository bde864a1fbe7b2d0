"""Start orders and wait for them (woken through Redis pub/sub).

Run from this folder, with the settings of ``README.md`` exported and a worker running::

    python client.py
"""

from __future__ import annotations

import asyncio
import sys

from app import app

from flowcraft.distributed import Client
from flowcraft_kafka import KafkaAdapter


async def main() -> int:
    adapter = KafkaAdapter(blueprints=app["blueprints"])  # settings from the environment
    try:
        client = Client(adapter)
        orders = [{"items": ["book"] * (i + 1), "total": 12.5 * (i + 1)} for i in range(3)]
        runs = [await client.start("order", {"order": order}) for order in orders]
        results = await asyncio.gather(*(client.wait(run, timeout=60) for run in runs))
    finally:
        await adapter.close()
    for result in results:
        print(result.status, result.context.get("_outputs.confirm"))
    return 0 if all(r.status == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

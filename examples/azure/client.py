"""Start invoices and wait for them (woken through Redis pub/sub).

Run from this folder, with the settings of ``README.md`` exported and a worker running::

    python client.py
"""

from __future__ import annotations

import asyncio
import sys

from app import app

from flowcraft.distributed import Client
from flowcraft_azure import AzureAdapter


async def main() -> int:
    adapter = AzureAdapter(blueprints=app["blueprints"])  # settings from the environment
    try:
        client = Client(adapter)
        invoices = [
            {"lines": [{"amount": 120.0}, {"amount": 80.5}]},
            {"lines": [{"amount": 900.0}, {"amount": 450.0}]},
        ]
        runs = [await client.start("invoice", {"invoice": invoice}) for invoice in invoices]
        results = await asyncio.gather(*(client.wait(run, timeout=60) for run in runs))
    finally:
        await adapter.close()
    for result in results:
        print(result.status, result.context.get("_outputs.book") or result.errors)
    return 0 if all(r.status == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

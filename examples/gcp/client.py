"""Start documents and wait for them (woken through Redis pub/sub).

Run from this folder, with the settings of ``README.md`` exported and a worker running::

    python client.py
"""

from __future__ import annotations

import asyncio
import sys

from app import app

from flowcraft.distributed import Client
from flowcraft_gcp import GcpAdapter


async def main() -> int:
    adapter = GcpAdapter(blueprints=app["blueprints"])  # settings from the environment
    try:
        client = Client(adapter)
        texts = ["Pub/Sub carries the jobs.", "Firestore keeps each key of a run " * 4]
        runs = [await client.start("document", {"text": text}) for text in texts]
        results = await asyncio.gather(*(client.wait(run, timeout=60) for run in runs))
    finally:
        await adapter.close()
    for result in results:
        print(result.status, result.context.get("_outputs.publish") or result.errors)
    return 0 if all(r.status == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

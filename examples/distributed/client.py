"""Start moderation runs and wait for their results (pushed over pub/sub, not polled).

Run from this folder with a worker running (see ``README.md``)::

    python client.py
"""

from __future__ import annotations

import asyncio
import sys

from app import app

from flowcraft.distributed import Client
from flowcraft_redis import RedisAdapter

POSTS = [
    "What a lovely afternoon at the lake.",
    "Click http://a http://b http://c for free money",
    "You idiot.",
]


async def main() -> int:
    # The client only starts and waits: it needs the blueprints, not the registry.
    adapter = RedisAdapter(blueprints=app["blueprints"])
    try:
        client = Client(adapter)
        runs = [await client.start("content-moderation", {"text": post}) for post in POSTS]
        results = await asyncio.gather(*(client.wait(run, timeout=60) for run in runs))
    finally:
        await adapter.close()
    for post, result in zip(POSTS, results, strict=True):
        outcome = result.context.get("_outputs.publish") or result.context.get(
            "_outputs.quarantine"
        )
        print(f"{result.status:9} {outcome or result.errors}  {post!r}")
    return 0 if all(r.status == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

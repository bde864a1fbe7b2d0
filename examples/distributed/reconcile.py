"""Re-enqueue stalled runs on a schedule, as the TypeScript adapter's ``reconcile.ts`` does.

Run from this folder (one such process per deployment is enough; workers also reconcile on
their own, see ``flowcraft worker --reconcile-every``)::

    python reconcile.py --every 60 --stalled-after 300
    python reconcile.py --once
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from app import app

from flowcraft_redis import RedisAdapter, create_reconciler


async def main(every: float, stalled_after: float, once: bool) -> None:
    adapter = RedisAdapter(**app)
    reconciler = create_reconciler(adapter=adapter, stalled_threshold_seconds=stalled_after)
    try:
        while True:
            stats = await reconciler.run()
            print(
                f"Reconciliation complete. Scanned: {stats['scanned_keys']},"
                f" Stalled: {stats['stalled_runs']}, Resumed: {stats['reconciled_runs']},"
                f" Failed: {stats['failed_runs']}",
                flush=True,
            )
            if once:
                return
            await asyncio.sleep(every)
    finally:
        await adapter.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=60.0, help="seconds between passes")
    parser.add_argument("--stalled-after", type=float, default=300.0, help="idle seconds")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args()
    asyncio.run(main(args.every, args.stalled_after, args.once))

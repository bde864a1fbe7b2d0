"""The flow of the durable-retry fault test, importable by worker subprocesses
(``retry_app:app``).

Node ``flaky`` appends its attempt number to the file ``$FLOWCRAFT_RETRY_LOG`` (one line per
attempt, written whole with ``O_APPEND``, so attempts of killed workers are kept) and fails
until its third attempt. Retries back off ``RETRY_DELAY_MS`` (doubling), long enough for the
test to kill the worker in between.
"""

from __future__ import annotations

import os

from flowcraft import NodeContext, create_flow

__all__ = ["RETRY_DELAY_MS", "app", "flow"]

RETRY_DELAY_MS = 1500


def _log(line: str) -> None:
    fd = os.open(os.environ["FLOWCRAFT_RETRY_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def flaky(ctx: NodeContext) -> str:
    _log(f"{ctx.attempt} {os.getpid()}")
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return f"succeeded on attempt {ctx.attempt}"


flow = create_flow("durable-retry").node(
    "flaky", flaky, config={"maxRetries": 4, "retryDelay": RETRY_DELAY_MS}
)
app = {"registry": flow.function_registry, "blueprints": {"durable-retry": flow.to_blueprint()}}

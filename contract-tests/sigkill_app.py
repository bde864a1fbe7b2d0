"""The flow of the SIGKILL fault test, importable by worker subprocesses (``sigkill_app:app``).

Node ``a`` (sync, so it runs in a worker thread) blocks the first time it runs, while its marker
file does not exist yet, so the test can kill the worker process in the middle of it; any later
execution returns at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flowcraft import NodeContext, create_flow

__all__ = ["app", "flow"]


def a(ctx: NodeContext) -> str:
    marker = Path(os.environ["FLOWCRAFT_TEST_MARKER"])
    if not marker.exists():
        # Written whole, then renamed: the test reads the pid as soon as the file exists.
        partial = marker.with_suffix(".partial")
        partial.write_text(str(os.getpid()))
        partial.rename(marker)
        time.sleep(120)
    return "a done"


async def b(ctx: NodeContext) -> str:
    return f"b after {ctx.input}"


flow = create_flow("sigkill").node("a", a).node("b", b).edge("a", "b")
app = {"registry": flow.function_registry, "blueprints": {"sigkill": flow.to_blueprint()}}

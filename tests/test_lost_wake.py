"""A worker killed between storing a run's final record and waking its waiters loses no wake.

The job that ended the run is redelivered, finds the run final and is dropped on arrival; it
must wake the waiters on its way out, since nothing else would before their timeout.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest

from flowcraft import NodeContext, create_flow
from flowcraft.memory import MemoryAdapter, MemoryBackend
from flowcraft.memory.results import MemoryResultChannel
from flowcraft.result import WorkflowResult


class _Killed(Exception):
    """The worker process died here."""


@pytest.mark.parametrize("hop_step", [True, "split", False])
async def test_a_redelivered_job_of_a_finished_run_wakes_its_waiters(
    hop_step: bool | Literal["split"],
) -> None:
    async def one(ctx: NodeContext) -> int:
        return 1

    flow = create_flow("wake").node("a", one)
    blueprint = flow.to_blueprint()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    backend = MemoryBackend(hop_step=hop_step)
    woken: list[str | None] = []
    await MemoryResultChannel(backend.wakes).listen(woken.append)
    worker = MemoryAdapter(backend, **options)
    wake = worker.results.publish

    async def dies_before_waking(run_id: str, result: WorkflowResult | None) -> None:
        raise _Killed

    worker.results.publish = dies_before_waking  # type: ignore[method-assign]
    client = MemoryAdapter(backend, **options)
    run_id = await client.start_run("wake")

    (delivery,) = backend.queue.take(1)
    with pytest.raises(_Killed):
        await worker.handle(delivery)
    assert await client.status(run_id) == "completed"
    assert woken == []

    worker.results.publish = wake  # type: ignore[method-assign]
    await backend.queue.release(delivery)
    (redelivered,) = backend.queue.take(1)
    assert redelivered.delivery_count == 2
    await worker.handle(redelivered)
    assert woken == [run_id]
    assert len(backend.queue) == 0

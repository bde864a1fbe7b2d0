"""Human in the loop with Flowcraft: a ``wait`` node pauses the run until someone decides.

::

    write_draft ─> review (wait) ─┬─ approve ─> publish ─> announce
                                  └─ reject ──> request_changes

The run stops at ``review`` with status ``awaiting``. Its ``serialized_context`` is plain JSON:
store it anywhere (a database row, a queue message) and hand it back to ``resume`` later, even
from another process. The resume action routes like any node's action, so the same paused state
resumed with ``approve`` publishes, and resumed with ``reject`` asks for changes.

Run it with ``python examples/human_approval.py``; it exits with status 1 if a run ends
differently than expected.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from flowcraft import FlowRuntime, NodeContext, WorkflowResult, create_flow


async def write_draft(ctx: NodeContext) -> dict[str, str]:
    topic = await ctx.context.get("topic", "release notes")
    return {"title": f"Announcing {topic}", "body": f"Everything you need to know about {topic}."}


async def publish(ctx: NodeContext) -> str:
    """Receives the reviewer's resume output as its input."""
    review: dict[str, Any] = ctx.input
    draft = await ctx.context.get("_outputs.write_draft")
    return f"published {draft['title']!r} (approved by {review['reviewer']})"


async def announce(ctx: NodeContext) -> str:
    return f"announced: {ctx.input}"


async def request_changes(ctx: NodeContext) -> str:
    review: dict[str, Any] = ctx.input
    return f"sent back to the author: {review['comment']}"


def build_flow() -> Any:
    return (
        create_flow("human-approval")
        .node("write_draft", write_draft)
        .wait("review", params={"eventName": "editor-review"})
        .node("publish", publish)
        .node("announce", announce)
        .node("request_changes", request_changes)
        .edge("write_draft", "review")
        .edge("review", "publish", action="approve")
        .edge("review", "request_changes", action="reject")
        .edge("publish", "announce")
    )


def show(label: str, result: WorkflowResult) -> None:
    outputs = {
        k.removeprefix("_outputs."): v
        for k, v in result.context.items()
        if k.startswith("_outputs.")
    }
    print(f"{label}: {result.status}")
    for node_id, output in outputs.items():
        print(f"  {node_id}: {output}")


async def main() -> int:
    flow = build_flow()
    runtime = FlowRuntime()

    paused = await flow.run(runtime, {"topic": "Flowcraft 1.0"})
    print(f"first run: {paused.status}, waiting at {paused.context['_awaitingNodeIds']}")
    print("serialized context (persist this until the reviewer answers):")
    print(json.dumps(json.loads(paused.serialized_context), indent=2))
    if paused.status != "awaiting":
        return 1

    approved = await flow.resume(
        runtime,
        paused.serialized_context,
        {"action": "approve", "output": {"reviewer": "ada", "comment": "Ship it"}},
    )
    show("approved run", approved)

    # The same paused state, answered differently, takes the other branch.
    rejected = await flow.resume(
        runtime,
        paused.serialized_context,
        {"action": "reject", "output": {"reviewer": "grace", "comment": "Add a changelog"}},
    )
    show("rejected run", rejected)

    ok = (
        approved.status == "completed"
        and "_outputs.announce" in approved.context
        and "_outputs.request_changes" not in approved.context
        and rejected.status == "completed"
        and "_outputs.request_changes" in rejected.context
        and "_outputs.publish" not in rejected.context
    )
    print("human approval demo finished" if ok else "human approval demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

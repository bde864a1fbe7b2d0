"""Content moderation served by Redis workers: ``flowcraft worker --backend redis --app app:app``.

The workflow of the TypeScript adapter's distributed example (use case "content moderation")::

    check_toxicity ─┬─> decide ─┬─(approve)─> publish
    check_spam ─────┘  (all)    └─(reject)──> quarantine

Settings come from the environment: ``REDIS_URL`` and ``FLOWCRAFT_REDIS_*``
(e.g. ``FLOWCRAFT_REDIS_QUEUE_NAME``, ``FLOWCRAFT_REDIS_CLUSTER=true``).
"""

from __future__ import annotations

from typing import Any

from flowcraft import NodeContext, NodeResult, create_flow

BANNED = ("idiot", "scam")


async def check_toxicity(ctx: NodeContext) -> bool:
    text: str = await ctx.context.get("text")
    return any(word in text.lower() for word in BANNED)


async def check_spam(ctx: NodeContext) -> bool:
    text: str = await ctx.context.get("text")
    return text.count("http") > 2


async def decide(ctx: NodeContext) -> NodeResult:
    flagged = ctx.input["check_toxicity"] or ctx.input["check_spam"]
    return NodeResult(output=flagged, action="reject" if flagged else "approve")


async def publish(ctx: NodeContext) -> str:
    return "published"


async def quarantine(ctx: NodeContext) -> str:
    return "quarantined"


flow = (
    create_flow("content-moderation")
    .node("check_toxicity", check_toxicity)
    .node("check_spam", check_spam)
    .node("decide", decide, config={"joinStrategy": "all"})
    .node("publish", publish)
    .node("quarantine", quarantine)
    .edge("check_toxicity", "decide")
    .edge("check_spam", "decide")
    .edge("decide", "publish", action="approve")
    .edge("decide", "quarantine", action="reject")
)

app: dict[str, Any] = {
    "registry": flow.function_registry,
    "blueprints": {"content-moderation": flow.to_blueprint()},
}

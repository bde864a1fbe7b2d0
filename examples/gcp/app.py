"""A document pipeline served by Pub/Sub workers (``flowcraft worker --backend gcp --app
app:app``).

::

    fetch ─┬─> summarise ─┬─> publish (all)
           └─> classify ──┘
"""

from __future__ import annotations

from typing import Any

from flowcraft import NodeContext, create_flow


async def fetch(ctx: NodeContext) -> str:
    text: str = await ctx.context.get("text")
    if not text:
        raise ValueError("a document needs text")
    return text


async def summarise(ctx: NodeContext) -> str:
    words = str(ctx.input).split()
    return " ".join(words[:5]) + (" …" if len(words) > 5 else "")


async def classify(ctx: NodeContext) -> str:
    return "long" if len(str(ctx.input)) > 80 else "short"


async def publish(ctx: NodeContext) -> str:
    return f"[{ctx.input['classify']}] {ctx.input['summarise']}"


flow = (
    create_flow("document")
    .node("fetch", fetch)
    .node("summarise", summarise)
    .node("classify", classify)
    .node("publish", publish, config={"joinStrategy": "all"})
    .edge("fetch", "summarise")
    .edge("fetch", "classify")
    .edge("summarise", "publish")
    .edge("classify", "publish")
)

app: dict[str, Any] = {
    "registry": flow.function_registry,
    "blueprints": {"document": flow.to_blueprint()},
}

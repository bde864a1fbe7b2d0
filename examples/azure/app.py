"""An invoice pipeline served by Azure Storage Queue workers (``flowcraft worker --backend azure
--app app:app``).

::

    parse ─┬─> tax ──────┬─> book (all)
           └─> approve ──┘
"""

from __future__ import annotations

from typing import Any

from flowcraft import NodeContext, create_flow


async def parse(ctx: NodeContext) -> dict[str, Any]:
    invoice: dict[str, Any] = await ctx.context.get("invoice")
    if not invoice or not invoice.get("lines"):
        raise ValueError("an invoice needs lines")
    return {"total": sum(line["amount"] for line in invoice["lines"])}


async def tax(ctx: NodeContext) -> float:
    return round(ctx.input["total"] * 0.2, 2)


async def approve(ctx: NodeContext) -> str:
    return "manager" if ctx.input["total"] > 1000 else "auto"


async def book(ctx: NodeContext) -> str:
    return f"booked, tax {ctx.input['tax']}, approved by {ctx.input['approve']}"


flow = (
    create_flow("invoice")
    .node("parse", parse)
    .node("tax", tax, config={"maxRetries": 3, "retryDelay": 200})
    .node("approve", approve)
    .node("book", book, config={"joinStrategy": "all"})
    .edge("parse", "tax")
    .edge("parse", "approve")
    .edge("tax", "book")
    .edge("approve", "book")
)

app: dict[str, Any] = {
    "registry": flow.function_registry,
    "blueprints": {"invoice": flow.to_blueprint()},
}

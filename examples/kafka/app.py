"""An order pipeline served by Kafka workers (``flowcraft worker --backend kafka --app app:app``).

::

    validate ─┬─> reserve_stock ─┬─> confirm (all)
              └─> charge_card ───┘
"""

from __future__ import annotations

from typing import Any

from flowcraft import NodeContext, create_flow


async def validate(ctx: NodeContext) -> dict[str, Any]:
    order: dict[str, Any] = await ctx.context.get("order")
    if not order.get("items"):
        raise ValueError("an order needs items")
    return order


async def reserve_stock(ctx: NodeContext) -> str:
    return f"reserved {len(ctx.input['items'])} items"


async def charge_card(ctx: NodeContext) -> str:
    return f"charged {ctx.input['total']:.2f}"


async def confirm(ctx: NodeContext) -> str:
    return f"order confirmed: {ctx.input['reserve_stock']}, {ctx.input['charge_card']}"


flow = (
    create_flow("order")
    .node("validate", validate)
    .node("reserve_stock", reserve_stock)
    .node("charge_card", charge_card)
    .node("confirm", confirm, config={"joinStrategy": "all"})
    .edge("validate", "reserve_stock")
    .edge("validate", "charge_card")
    .edge("reserve_stock", "confirm")
    .edge("charge_card", "confirm")
)

app: dict[str, Any] = {
    "registry": flow.function_registry,
    "blueprints": {"order": flow.to_blueprint()},
}

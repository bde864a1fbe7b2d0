"""Content moderation with Flowcraft: parallel checks, retries, a fallback and action branching.

::

    ingest ─┬─> toxicity  (flaky remote model, retried) ──────────┐
            └─> spam      (service down → fallback spam_rules) ───┴─> decide  (all join)
                                                                          │
                          ┌─────────── approve ─── reject ─── flag ───────┘
                          v               v                    v
                       publish      notify_author       queue_for_review
                          └───────────────┴──────┬─────────────┘
                                                 v
                                              record  (all join: only the taken branch)

Run it with ``python examples/content_moderation.py``. It moderates three sample posts, prints
one line per post and exits with status 1 if any run did not complete.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flowcraft import FlowRuntime, NodeContext, NodeResult, WorkflowResult, create_flow
from flowcraft.events import EventBus, FlowEvent

POSTS: list[dict[str, str]] = [
    {"id": "post-1", "text": "Lovely weather for a walk in the park today."},
    {"id": "post-2", "text": "Limited offer!!! Click here to win money now"},
    {"id": "post-3", "text": "You are an idiot and I hate you"},
]
TOXIC_WORDS = frozenset({"idiot", "hate", "stupid"})
SPAM_MARKERS = ("click here", "win money", "limited offer", "!!!")


async def ingest(ctx: NodeContext) -> dict[str, str]:
    """Read the post from the run's context and normalise its text."""
    post: dict[str, str] = await ctx.context.get("post")
    return {"id": post["id"], "text": " ".join(post["text"].split())}


async def toxicity(ctx: NodeContext) -> float:
    """A remote toxicity model that times out twice before answering (retried by the engine)."""
    if ctx.attempt < 3:
        raise ConnectionError(f"toxicity model timed out (attempt {ctx.attempt})")
    words = {w.strip(".,!?").lower() for w in ctx.input["text"].split()}
    return min(1.0, len(words & TOXIC_WORDS) / 2)


async def spam_service(ctx: NodeContext) -> float:
    """A remote spam service that is down: after its retries, the fallback node runs."""
    raise ConnectionError("spam service unavailable")


async def spam_rules(ctx: NodeContext) -> float:
    """Local keyword rules; the fallback receives the failed node's input."""
    text = ctx.input["text"].lower()
    return min(1.0, sum(marker in text for marker in SPAM_MARKERS) / 2)


async def decide(ctx: NodeContext) -> NodeResult:
    """Join both scores (input ``{"toxicity": ..., "spam": ...}``) and pick an action."""
    scores: dict[str, float] = ctx.input
    if scores["toxicity"] >= 0.5:
        action = "reject"
    elif scores["spam"] >= 0.5:
        action = "flag"
    else:
        action = "approve"
    return NodeResult(output={"decision": action, "scores": scores}, action=action)


async def publish(ctx: NodeContext) -> str:
    post: dict[str, str] = await ctx.context.get("post")
    return f"published {post['id']}"


async def queue_for_review(ctx: NodeContext) -> str:
    post: dict[str, str] = await ctx.context.get("post")
    return f"queued {post['id']} for a human moderator"


async def notify_author(ctx: NodeContext) -> str:
    post: dict[str, str] = await ctx.context.get("post")
    return f"rejected {post['id']} and notified its author"


async def record(ctx: NodeContext) -> str:
    """Runs after whichever branch was taken (dead-path elimination skips the others)."""
    outcomes: dict[str, str] = ctx.input
    return "; ".join(outcomes.values())


def build_flow() -> Any:
    """The moderation flow, built with the fluent builder."""
    return (
        create_flow("content-moderation")
        .node("ingest", ingest)
        .node("toxicity", toxicity, config={"maxRetries": 3, "retryDelay": 20})
        .node(
            "spam",
            spam_service,
            config={"maxRetries": 2, "retryDelay": 10, "fallback": "spam_rules"},
        )
        .node("spam_rules", spam_rules)
        .node("decide", decide, config={"joinStrategy": "all"})
        .node("publish", publish)
        .node("queue_for_review", queue_for_review)
        .node("notify_author", notify_author)
        .node("record", record, config={"joinStrategy": "all"})
        .edge("ingest", "toxicity")
        .edge("ingest", "spam")
        .edge("toxicity", "decide")
        .edge("spam", "decide")
        .edge("decide", "publish", action="approve")
        .edge("decide", "queue_for_review", action="flag")
        .edge("decide", "notify_author", action="reject")
        .edge("publish", "record")
        .edge("queue_for_review", "record")
        .edge("notify_author", "record")
    )


def main() -> int:
    # The engine logs each retry as a warning; the event bus below reports them instead.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    bus = EventBus()

    def report(event: FlowEvent) -> None:
        payload = event.payload
        if event.type == "node:retry":
            print(f"  retry: {payload['nodeId']} attempt {payload['attempt']} failed")
        else:
            print(f"  fallback: {payload['nodeId']} failed for good, running {payload['fallback']}")

    bus.subscribe(report, ["node:retry", "node:fallback"])
    flow = build_flow()
    blueprint = flow.to_blueprint()
    runtime = FlowRuntime(registry=flow.function_registry, event_bus=bus)

    results: list[WorkflowResult] = []
    for post in POSTS:
        print(f"{post['id']}: {post['text']!r}")
        result = runtime.run_sync(blueprint, {"post": post})
        results.append(result)
        if result.status != "completed":
            print(f"  run {result.status}: {[e.message for e in result.errors]}")
            continue
        decision = result.context["_outputs.decide"]
        scores = decision["scores"]
        print(
            f"  decision: {decision['decision']} (toxicity={scores['toxicity']:.2f},"
            f" spam={scores['spam']:.2f}) -> {result.context['_outputs.record']}"
        )

    completed = sum(r.status == "completed" for r in results)
    print(f"moderation finished: {completed}/{len(results)} runs completed")
    return 0 if completed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

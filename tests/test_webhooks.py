"""Webhook receiver and inspector JSON/HTML, through the ASGI app (httpx, no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("starlette", reason="starlette is a test dependency (extra 'web')")
pytest.importorskip("httpx", reason="httpx is a test dependency")

import httpx

from flowcraft import FlowRuntime, NodeContext, create_flow
from flowcraft.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    WebhookRegistry,
    create_app,
    sign,
    verify_signature,
)

SECRET = "wh_secret"
CALLS: list[Any] = []


def after(ctx: NodeContext) -> Any:
    CALLS.append(ctx.input)
    return {"got": ctx.input}


def start(ctx: NodeContext) -> str:
    return "started"


def _flow(**params: Any) -> Any:
    flow = create_flow("pay").node("start", start)
    flow.node("hook", "webhook", params={"path": "/hooks/pay/{runId}", **params})
    flow.node("after", after)
    return flow.edge("start", "hook").edge("hook", "after")


def _client(app: Any) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _headers(body: bytes, delivery: str | None = "d-1", secret: str = SECRET) -> dict[str, str]:
    headers = {SIGNATURE_HEADER: sign(secret, body), "content-type": "application/json"}
    if delivery is not None:
        headers[DELIVERY_HEADER] = delivery
    return headers


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


async def test_signed_delivery_resumes_the_run_with_the_body() -> None:
    runtime = FlowRuntime()
    app = create_app(runtime, background=False)
    paused = await _flow(secret=SECRET).run(runtime)
    assert paused.status == "awaiting"
    path = f"/hooks/pay/{paused.run_id}"
    assert paused.context["_awaitingDetails"]["hook"]["path"] == path
    assert SECRET not in paused.serialized_context.replace('"secret":"wh_secret"', "")
    body = json.dumps({"amount": 42}).encode()
    async with _client(app) as client:
        response = await client.post(path, content=body, headers=_headers(body))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        assert CALLS == [{"amount": 42}]
        record = (await client.get(f"/runs/{paused.run_id}")).json()
    assert record["status"] == "completed"
    states = {n["id"]: n["state"] for n in record["nodes"]}
    assert states == {"start": "completed", "hook": "completed", "after": "completed"}
    assert {(e["source"], e["target"]) for e in record["edges"]} == {
        ("start", "hook"),
        ("hook", "after"),
    }


async def test_rejections() -> None:
    runtime = FlowRuntime()
    app = create_app(runtime, max_body=64, background=False)
    paused = await _flow(secret=SECRET).run(runtime)
    path = f"/hooks/pay/{paused.run_id}"
    body = b'{"ok": true}'
    async with _client(app) as client:
        assert (
            await client.post("/hooks/nope", content=body, headers=_headers(body))
        ).status_code == 404
        no_sig = {DELIVERY_HEADER: "x", "content-type": "application/json"}
        assert (await client.post(path, content=body, headers=no_sig)).status_code == 401
        wrong = _headers(body, secret="not-the-secret")
        assert (await client.post(path, content=body, headers=wrong)).status_code == 401
        tampered = _headers(body)
        assert (await client.post(path, content=b'{"ok": 1}', headers=tampered)).status_code == 401
        big = b"x" * 65
        assert (await client.post(path, content=big, headers=_headers(big))).status_code == 413
        assert (
            await client.post(path, content=body, headers=_headers(body, delivery=None))
        ).status_code == 400
    assert CALLS == []  # nothing resumed the run
    assert await app.state.registry.endpoint(path) is not None


async def test_replayed_delivery_is_ignored() -> None:
    runtime = FlowRuntime()
    app = create_app(runtime, background=False)
    paused = await _flow(secret=SECRET).run(runtime)
    path = f"/hooks/pay/{paused.run_id}"
    body = b'{"n": 1}'
    async with _client(app) as client:
        first = await client.post(path, content=body, headers=_headers(body, "same"))
        again = await client.post(path, content=body, headers=_headers(body, "same"))
        other = await client.post(path, content=body, headers=_headers(body, "other"))
    assert first.status_code == 200 and first.json()["status"] == "completed"
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert other.status_code == 409
    assert CALLS == [{"n": 1}]


async def test_background_delivery_answers_202_then_resumes() -> None:
    runtime = FlowRuntime()
    app = create_app(runtime)
    paused = await _flow(secret=SECRET).run(runtime)
    body = b"plain text body"
    headers = _headers(body)
    headers["content-type"] = "text/plain"
    async with _client(app) as client:
        response = await client.post(f"/hooks/pay/{paused.run_id}", content=body, headers=headers)
        assert response.status_code == 202
        assert response.json()["status"] == "accepted"
        await app.state.registry.drain()
        runs = (await client.get("/runs")).json()["runs"]
    assert CALLS == ["plain text body"]
    assert runs[0]["id"] == paused.run_id and runs[0]["status"] == "completed"
    assert runs[0]["blueprintId"] == "pay" and runs[0]["finished"] is not None


async def test_secret_names_resolve_and_missing_secrets_fail_the_node() -> None:
    runtime = FlowRuntime()
    secrets = {"PAY_SECRET": "from-vault"}
    app = create_app(runtime, secret_resolver=secrets.get, background=False)
    paused = await _flow(secretName="PAY_SECRET").run(runtime)
    assert paused.status == "awaiting"
    body = b"{}"
    async with _client(app) as client:
        response = await client.post(
            f"/hooks/pay/{paused.run_id}", content=body, headers=_headers(body, secret="from-vault")
        )
    assert response.status_code == 200 and response.json()["status"] == "completed"
    failed = await _flow(secretName="UNKNOWN").run(runtime)
    assert failed.status == "failed"
    assert "has no secret" in failed.errors[0].message


async def test_fixed_path_taken_by_another_run_fails_the_second() -> None:
    runtime = FlowRuntime()
    create_app(runtime)
    first = await _flow(secret=SECRET, path="/hooks/fixed").run(runtime)
    second = await _flow(secret=SECRET, path="/hooks/fixed").run(runtime)
    assert first.status == "awaiting"
    assert second.status == "failed"
    assert "already registered" in second.errors[0].message


async def test_default_path_and_registry_secret() -> None:
    runtime = FlowRuntime()
    registry = WebhookRegistry(secret="default")
    app = create_app(runtime, registry=registry, background=False)
    flow = create_flow("d").node("hook", "webhook").node("after", after).edge("hook", "after")
    paused = await flow.run(runtime)
    path = f"/webhooks/{paused.run_id}/hook"
    assert [e.path for e in await registry.endpoints(paused.run_id)] == [path]
    body = b"[1, 2]"
    async with _client(app) as client:
        response = await client.post(path, content=body, headers=_headers(body, secret="default"))
    assert response.json()["status"] == "completed"
    assert CALLS == [[1, 2]]
    assert await registry.endpoints(paused.run_id) == []


async def test_inspector_pages() -> None:
    runtime = FlowRuntime()
    app = create_app(runtime)
    paused = await _flow(secret=SECRET).run(runtime)
    async with _client(app) as client:
        index = await client.get("/")
        page = await client.get(f"/run/{paused.run_id}")
        missing = await client.get("/run/nope")
        missing_json = await client.get("/runs/nope")
    assert index.status_code == 200 and f"/run/{paused.run_id}" in index.text
    assert page.status_code == 200
    assert page.text.count('class="node-box"') == 3
    assert 'data-node-id="hook" data-state="awaiting"' in page.text
    assert 'data-node-id="after" data-state="pending"' in page.text
    assert missing.status_code == 404 and missing_json.status_code == 404


def test_signature_helpers() -> None:
    body = b"payload"
    assert verify_signature("s", body, sign("s", body))
    assert not verify_signature("s", body, None)
    assert not verify_signature("s", body, "md5=abc")
    assert not verify_signature("s", body, sign("t", body))

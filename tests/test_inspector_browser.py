"""The run inspector in headless Chromium (Debian's chromium, driven by Playwright).

The page is served by the ASGI app itself: Playwright intercepts the browser's requests and
answers them through httpx's ASGI transport, so no port is opened. Skips only when no Chromium
binary is installed (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="starlette is a test dependency (extra 'web')")
pytest.importorskip("httpx", reason="httpx is a test dependency")
pytest.importorskip("playwright.async_api", reason="playwright (PyPI) is a test dependency")

import httpx
from playwright import async_api as playwright_api

from flowcraft import FlowRuntime, NodeContext, create_flow
from flowcraft.webhooks import create_app

CHROMIUM = os.environ.get("FLOWCRAFT_CHROMIUM") or shutil.which("chromium") or ""
pytestmark = pytest.mark.skipif(
    not CHROMIUM,
    reason="Chromium is not installed (apt-get install chromium, or set FLOWCRAFT_CHROMIUM)",
)
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BASE = "http://inspector.test"


def first(ctx: NodeContext) -> int:
    return 1


def branch(ctx: NodeContext) -> int:
    return 2


def broken(ctx: NodeContext) -> None:
    raise RuntimeError("branch failed")


def join(ctx: NodeContext) -> Any:
    return ctx.input


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB(A) PNG (what Chromium writes) into rows of raw pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, height, channels, idat = 8, 0, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        filter_type = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if filter_type == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filter_type == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filter_type == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif filter_type == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, channels, rows


async def test_run_page_draws_the_dag_in_chromium(tmp_path: Path) -> None:
    runtime = FlowRuntime()
    app = create_app(runtime)
    flow = create_flow("shop").node("start", first).node("pay", branch).node("ship", broken)
    flow.node("done", join).edge("start", "pay").edge("start", "ship")
    flow.edge("pay", "done").edge("ship", "done")
    ok = await create_flow("tiny").node("only", first).run(runtime)
    failed = await flow.run(runtime)
    assert failed.status == "failed" and ok.status == "completed"

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:

        async def serve(route: Any) -> None:
            request = route.request
            response = await client.request(request.method, request.url)
            await route.fulfill(
                status=response.status_code,
                headers={"content-type": response.headers.get("content-type", "text/html")},
                body=response.content,
            )

        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 900, "height": 700})
                await page.route(f"{BASE}/**", serve)
                await page.goto(f"{BASE}/")
                rows = await page.locator("tr.run-row").count()
                assert rows == 2
                await page.click(f"a[href='/run/{failed.run_id}']")
                await page.wait_for_selector("svg.dag g.node")
                assert await page.locator("svg.dag rect.node-box").count() == 4
                assert await page.locator("svg.dag path.edge").count() == 4
                states = await page.eval_on_selector_all(
                    "svg.dag g.node",
                    "gs => Object.fromEntries(gs.map(g => [g.dataset.nodeId, g.dataset.state]))",
                )
                assert states == {
                    "start": "completed",
                    "pay": "completed",
                    "ship": "failed",
                    "done": "pending",
                }
                box = await page.locator("svg.dag").bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 150
                fill = await page.eval_on_selector(
                    "g.node[data-node-id='ship'] rect", "r => getComputedStyle(r).fill"
                )
                assert fill == "rgb(252, 165, 165)"
                shot = tmp_path / "run.png"
                await page.locator("svg.dag").screenshot(path=str(shot))
            finally:
                await browser.close()

    width, channels, rows_px = _png_pixels(shot.read_bytes())
    pixels = {row[i : i + 3] for row in rows_px for i in range(0, width * channels, channels)}
    assert len(pixels) > 20  # not a blank image: boxes, text and edges were painted
    red = bytes((252, 165, 165))
    green = bytes((134, 239, 172))
    assert red in pixels and green in pixels  # the failed and the completed node colours

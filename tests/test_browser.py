"""A real browser's EventSource through a proxy that cuts the connection mid-stream.

Debian's chromium, driven by playwright's Python package (no browser download).
The page and the gateway (mounted at /llm) share one origin behind a TCP proxy
on loopback; the proxy drops the first stream's connection after a few events,
both ways, as a network would. The EventSource reconnects by itself with
Last-Event-ID: the test checks that the page saw every event once, in order,
one ``done``, and that the upstream generated once.

Skipped when chromium or playwright is missing, except under CI (``CI`` set),
where ``.ci/run`` installs both and a missing one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil

import pytest
from aiohttp import web

from engine import create_app
from engine.app import ENGINE

from .helpers import make_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None

pytestmark = pytest.mark.skipif(
    (CHROMIUM is None or async_playwright is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and the playwright package (.ci/run installs both)",
)

PAGE = """<!doctype html><meta charset=utf-8><title>resume</title><script>
window.events = [];
const es = new EventSource(%s);
es.addEventListener("start", e => events.push({kind: "start", id: e.lastEventId}));
es.onmessage = e => events.push({kind: "message", id: e.lastEventId, text: JSON.parse(e.data).content});
es.addEventListener("done", e => {
  events.push({kind: "done", id: e.lastEventId});
  es.close();
  window.finished = true;
});
es.onerror = () => events.push({kind: "reconnect"});
</script>"""

# Flags the machine needs (no GPU, no network beyond loopback, a throwaway profile).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class CuttingProxy:
    """Forwards TCP to ``target``; the first connection that carries a stream is cut
    after ``cut_after`` bytes of response, both ways, once."""

    def __init__(self, target: tuple[str, int], cut_after: int) -> None:
        self.target = target
        self.cut_after = cut_after
        self.cuts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        streaming = asyncio.Event()

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if b"/v1/chat/stream" in data:
                        streaming.set()
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> None:
            sent = 0
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    if streaming.is_set() and self.cuts == 0 and sent + len(data) > self.cut_after:
                        writer.write(data[: self.cut_after - sent])
                        self.cuts += 1
                        return  # the network drops: both sides are closed below
                    sent += len(data)
                    writer.write(data)
                    await writer.drain()

        try:
            await asyncio.wait(
                [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in (writer, up_writer):
                w.transport.abort()


async def test_an_event_source_through_a_dropped_connection_sees_every_event_once():
    assert CHROMIUM is not None and async_playwright is not None
    engine_app = create_app(make_config(retry_ms=200, heartbeat=0.2))
    engine = engine_app[ENGINE]
    stream_url = "/llm/v1/chat/stream?q=hello&max_tokens=40&interval_ms=25&detach=30"

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % json.dumps(stream_url), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.add_subapp("/llm", engine_app)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gateway = runner.addresses[0][:2]
    proxy = CuttingProxy(gateway, cut_after=1500)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                tab = await browser.new_page()
                await tab.goto(f"http://127.0.0.1:{port}/")
                await tab.wait_for_function("window.finished === true", timeout=30_000)
                events = await tab.evaluate("window.events")
            finally:
                await browser.close()
    finally:
        server.close()
        await server.wait_closed()
        await runner.cleanup()
    assert proxy.cuts == 1
    assert {"kind": "reconnect"} in events  # the connection really was lost
    seen = [e for e in events if e["kind"] != "reconnect"]
    sid = seen[0]["id"].split(":")[0]
    # Every event once, in order: start 0, chunks 1..40, done 41.
    assert [e["id"] for e in seen] == [f"{sid}:{n}" for n in range(42)]
    assert [e["kind"] for e in seen] == ["start"] + ["message"] * 40 + ["done"]
    assert engine.generations.ended_state(sid) == "done"  # one generation, completed

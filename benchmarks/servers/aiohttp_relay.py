"""The aiohttp passthrough relay: what relaying costs with aiohttp and nothing else.

Issue 17's yardstick for the gateway's CPU per relayed chunk: the least an
aiohttp application does to relay an OpenAI stream. Per client request
(``POST /v1/chat/completions``, any body) it sends the body unchanged to
``OPENAI_BASE_URL``'s ``/chat/completions`` over one shared
``aiohttp.ClientSession`` (connections pooled, as the gateway pools them), and
once the upstream answered 200 writes every read of the upstream body to the
client as it came (``async for data in upstream.content.iter_any(): await
response.write(data)``): the fake's OpenAI chunks go out byte for byte as
OpenAI chunks, so the like-for-like gateway route is ``/v1/chat/completions``
(the OpenAI dialect in and out).

Only what a relay cannot do without: the session has no connection limit
(aiohttp's default of 100 would queue the 101st stream; the gateway lifts it
too) and no total timeout (a stream lasts as long as it lasts); an upstream
that does not answer 200 gets a bare 502. No parsing, no validation, no
heartbeats, no stream memory, no keys, no metrics, no error events. Runs
like the other servers under test: uvloop, no access log, handler
cancellation on (so a client that leaves closes its upstream request).

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python -m benchmarks.servers.aiohttp_relay
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from ._common import announce, listen, raise_nofile, run

_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(
        request.app[UPSTREAM], data=body, headers={"Content-Type": "application/json"}
    ) as upstream:
        if upstream.status != 200:
            return web.Response(status=502)
        response = web.StreamResponse(headers=_HEADERS)
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
    await response.write_eof()
    return response


async def _session(app: web.Application) -> AsyncIterator[None]:
    key = os.environ.get("OPENAI_API_KEY", "bench-key")
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"Authorization": f"Bearer {key}"},
    ) as session:
        app[SESSION] = session
        yield


async def main(handler: Handler = relay, banner: str = "aiohttp passthrough relay") -> None:
    raise_nofile()
    sock = listen()
    app = web.Application()
    base = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1").rstrip("/")
    app[UPSTREAM] = f"{base}/chat/completions"
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    announce(sock, banner)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    run(main)

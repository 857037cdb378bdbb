"""Reference: a plain aiohttp StreamResponse writing msgspec-encoded frames (no SSE library).

The issue's yardstick for "what aiohttp itself costs" (about 0.7x the raw
ceiling and 12 KiB per idle connection where it was measured first): each
event is framed by hand and written with ``await response.write()``.

    python -m benchmarks.servers.aiohttp_plain
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ._common import RETRY_MS, announce, events, heartbeat, listen, raise_nofile, run

_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_KEEPALIVE = b": keepalive\n\n"


async def stream(request: web.Request) -> web.StreamResponse:
    query = dict(request.query)
    response = web.StreamResponse(headers=_HEADERS)
    await response.prepare(request)
    await response.write(b"retry: %d\n\n" % RETRY_MS)
    every = heartbeat()

    async def ping() -> None:
        # A keep-alive task per stream, the way a plain handler (or aiohttp-sse) does it.
        while True:
            await asyncio.sleep(every)
            await response.write(_KEEPALIVE)

    pinger = asyncio.get_running_loop().create_task(ping())
    try:
        async for event, id, data in events(query):
            if event:
                head = b"id: %s\nevent: %s\n" % (id.encode(), event.encode())
            else:
                head = b"id: %s\n" % id.encode()
            await response.write(head + b"data: " + data.encode() + b"\n\n")
    finally:
        pinger.cancel()
    await response.write_eof()
    return response


async def main() -> None:
    raise_nofile()
    sock = listen()
    app = web.Application()
    app.router.add_get("/v1/chat/stream", stream)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    announce(sock, "plain aiohttp StreamResponse")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    run(main)

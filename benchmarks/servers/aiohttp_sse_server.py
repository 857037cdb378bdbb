"""Peer: aiohttp-sse's sse_response on a plain aiohttp web app (uvloop).

python -m benchmarks.servers.aiohttp_sse_server
"""

from __future__ import annotations

from aiohttp import web
from aiohttp_sse import sse_response

from ._common import RETRY_MS, announce, events, heartbeat, listen, raise_nofile, run


async def stream(request: web.Request) -> web.StreamResponse:
    query = dict(request.query)
    async with sse_response(request, sep="\n", ping_interval=heartbeat()) as resp:
        await resp.write(b"retry: %d\n\n" % RETRY_MS)
        async for event, id, data in events(query):
            await resp.send(data, id=id, event=event)
    return resp


async def main() -> None:
    raise_nofile()
    sock = listen()
    app = web.Application()
    app.router.add_get("/v1/chat/stream", stream)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    announce(sock, "aiohttp-sse on aiohttp")
    try:
        import asyncio

        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    run(main)

"""Peer: sse-starlette's EventSourceResponse on Starlette, served by uvicorn (uvloop, httptools).

python -m benchmarks.servers.starlette_sse
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from ._common import RETRY_MS, announce, events, heartbeat, listen, raise_nofile, run


async def stream(request: Request) -> EventSourceResponse:
    query = dict(request.query_params)

    async def content() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(retry=RETRY_MS, sep="\n")
        async for event, id, data in events(query):
            yield ServerSentEvent(data=data, event=event, id=id, sep="\n")

    # sep="\n": the gateway's line ending (sse-starlette defaults to CRLF).
    return EventSourceResponse(content(), sep="\n", ping=int(heartbeat()))


app = Starlette(routes=[Route("/v1/chat/stream", stream)])


async def main() -> None:
    raise_nofile()
    sock = listen()
    config = uvicorn.Config(
        app,
        loop="none",  # already on uvloop (run() below)
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )
    server = uvicorn.Server(config)
    announce(sock, "sse-starlette on uvicorn")
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    run(main)

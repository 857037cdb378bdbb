"""What every server under test shares: the request's parameters and the payloads.

The peers serve exactly what the gateway serves: the same mock provider makes the
chunks, msgspec makes the JSON bytes of each chunk, and every event carries the
same ``id: <stream>:<n>``. Only the SSE framing and the HTTP server differ.
"""

from __future__ import annotations

import os
import resource
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from engine.providers.mock import MockProvider
from engine.wire import DoneEvent, Message, Options, StartEvent

RETRY_MS = 3000  # the gateway's default ``retry:``; the peers send it too

_PROVIDER = MockProvider(model="mock-1")


def params(query: Mapping[str, str]) -> tuple[str, Options]:
    """``q`` and the mock options from a query string (the gateway's GET parameters)."""
    options = Options(
        max_tokens=int(query.get("max_tokens", "40")),
        token_size=int(query.get("token_size", "4")),
        interval_ms=int(query.get("interval_ms", "20")),
    )
    return query.get("q", "hi"), options


async def events(query: Mapping[str, str]) -> AsyncIterator[tuple[str | None, str, str]]:
    """(event, id, JSON data) for one stream: start, every chunk, done."""
    text, options = params(query)
    sid = uuid.uuid4().hex
    chunks = await _PROVIDER.open([Message(role="user", content=text)], options=options)
    encode = msgspec.json.encode
    async with chunks:
        yield (
            "start",
            f"{sid}:0",
            encode(StartEvent(stream_id=sid, provider="mock", model=chunks.model)).decode(),
        )
        n = 0
        finish = None
        usage = None
        async for chunk in chunks:
            n += 1
            yield None, f"{sid}:{n}", encode(chunk).decode()
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
        yield (
            "done",
            f"{sid}:{n + 1}",
            encode(DoneEvent(finish_reason=finish, usage=usage)).decode(),
        )


def listen() -> socket.socket:
    """A listening socket on 127.0.0.1 and a free port, with a deep backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("BENCH_PORT", "0"))))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def announce(sock: socket.socket, what: str) -> None:
    """Tell the harness where we listen (it reads the first line of stdout)."""
    port = sock.getsockname()[1]
    print(f"{what} on http://127.0.0.1:{port} (uvloop loop)", flush=True)


def heartbeat() -> float:
    return float(os.environ.get("BENCH_HEARTBEAT", "15"))


def run(main: Any) -> None:
    """Run ``main()`` on uvloop."""
    import uvloop

    uvloop.run(main())

"""The ceiling: a raw asyncio Protocol writing preformatted events, one write each.

No framework: it reads the request line, answers HTTP/1.1 with
``Connection: close`` and writes the same event bytes the gateway would, framed
once per distinct request and reused, with flow control (pause/resume_writing)
and a yield to the loop every 32 events, as the mock provider does. Idle
connections get ``: keepalive`` from one shared timer.

    python -m benchmarks.servers.raw
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

from engine.sse import encode_retry

from ._common import announce, events, heartbeat, listen, raise_nofile, run

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
)
_KEEPALIVE = b": keepalive\n\n"
_YIELD_EVERY = 32

_cache: dict[tuple[str, ...], list[bytes]] = {}
_open: set[RawSSE] = set()


async def _frames(query: dict[str, str]) -> list[bytes]:
    key = tuple(sorted(query.items()))
    frames = _cache.get(key)
    if frames is None:
        frames = [encode_retry(3000)]
        query = {**query, "interval_ms": "0"}
        async for event, id, data in events(query):
            frames.append(
                b"id: %s\n%sdata: %s\n\n"
                % (id.encode(), b"event: %s\n" % event.encode() if event else b"", data.encode())
            )
        _cache[key] = frames
    return frames


class RawSSE(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.resume: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        target = self.buf.split(b" ", 2)[1].decode()
        query = dict(parse_qsl(urlsplit(target).query))
        self.task = asyncio.get_running_loop().create_task(self.serve(query))

    async def serve(self, query: dict[str, str]) -> None:
        transport = self.transport
        assert transport is not None
        frames = await _frames(query)
        interval = int(query.get("interval_ms", "20")) / 1000
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        _open.add(self)
        try:
            transport.write(_HEAD)
            for n, frame in enumerate(frames):
                if transport.is_closing():
                    return
                if 2 < n < len(frames) - 1 and interval:
                    await asyncio.sleep(interval)
                elif n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if self.resume is not None:
                    await self.resume
                transport.write(frame)
                self.last = loop.time()
            transport.close()
        finally:
            _open.discard(self)

    def pause_writing(self) -> None:
        self.resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resume is not None:
            self.resume.set_result(None)
            self.resume = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)
        if self.task is not None:
            self.task.cancel()


async def _heartbeats(every: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(1.0, every / 2))
        due = loop.time() - every
        for conn in list(_open):
            if conn.last <= due and conn.transport is not None and conn.resume is None:
                conn.transport.write(_KEEPALIVE)
                conn.last = loop.time()


async def main() -> None:
    raise_nofile()
    sock = listen()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawSSE, sock=sock, backlog=4096)
    announce(sock, "raw asyncio")
    beats = loop.create_task(_heartbeats(heartbeat()))
    try:
        await server.serve_forever()
    finally:
        beats.cancel()


if __name__ == "__main__":
    run(main)

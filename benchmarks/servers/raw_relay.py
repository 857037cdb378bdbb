"""The relay floor: a raw asyncio Protocol relaying the fake OpenAI upstream, no framework.

What any Python relay on this machine must at least pay per chunk: one read from
the upstream socket and one write to the client socket, driven from protocol
callbacks on uvloop (no coroutine, task or timer per chunk). For each client
request (``POST /v1/chat/stream``: it reads the head and the ``Content-Length``
body, and ignores both) it opens one upstream connection with
``loop.create_connection`` to ``OPENAI_BASE_URL`` (as the gateway gets it,
e.g. ``http://127.0.0.1:PORT/v1``) and sends ``POST /v1/chat/completions`` with
``{"model":"m","messages":[{"role":"user","content":"stamp"}],"stream":true}``.
Then, per upstream ``data_received``, it de-chunks the HTTP/1.1 chunked body,
splits SSE events at blank lines (``\\n\\n`` only, as OpenAI and the fake send
them), and for every ``data:`` event with a ``"content"`` string writes
``id: <n>\\ndata: {"content":"<the same string>"}\\n\\n`` to the client, all the
events of one upstream read framed as one HTTP chunk and written with one
``transport.write``. The response (HTTP/1.1 200, ``text/event-stream``,
chunked, ``Connection: close``) goes out with the first events; it ends with
``0\\r\\n\\r\\n`` and a close at ``data: [DONE]`` or when the upstream closes.
Backpressure: a client transport over its high-water mark pauses reading from
its upstream until it drains.

It is a floor, not a gateway: no JSON parsing (the content string is sliced
out of the chunk's bytes, escapes left as they are), no validation, no
``retry:``/start/done events, no stream memory, no heartbeats, no idle
timeouts, no connection reuse, no error events (an upstream that does not
answer 200 gets the client a bare 502). msgspec is not used: decoding the
~260-byte chunk and encoding the event would add a few microseconds per chunk
on top of what this measures.

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python -m benchmarks.servers.raw_relay
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

from ._common import announce, listen, raise_nofile, run

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)
_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_BODY = b'{"model":"m","messages":[{"role":"user","content":"stamp"}],"stream":true}'
_CONTENT = b'"content":"'
_DONE = b"data: [DONE]"


def _upstream() -> tuple[str, int, bytes]:
    """Host, port and the request bytes for ``OPENAI_BASE_URL``."""
    url = urlsplit(os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1"))
    host, port = url.hostname or "127.0.0.1", url.port or 80
    key = os.environ.get("OPENAI_API_KEY", "bench-key")
    request = (
        f"POST {url.path.rstrip('/')}/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(_BODY)}\r\nConnection: close\r\n\r\n"
    ).encode() + _BODY
    return host, port, request


_HOST, _PORT, _REQUEST = _upstream()


def _content(event: bytes) -> bytes | None:
    """The raw (still JSON-escaped) ``"content"`` string of one event, or None."""
    i = event.find(_CONTENT)
    if i < 0:
        return None
    i += len(_CONTENT)
    j = event.find(b'"', i)
    while j > 0:  # skip escaped quotes: an odd run of backslashes before the quote
        k = j
        while event[k - 1] == 0x5C:
            k -= 1
        if (j - k) % 2 == 0:
            return event[i:j]
        j = event.find(b'"', j + 1)
    return None


class Client(asyncio.Protocol):
    """The client side: one request, then the relayed events."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.started = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.started:
            return  # one request per connection; anything after it is ignored
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self.buf[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        self.started = True
        self.buf = b""
        asyncio.get_running_loop().create_task(self.open())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: Upstream(self), _HOST, _PORT)
        except OSError:
            self.fail()
            return
        if self.closed:
            transport.close()
            return
        transport.write(_REQUEST)

    def fail(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_BAD_GATEWAY)
            self.transport.close()

    def finish(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LAST_CHUNK)
            self.transport.close()

    def pause_writing(self) -> None:
        upstream = self.upstream.transport if self.upstream is not None else None
        if upstream is not None and not upstream.is_closing():
            upstream.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream.transport if self.upstream is not None else None
        if upstream is not None and not upstream.is_closing():
            upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


class Upstream(asyncio.Protocol):
    """The upstream side: the response head, then chunked SSE relayed to ``client``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # bytes not yet parsed (head, or a partial chunk)
        self.events = b""  # de-chunked body bytes not yet ending in a blank line
        self.head = True  # still reading the response head
        self.chunked = True
        self.pending = _HEAD  # the client's response head, sent with the first events
        self.n = 0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.upstream = self

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        buf = self.buf + data if self.buf else data
        pos = 0
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                self.done = True
                self.client.fail()
                self._close()
                return
            self.chunked = b"transfer-encoding: chunked" in head
            self.head = False
            pos = end + 4
        if self.chunked:
            body = []
            last = False
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(buf[pos:nl].split(b";", 1)[0], 16)
                if size == 0:
                    last = True
                    break
                if len(buf) < nl + 2 + size + 2:
                    break  # partial chunk: wait for the rest
                body.append(buf[nl + 2 : nl + 2 + size])
                pos = nl + 2 + size + 2
            self.buf = b"" if last else buf[pos:]
            data = b"".join(body)
        else:
            self.buf = b""
            data = buf[pos:]
            last = False
        if data:
            self._relay(data)
        if last and not self.done:
            self._end()

    def _relay(self, data: bytes) -> None:
        events = self.events + data if self.events else data
        end = events.rfind(b"\n\n")
        if end < 0:
            self.events = events
            return
        self.events = events[end + 2 :]
        out = []
        done = False
        for event in events[:end].split(b"\n\n"):
            if event.startswith(_DONE):
                done = True
                break
            content = _content(event)
            if content is not None:
                self.n += 1
                out.append(b'id: %d\ndata: {"content":"%s"}\n\n' % (self.n, content))
        if out:
            payload = b"".join(out)
            frame = b"%x\r\n%s\r\n" % (len(payload), payload)
            if self.pending:
                frame = self.pending + frame
                self.pending = b""
            transport = self.client.transport
            if transport is not None and not transport.is_closing():
                transport.write(frame)
        if done:
            self._end()

    def _end(self) -> None:
        self.done = True
        if self.pending:  # no event at all: still a well-formed (empty) stream
            transport = self.client.transport
            if transport is not None and not transport.is_closing():
                transport.write(self.pending)
            self.pending = b""
        self.client.finish()
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            if self.head:
                self.done = True
                self.client.fail()
            else:
                if self.events:
                    self._relay(b"\n\n")
                if not self.done:
                    self._end()


async def main() -> None:
    raise_nofile()
    sock = listen()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Client, sock=sock, backlog=4096)
    announce(sock, "raw asyncio relay")
    await server.serve_forever()


if __name__ == "__main__":
    run(main)

"""A fake OpenAI upstream in stamp mode that one core can pace at ~50k chunks/s.

It sends, byte for byte, what ``python -m engine.testing openai --stamp N
--interval-ms MS --first-ms MS`` sends (:class:`engine.testing.FakeOpenAI` in
stamp mode), except for the stamps themselves, and it is the upstream of
``bench_latency`` and of the relay ladder in ``bench_concurrency``. That fake is
an aiohttp handler with a task and a sleep per chunk: 25-50 us of CPU per
chunk, too much to offer 1,000 streams x 50 chunks/s from the core it shares
with the client. This one is a raw asyncio Protocol on uvloop:

* it reads the request head and its ``Content-Length`` body, answers
  ``POST /v1/chat/completions`` (and ``/chat/completions``, as the fake does)
  with ``stream: true`` in the body, anything else with a 404 (a non-streamed
  or unreadable body gets a 400: the aiohttp fake would answer a JSON reply);
* the reply: ``200 OK``, ``Content-Type: text/event-stream; charset=utf-8``,
  ``Cache-Control: no-cache``, ``Transfer-Encoding: chunked``, ``Date``,
  ``Server`` (and ``Connection: close`` when the request asked for it), then one
  HTTP chunk per event: the role chunk, N content chunks whose ``content`` is
  ``time.time_ns()`` (19 digits) taken at the write, the finish chunk, the usage
  chunk when ``stream_options.include_usage`` asked for it (every chunk then
  carries ``"usage":null``), ``data: [DONE]`` and the last chunk. The model is
  echoed from the request, ids and ``created`` are the aiohttp fake's constants;
* connections are kept alive between requests unless the request says
  ``Connection: close`` (the gateway pools its upstream connections);
* pacing: one scheduler for every stream, a heap of due times and a single
  timer armed at the earliest one; each tick writes every stream that is due.
  Content chunk ``k`` of a stream is due at ``start + first_ms + k * interval``
  (absolute: a busy moment delays the chunks due then, not a stream's later
  ones), never written early, and its stamp is taken at the write. A client
  over its transport's high-water mark gets its due chunk when it drains;
* per chunk: one heap push and pop, one ``time_ns`` and one
  ``transport.write`` (about 8-11 us of CPU at 500-1,250 streams on the
  benchmark machine, against 13-23 us for the aiohttp fake, which also
  drifted to a 21-23 ms pace at 1,000 streams where this one holds 20.0).

:func:`check` runs both fakes in this process on a 3-chunk stream (with and
without ``include_usage``, two requests on one kept-alive connection, and a
404) and raises unless the status lines, the headers that matter, the HTTP
chunks and the de-chunked SSE bodies are identical once the stamps, ids and
``created`` are normalised; the benchmarks run it once before starting the fake.

    python -m benchmarks.servers.fake_stamp --stamp 100 --interval-ms 20 --first-ms 0
    python -m benchmarks.servers.fake_stamp --check
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import Any

from ._common import announce, listen, raise_nofile, run

# What engine.testing.openai sends (its _ID, _CREATED, _FINGERPRINT and chunk shapes).
_ID = "chatcmpl-fake0001"
_CREATED = 1_700_000_000
_FINGERPRINT = "fp_fake0001"
_PROMPT_TOKENS = 9
_PATHS = (b"/v1/chat/completions", b"/chat/completions")
_STAMP = "{{stamp}}"
_STAMP_DIGITS = 19  # time.time_ns() until the year 2286
_MAX_HEAD = 64 * 1024
_MAX_BUFFERED = 1024 * 1024
#: uvloop timers have millisecond resolution and round to the nearest: arm half a
#: millisecond late (at least a millisecond ahead) so a tick never comes early twice.
_TIMER_SLACK = 0.0005
_MIN_DELAY = 0.001
_LAST_CHUNK = b"0\r\n\r\n"
_SERVER = b"fake_stamp (benchmarks)"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


class _Frames:
    """The bytes of one kind of reply (model, usage on or off), HTTP chunks included."""

    __slots__ = ("content_head", "content_tail", "end", "role")

    def __init__(self, model: str, usage_on: bool, count: int) -> None:
        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": _ID,
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
                "choices": choices,
            }
            if usage_on:
                obj["usage"] = usage
            return b"data: " + _dumps(obj) + b"\n\n"

        role = {"role": "assistant", "content": "", "refusal": None}
        self.role = _chunked(event([_choice(role)]))
        content = event([_choice({"content": _STAMP})])
        head, tail = content.split(_STAMP.encode())
        size = len(head) + _STAMP_DIGITS + len(tail)
        self.content_head = b"%x\r\n%b" % (size, head)
        self.content_tail = tail + b"\r\n"
        end = [event([_choice({}, "stop")])]
        if usage_on:
            usage = {
                "prompt_tokens": _PROMPT_TOKENS,
                "completion_tokens": count,
                "total_tokens": _PROMPT_TOKENS + count,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            end.append(event([], usage))
        end.append(b"data: [DONE]\n\n")
        self.end = b"".join(_chunked(e) for e in end) + _LAST_CHUNK


_date: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


def _head(status: bytes, headers: Sequence[bytes], close: bool) -> bytes:
    lines = [b"HTTP/1.1 " + status, *headers, b"Date: " + _date_header(), b"Server: " + _SERVER]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


_STREAM_HEADERS = (
    b"Content-Type: text/event-stream; charset=utf-8",
    b"Cache-Control: no-cache",
    b"Transfer-Encoding: chunked",
)


class StampServer:
    """The stream settings and the one scheduler every connection shares (one per loop)."""

    def __init__(self, count: int, interval_ms: float, first_ms: float) -> None:
        if count < 1:
            raise ValueError("stamp mode needs at least one content chunk")
        self.count = count
        self.interval = interval_ms / 1000
        self.first = first_ms / 1000
        self.loop = asyncio.get_running_loop()
        self._frames: dict[tuple[str, bool], _Frames] = {}
        self._heap: list[tuple[float, int, _Conn]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self._ticking = False

    def protocol(self) -> _Conn:
        return _Conn(self)

    def frames(self, model: str, usage_on: bool) -> _Frames:
        key = (model, usage_on)
        frames = self._frames.get(key)
        if frames is None:
            frames = self._frames[key] = _Frames(model, usage_on, self.count)
        return frames

    def schedule(self, conn: _Conn, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), conn))
        if not self._ticking and due < self._armed:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = due
        delay = max(_MIN_DELAY, due - time.monotonic() + _TIMER_SLACK)
        self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._armed = float("inf")
        self._ticking = True
        heap = self._heap
        now = time.monotonic()
        try:
            while heap:
                due = heap[0][0]
                if due > now:
                    now = time.monotonic()
                    if due > now:
                        break
                conn = heapq.heappop(heap)[2]
                if not conn.lost:
                    conn.due()
        finally:
            self._ticking = False
            if heap:
                self._arm(heap[0][0])


class _Conn(asyncio.Protocol):
    """One client connection: requests one after another, one stream at a time."""

    def __init__(self, server: StampServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.streaming = False
        self.close_after = False
        self.lost = False
        self.paused = False
        self.waiting = False  # a chunk fell due while paused
        self.k = 0  # content chunks written in this stream
        self.start = 0.0  # when content chunk 0 is due (time.monotonic())
        self.frames: _Frames | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.streaming:
            if len(self.buf) > _MAX_BUFFERED:
                self._abort()
            return  # the next request waits for the end of this stream
        self._parse()

    def _parse(self) -> None:
        while not self.streaming and not self.lost:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._abort()
                return
            lines = buf[:end].split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3:
                self._abort()
                return
            method, target, version = parts
            length = 0
            close = version != b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    token = value.strip().lower()
                    close = token == b"close" or (close and token != b"keep-alive")
                elif name == b"transfer-encoding":
                    self._simple(b"501 Not Implemented", b"chunked request bodies", close=True)
                    return
            if len(buf) < end + 4 + length:
                return
            body = buf[end + 4 : end + 4 + length]
            self.buf = buf[end + 4 + length :]
            if method != b"POST" or target.split(b"?", 1)[0] not in _PATHS:
                self._simple(b"404 Not Found", b"404: Not Found", close)
                continue
            self._begin(body, close)

    def _simple(self, status: bytes, text: bytes, close: bool) -> None:
        assert self.transport is not None
        headers = (b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(text))
        self.transport.write(_head(status, headers, close) + text)
        if close:
            self.transport.close()
            self.lost = True

    def _begin(self, raw: bytes, close: bool) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("stream") is not True:
            self._simple(b"400 Bad Request", b"fake_stamp streams only (stream: true)", close)
            return
        model = body.get("model")
        options = body.get("stream_options") or {}
        usage_on = isinstance(options, dict) and bool(options.get("include_usage"))
        frames = self.server.frames(str(model) if model else "unknown", usage_on)
        self.frames = frames
        self.streaming = True
        self.close_after = close
        self.k = 0
        self.start = time.monotonic() + self.server.first
        head = _head(b"200 OK", _STREAM_HEADERS, close) + frames.role
        if self.server.first <= 0:
            self._content(head)
        else:
            assert self.transport is not None
            self.transport.write(head)
            self.server.schedule(self, self.start)

    def due(self) -> None:
        """The scheduler's call: content chunk ``k`` is due."""
        if self.paused:
            self.waiting = True
        else:
            self._content(b"")

    def _content(self, prefix: bytes) -> None:
        frames = self.frames
        transport = self.transport
        assert frames is not None and transport is not None
        data = b"%b%b%d%b" % (prefix, frames.content_head, time.time_ns(), frames.content_tail)
        self.k += 1
        if self.k < self.server.count:
            transport.write(data)
            self.server.schedule(self, self.start + self.k * self.server.interval)
            return
        transport.write(data + frames.end)
        self.streaming = False
        self.frames = None
        if self.close_after:
            transport.close()
            self.lost = True
        elif self.buf:
            self._parse()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.lost = True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.waiting and not self.lost:
            self.waiting = False
            self._content(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # the scheduler drops its entry when it comes due


# -- the self-check against engine.testing's fake ---------------------------------------

_NORMALISE: tuple[tuple[re.Pattern[bytes], bytes], ...] = (
    (re.compile(rb'"content":"\d{19}"'), b'"content":"<stamp>"'),
    (re.compile(rb'"id":"[^"]*"'), b'"id":"<id>"'),
    (re.compile(rb'"created":\d+'), b'"created":0'),
)
#: Response headers compared (the rest, Date and Server, differ by nature).
_COMPARED = ("content-type", "cache-control", "transfer-encoding", "connection")


def _normalise(data: bytes) -> bytes:
    for pattern, repl in _NORMALISE:
        data = pattern.sub(repl, data)
    return data


def _request(body: bytes, close: bool, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode() + body


async def _response(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Status line, compared headers, the HTTP chunks (or the body) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    out: dict[str, Any] = {
        "status": lines[0].decode(),
        "headers": {k: headers.get(k) for k in _COMPARED},
    }
    if "content-length" in headers:
        out["body"] = await reader.readexactly(int(headers["content-length"]))
        return out
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        chunks.append(data[:-2])
    out["chunks"] = chunks
    return out


async def _exchange(port: int, requests: Sequence[bytes]) -> list[dict[str, Any]]:
    """The requests one after another on one connection; each response in full."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        out = []
        for request in requests:
            writer.write(request)
            out.append(await asyncio.wait_for(_response(reader), 10))
        return out
    finally:
        writer.close()


def _stamps(response: dict[str, Any]) -> list[int]:
    return [int(m) for c in response.get("chunks", []) for m in re.findall(rb"\d{19}", c)]


def _compare(what: str, old: dict[str, Any], new: dict[str, Any], count: int) -> list[str]:
    errors = []
    if old["status"] != new["status"]:
        errors.append(f"{what}: status {old['status']!r} != {new['status']!r}")
    if old["headers"] != new["headers"]:
        errors.append(f"{what}: headers {old['headers']} != {new['headers']}")
    if "chunks" in old or "chunks" in new:
        a = [_normalise(c) for c in old.get("chunks", [])]
        b = [_normalise(c) for c in new.get("chunks", [])]
        if b"".join(a) != b"".join(b):
            errors.append(f"{what}: SSE bodies differ:\n  engine.testing {a}\n  fake_stamp     {b}")
        elif a != b:
            errors.append(f"{what}: HTTP chunk framing differs: {a} != {b}")
        stamps = _stamps(new)
        if len(stamps) != count or stamps != sorted(stamps):
            errors.append(f"{what}: fake_stamp's stamps are not {count} increasing: {stamps}")
    return errors


async def _check(count: int, interval_ms: float) -> None:
    from engine.testing import FakeOpenAI, serve
    from engine.testing.__main__ import parse_args, script_from

    args = ["openai", "--stamp", str(count), "--interval-ms", f"{interval_ms:g}"]
    old_fake = FakeOpenAI(script_from(parse_args([*args, "--first-ms", "0"])))
    loop = asyncio.get_running_loop()
    new = StampServer(count, interval_ms, 0)
    server = await loop.create_server(new.protocol, "127.0.0.1", 0)
    plain = b'{"model":"m","messages":[{"role":"user","content":"stamp"}],"stream":true}'
    usage = (
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi \\u00e9"}],'
        b'"stream":true,"stream_options":{"include_usage":true},"max_tokens":5}'
    )
    cases: dict[str, list[bytes]] = {
        "plain, Connection: close": [_request(plain, close=True)],
        "include_usage, then plain on the same kept-alive connection": [
            _request(usage, close=False),
            _request(plain, close=True),
        ],
        "unknown path": [_request(plain, close=True, path="/v1/other")],
    }
    errors: list[str] = []
    try:
        async with serve(old_fake.app()) as url:
            old_port = int(url.rsplit(":", 1)[1])
            new_port = server.sockets[0].getsockname()[1]
            for what, requests in cases.items():
                old, got = await asyncio.gather(
                    _exchange(old_port, requests), _exchange(new_port, requests)
                )
                for i, (a, b) in enumerate(zip(old, got, strict=True)):
                    errors += _compare(f"{what} (response {i + 1})", a, b, count)
    finally:
        server.close()
    if errors:
        raise RuntimeError(
            "benchmarks.servers.fake_stamp does not send what engine.testing's fake sends:\n"
            + "\n".join(errors)
        )


def check(count: int = 3, interval_ms: float = 20) -> None:
    """Raise unless this fake and ``engine.testing``'s send the same bytes (see the module)."""
    import uvloop

    uvloop.run(_check(count, interval_ms))


# -- the command line --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.servers.fake_stamp", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--stamp", type=int, default=50, metavar="N", help="content chunks")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="ms between chunks")
    parser.add_argument("--first-ms", type=float, default=0.0, help="ms before the first chunk")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare with engine.testing, exit")
    return parser.parse_args(argv)


def _serve(args: argparse.Namespace) -> Callable[[], Any]:
    async def main() -> None:
        raise_nofile()
        os.environ["BENCH_PORT"] = str(args.port)
        sock = listen()
        stamps = StampServer(args.stamp, args.interval_ms, args.first_ms)
        server = await stamps.loop.create_server(stamps.protocol, sock=sock, backlog=4096)
        announce(
            sock,
            f"fake OpenAI stamp upstream ({args.stamp} chunks every {args.interval_ms:g} ms, "
            f"first after {args.first_ms:g} ms)",
        )
        await server.serve_forever()

    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        check()
        print("fake_stamp sends what engine.testing's fake sends")
        return 0
    run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""engine.server: the server under ``sse-engine serve``, attacked over raw sockets.

Each test runs the real server (``start_server``, what ``serve()`` runs) on an
ephemeral port with timeouts of a fraction of a second. Sleeps below only make
the attacker slow; nothing waits on one to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest

from engine.server import BAD_REQUEST_LOG_INTERVAL, start_server
from tests.helpers import make_config, read_events

SHORT = 0.5  # the timeout under test
LONG = 30.0  # a timeout that must not be the one that acts (the tests wait 10 s at most)
BOUND = 10.0  # how long a test waits for the server to act


@pytest.fixture
async def serve():
    """``await serve(**config)`` starts a server; yields ``(host, port)``."""
    runners = []

    async def start(**overrides):
        runner = await start_server(make_config(port=0, **overrides))
        runners.append(runner)
        return runner.addresses[0][:2]

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_response(reader):
    """One HTTP/1.x response with a Content-Length: (status, headers, body bytes)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), BOUND)
    return int(status_line.split()[1]), headers, body


def request(path="/healthz"):
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


async def closed_within_bound(reader):
    """Wait for EOF; return what was read first (the server sent nothing: b"").

    A reset counts as closed: a byte the client drips after the server closed
    makes the server's kernel answer RST, which may arrive before the FIN is read.
    """
    received = b""

    async def until_closed() -> None:
        nonlocal received
        while data := await reader.read(65536):
            received += data

    try:
        await asyncio.wait_for(until_closed(), BOUND)
    except ConnectionResetError:
        pass
    return received


async def drip(writer, data, interval=0.1):
    """Send ``data`` a byte at a time, as slowly as a slowloris client."""
    for byte in data:
        writer.write(bytes([byte]))
        await asyncio.sleep(interval)


async def drip_until_closed(reader, writer, data):
    """Drip ``data`` (never a complete head) until the server closes; return what it sent."""
    sender = asyncio.create_task(drip(writer, data))
    try:
        return await closed_within_bound(reader)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)  # writes after the close may fail


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="engine.server")
    host, port = await serve(header_timeout=SHORT, keepalive_timeout=LONG)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await closed_within_bound(reader) == b""
        # The timer starts when the server accepts, after `started`.
        assert time.monotonic() - started >= 0.8 * SHORT
    finally:
        writer.close()
    lines = [r for r in caplog.records if r.name == "engine.server"]
    assert len(lines) == 1 and "no complete request head" in lines[0].getMessage()
    assert lines[0].levelno == logging.DEBUG


async def test_a_head_sent_a_byte_at_a_time_is_closed_after_header_timeout(serve):
    host, port = await serve(header_timeout=SHORT, keepalive_timeout=LONG)
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    try:
        # Far more bytes than fit in the timeout at this rate, never the final CRLF CRLF.
        sent = await drip_until_closed(
            reader, writer, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200
        )
        assert sent == b""
        assert time.monotonic() - started >= 0.8 * SHORT
    finally:
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(serve):
    host, port = await serve(header_timeout=LONG, keepalive_timeout=SHORT)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection", "keep-alive") != "close"
        answered = time.monotonic()
        assert await closed_within_bound(reader) == b""
        assert time.monotonic() - answered >= 0.8 * SHORT
    finally:
        writer.close()


async def test_a_slow_second_head_is_closed_after_header_timeout(serve):
    host, port = await serve(header_timeout=SHORT, keepalive_timeout=LONG)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        status, _, _ = await read_response(reader)
        assert status == 200
        started = time.monotonic()
        sent = await drip_until_closed(
            reader, writer, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200
        )
        assert sent == b""
        assert time.monotonic() - started >= 0.8 * SHORT
    finally:
        writer.close()


async def test_a_slow_second_head_is_also_bounded_by_keepalive_timeout(serve):
    # aiohttp's keep-alive timer runs from the end of the response and is not
    # reset by bytes that make no complete head: engine.server relies on it.
    host, port = await serve(header_timeout=LONG, keepalive_timeout=SHORT)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        status, _, _ = await read_response(reader)
        assert status == 200
        sent = await drip_until_closed(
            reader, writer, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200
        )
        assert sent == b""
    finally:
        writer.close()


async def test_a_well_behaved_keepalive_client_is_not_affected(serve):
    host, port = await serve(header_timeout=SHORT, keepalive_timeout=SHORT)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        # Six requests over about 1.5 s on one connection: longer than either timeout
        # in total, each pause and each head well within them.
        for i in range(6):
            if i % 2:
                head = request()
                writer.write(head[:10])  # a head in two pieces, 0.1 s apart
                await asyncio.sleep(0.1)
                writer.write(head[10:])
            else:
                writer.write(request())
            status, headers, body = await read_response(reader)
            assert status == 200, body
            assert json.loads(body)["status"] == "ok"
            assert headers.get("connection") != "close"
            await asyncio.sleep(0.4 * SHORT)  # a client's think time
        assert not reader.at_eof()
    finally:
        writer.close()


@pytest.mark.slow  # the stream lasts about 4 s
async def test_a_long_stream_outlives_both_timeouts(serve):
    host, port = await serve(header_timeout=SHORT, keepalive_timeout=SHORT)
    url = f"http://{host}:{port}/v1/chat/stream?q=hi&max_tokens=200&interval_ms=20"
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        events = await read_events(resp)
    assert time.monotonic() - started > 4 * SHORT  # the premise: it outlasted both timers
    assert events[0].event == "start"
    assert events[-1].event == "done"
    assert len(events) > 100


MARKER = b"Xyzzy7f3a"
MALFORMED = [
    b"GARBAGE-" + MARKER + b"\r\n\r\n",
    b"GET /" + MARKER + b" HTTP/1.1\r\nHost: localhost\r\n" + MARKER + b" no colon\r\n\r\n",
    b"G@T" + MARKER + b" / HTTP/1.1\r\nHost: localhost\r\n\r\n",  # invalid method
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: " + MARKER * 2000 + b"\r\n\r\n",  # too long
    b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + MARKER + b"\r\n\r\n",
    b"GET / HTTP/9." + MARKER + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARKER + b"\r\n\r\n",  # TLS on the HTTP port
]


async def send_malformed(host, port, data):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        raw = await closed_within_bound(reader)  # the server answers, then closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return raw, head, body


async def test_malformed_requests_get_a_json_400_and_a_few_log_lines(serve, caplog):
    caplog.set_level(logging.DEBUG)
    host, port = await serve(header_timeout=LONG, keepalive_timeout=LONG)
    started = time.monotonic()
    for i in range(200):
        raw, head, body = await send_malformed(host, port, MALFORMED[i % len(MALFORMED)])
        assert MARKER.lower() not in raw.lower()
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split()[1] == "400", raw[:300]
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert headers["server"] == "sse-engine"
        error = json.loads(body)
        assert error.keys() == {"error", "message", "code", "type"}
        assert error["error"] is True and error["code"] == 400 and error["type"] == "bad_request"
    elapsed = time.monotonic() - started

    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "engine"))]
    assert 1 <= len(ours) <= 2 + elapsed / BAD_REQUEST_LOG_INTERVAL
    assert all(r.levelno <= logging.INFO and r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text
    assert MARKER.decode().lower() not in caplog.text.lower()


async def test_a_malformed_request_after_a_good_one_on_the_same_connection(serve, caplog):
    host, port = await serve(header_timeout=LONG, keepalive_timeout=LONG)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        status, _, _ = await read_response(reader)
        assert status == 200
        writer.write(b"G@T /" + MARKER + b" HTTP/1.1\r\n\r\n")
        raw = await closed_within_bound(reader)
    finally:
        writer.close()
    assert b" 400 " in raw.split(b"\r\n")[0] and MARKER not in raw
    assert b'"type":"bad_request"' in raw
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

"""EventStream on a real loopback server: heartbeats, disconnects, slow readers, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from engine import create_app
from engine.app import ENGINE
from engine.errors import UpstreamUnavailable
from engine.gateway import Engine
from engine.sse import Decoder

from .helpers import ScriptedProvider, make_config, read_events, running

BODY = {"messages": [{"role": "user", "content": "hi"}], "provider": "scripted"}


def app_with(provider: ScriptedProvider, **config) -> web.Application:
    engine = Engine(make_config(**config))
    engine.add_provider(provider)
    return create_app(engine=engine)


async def test_heartbeat_covers_the_silence_before_the_first_token(aiohttp_client):
    gate = asyncio.Event()
    provider = ScriptedProvider(["first"], gate=gate)
    client = await aiohttp_client(app_with(provider, heartbeat=0.05))
    async with client.post("/v1/chat/stream", json=BODY) as resp:
        assert resp.status == 200
        raw = b""
        # The provider has sent nothing yet: only keep-alive comments can arrive.
        while raw.count(b": keepalive\n") < 2:
            raw += await resp.content.readany()
        assert b"data:" in raw  # the start event went out with the headers
        assert b'"content"' not in raw
        gate.set()
        raw += await resp.read()
    events = Decoder().feed(raw)
    assert [e.event for e in events] == ["start", "message", "done"]


async def test_no_heartbeat_while_events_flow(aiohttp_client):
    client = await aiohttp_client(create_app(make_config(heartbeat=5.0)))
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"max_tokens": 20, "interval_ms": 1},
    }
    async with client.post("/v1/chat/stream", json=body) as resp:
        raw = await resp.read()
    assert b"keepalive" not in raw


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_disconnect_stops_the_producer(caplog, handler_cancellation):
    """Whether or not aiohttp cancels handlers itself, the producer stops within a second."""
    gate = asyncio.Event()
    provider = ScriptedProvider(["one", "two", "three"], gate=gate)
    app = app_with(provider, heartbeat=0.2)
    caplog.set_level(logging.DEBUG)
    async with running(app, handler_cancellation=handler_cancellation) as url:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{url}/v1/chat/stream", json=BODY)
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")  # retry and the start event
            await provider.started.wait()
            resp.close()  # the client goes away while the upstream is silent
            await asyncio.wait_for(provider.closed.wait(), 1.5)
            assert provider.sent == 0
            # Nothing was left registered, and nothing was logged as an error.
            await asyncio.wait_for(app[ENGINE].supervisor.wait_empty(), 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]


async def test_upstream_error_mid_stream_becomes_an_error_event(aiohttp_client):
    provider = ScriptedProvider(
        ["a", "b", "c"],
        fail_after=2,
        error=UpstreamUnavailable("Overloaded", upstream_type="overloaded_error"),
    )
    client = await aiohttp_client(app_with(provider))
    async with client.post("/v1/chat/stream", json=BODY) as resp:
        assert resp.status == 200
        events = await read_events(resp)
    assert [e.event for e in events] == ["start", "message", "message", "error"]
    assert json.loads(events[-1].data) == {
        "error": True,
        "message": "Overloaded",
        "code": 503,
        "type": "upstream_unavailable",
    }
    assert provider.closed.is_set()


async def test_a_bug_mid_stream_is_an_error_event_not_a_traceback_to_the_client(
    aiohttp_client, caplog
):
    provider = ScriptedProvider(["a", "b"], fail_after=1, error=ZeroDivisionError("boom"))
    client = await aiohttp_client(app_with(provider))
    async with client.post("/v1/chat/stream", json=BODY) as resp:
        events = await read_events(resp)
    assert events[-1].event == "error"
    data = json.loads(events[-1].data)
    assert data["code"] == 500 and data["type"] == "engine_error"
    assert "boom" not in data["message"]
    # ...but the server's log has it, for whoever runs the gateway.
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


async def test_event_stream_api_in_a_user_handler(aiohttp_client):
    engine = Engine(make_config())

    async def handler(request: web.Request) -> web.StreamResponse:
        async with engine.sse(request) as stream:
            await stream.send("two\nlines", event="note", id="7")
            await stream.send({"n": 1})
            await stream.comment("still here")
            await stream.retry(1500)
            await stream.end()
            await stream.end()  # only one done event
        return stream.response

    app = web.Application()
    app.router.add_get("/sse", handler)

    async def close(app: web.Application) -> None:
        await engine.aclose()

    app.on_cleanup.append(close)
    client = await aiohttp_client(app)
    async with client.get("/sse") as resp:
        raw = await resp.read()
    assert b": still here\n" in raw
    decoder = Decoder()
    events = decoder.feed(raw)
    assert [(e.event, e.data, e.id) for e in events] == [
        ("note", "two\nlines", "7"),
        ("message", '{"n":1}', "7"),
        ("done", '{"type":"done"}', "7"),
    ]
    assert decoder.retry == 1500


async def test_exception_in_user_handler_becomes_error_event(aiohttp_client):
    engine = Engine(make_config())

    async def handler(request: web.Request) -> web.StreamResponse:
        async with engine.sse(request) as stream:
            await stream.send("hello")
            raise UpstreamUnavailable("try later")
        return stream.response

    app = web.Application()
    app.router.add_get("/sse", handler)
    client = await aiohttp_client(app)
    async with client.get("/sse") as resp:
        events = await read_events(resp)
    await engine.aclose()
    assert [e.event for e in events] == ["message", "error"]
    assert json.loads(events[1].data)["type"] == "upstream_unavailable"


async def test_a_reader_that_stops_reading_is_dropped_after_the_send_timeout(aiohttp_server):
    """A frozen client must not make the gateway buffer without bound (USERS-ASK 8)."""
    app = create_app(make_config(send_timeout=0.3, heartbeat=0.2))
    server = await aiohttp_server(app)
    engine = app[ENGINE]

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    try:
        # 2000 chunks of 4 KiB, as fast as possible; the client never reads.
        body = json.dumps(
            {
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"max_tokens": 2000, "token_size": 4096, "interval_ms": 0},
            }
        ).encode()
        request = (
            b"POST /v1/chat/stream HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        ) + body
        await loop.sock_sendall(sock, request)
        async with asyncio.timeout(5):
            while not len(engine.supervisor):  # noqa: ASYNC110 - no event for "registered"
                await asyncio.sleep(0.01)
            # The stream is dropped and unregistered although nobody read it.
            await engine.supervisor.wait_empty()
        # The server aborted the connection: reading drains what was buffered, then ends.
        received = 0
        async with asyncio.timeout(5):
            while True:
                try:
                    data = await loop.sock_recv(sock, 65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                received += len(data)
        assert received < 2000 * 4096 / 2  # far less than the whole reply was ever sent
    finally:
        sock.close()


async def test_shutdown_sends_a_farewell_after_the_grace_period():
    gate = asyncio.Event()
    provider = ScriptedProvider(["a", "b"], gate=gate)
    app = app_with(provider, shutdown_grace=0.2, heartbeat=0.1)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/stream", json=BODY) as resp:
            assert resp.status == 200
            await provider.started.wait()
            cleanup = asyncio.create_task(runner.cleanup())
            events = await read_events(resp)
        await cleanup
    assert [e.event for e in events] == ["start", "error"]
    assert json.loads(events[-1].data)["type"] == "shutdown"
    # A resumable stream's farewell has its id (a resume would replay it) and
    # tells an EventSource to come back in a moment.
    sid = json.loads(events[0].data)["stream_id"]
    assert events[-1].id == f"{sid}:1"
    assert events[-1].retry == 5000
    assert provider.closed.is_set()


async def test_shutdown_lets_streams_that_finish_in_time_finish():
    gate = asyncio.Event()
    provider = ScriptedProvider(["a", "b"], gate=gate)
    app = app_with(provider, shutdown_grace=5)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/stream", json=BODY) as resp:
            await provider.started.wait()
            cleanup = asyncio.create_task(runner.cleanup())
            await asyncio.sleep(0)
            gate.set()
            events = await read_events(resp)
        await cleanup
    assert [e.event for e in events] == ["start", "message", "message", "done"]


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/completions"])
async def test_client_leaving_a_non_streaming_request_stops_the_upstream(path):
    """Even without aiohttp's handler_cancellation (an app mounted elsewhere)."""
    provider = ScriptedProvider(["never"], gate=asyncio.Event())
    app = app_with(provider, heartbeat=0.2)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    body |= {"provider": "scripted"} if path == "/v1/chat" else {"model": "scripted/x"}
    async with running(app, handler_cancellation=False) as url:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.post(url + path, json=body))
            await provider.started.wait()
            request.cancel()  # the client gives up and closes its connection
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.wait_for(provider.closed.wait(), 1.5)
            assert provider.sent == 0
            await asyncio.wait_for(app[ENGINE].supervisor.wait_empty(), 1)


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
async def test_streams_ask_the_kernel_to_drop_half_open_clients(aiohttp_client):
    """Unacknowledged data for longer than the send timeout closes the connection."""
    engine = Engine(make_config(send_timeout=7.5))
    seen = []

    async def handler(request: web.Request) -> web.StreamResponse:
        async with engine.sse(request) as stream:
            sock = request.transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
            await stream.send("x")
        return stream.response

    app = web.Application()
    app.router.add_get("/sse", handler)
    client = await aiohttp_client(app)
    async with client.get("/sse") as resp:
        await resp.read()
    await engine.aclose()
    assert seen == [7500]


def _dechunk(body: bytes) -> bytes:
    """Strict HTTP/1.1 chunked decoding (RFC 9112 section 7.1): every size line, every CRLF."""
    out = bytearray()
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol], 16)  # a bare hex size: no extensions, no padding
        pos = eol + 2
        if size == 0:
            assert body[pos:] == b"\r\n", "the last chunk is followed by the final CRLF only"
            return bytes(out)
        out += body[pos : pos + size]
        assert body[pos + size : pos + size + 2] == b"\r\n", "a chunk's data ends with CRLF"
        pos += size + 2


@pytest.mark.parametrize("interval_ms", [0, 2], ids=["burst", "paced"])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_the_body_on_the_wire_is_exact_for_both_http_versions(version, interval_ms):
    """HTTP/1.1 gets a chunked body (framed by EventStream itself after the first
    write); HTTP/1.0 has no chunked encoding, so the body is the bare event
    stream, ended by closing the connection. Both carry the same events, whether
    chunks come in bursts (coalesced writes) or one at a time (a write each)."""
    n = 40
    app = create_app(make_config(retry_ms=None))
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"max_tokens": n, "interval_ms": interval_ms},
        }
    ).encode()
    async with running(app, handler_cancellation=False) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/chat/stream HTTP/{version}\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        async with asyncio.timeout(10):
            raw = await reader.read()  # until the server closes
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    headers = head.decode().lower()
    assert headers.startswith(f"http/{version} 200")
    if version == "1.1":
        assert "transfer-encoding: chunked" in headers
        payload = _dechunk(payload)
    else:
        assert "transfer-encoding" not in headers
    events = Decoder().feed(payload)
    assert [e.event for e in events] == ["start"] + ["message"] * n + ["done"]
    chunks = [json.loads(e.data) for e in events[1:-1]]
    assert all(c["content"] for c in chunks)
    assert chunks[-1]["finish_reason"] == "length"
    sid = json.loads(events[0].data)["stream_id"]
    assert [e.id for e in events] == [f"{sid}:{k}" for k in range(n + 2)]


async def test_a_kept_alive_connection_serves_another_request_after_a_stream():
    """Streams stop aiohttp's idle-connection timer while they run; the connection
    must still be kept alive and reused for the next request, as before."""
    app = create_app(make_config(heartbeat=0.05))
    body = {"messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 5}}
    async with running(app, handler_cancellation=False) as url:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            ports = []
            for _ in range(3):
                async with session.post(url + "/v1/chat/stream", json=body) as resp:
                    assert resp.status == 200
                    assert resp.connection is not None and resp.connection.transport is not None
                    ports.append(resp.connection.transport.get_extra_info("sockname")[1])
                    events = await read_events(resp)
                assert events[-1].event == "done"
                await asyncio.sleep(0.15)  # heartbeats ticked meanwhile; nothing left half-written
            async with session.get(url + "/healthz") as resp:
                assert resp.status == 200
    assert len(set(ports)) == 1, "every request went over the one kept-alive connection"


async def test_an_idle_stream_whose_reader_froze_is_dropped_by_its_heartbeats(
    aiohttp_server, monkeypatch
):
    """Heartbeats are written in place by the supervisor; when they pile up
    unread, the bounded drain wait (send_timeout) still drops the client."""
    # Not the kernel's TCP_USER_TIMEOUT (which would drop it too): the drain wait.
    monkeypatch.setattr("engine.streams.response._limit_unacked", lambda transport, seconds: None)
    engine = Engine(make_config(heartbeat=0.002, send_timeout=0.3))
    ended: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        request.transport.set_write_buffer_limits(high=256)
        try:
            async with engine.sse(request) as stream:
                await stream.send("hello")
                await asyncio.sleep(30)  # idle: only heartbeats from here on
        finally:
            ended.append(stream.end_reason)
        return stream.response

    app = web.Application()
    app.router.add_get("/sse", handler)

    async def close(app: web.Application) -> None:
        await engine.aclose()

    app.on_cleanup.append(close)
    server = await aiohttp_server(app)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    try:
        await loop.sock_sendall(sock, b"GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n")
        async with asyncio.timeout(10):
            while not len(engine.supervisor):  # noqa: ASYNC110 - no event for "registered"
                await asyncio.sleep(0.01)
            await engine.supervisor.wait_empty()  # never read a byte, yet dropped
        assert ended == ["client_disconnected"]
    finally:
        sock.close()


async def test_the_response_size_aiohttp_logs_is_the_bytes_on_the_wire():
    """Frames written straight to the transport are counted as aiohttp counts its
    own writes, so the access log's size (``%b``) stays exact."""
    engine = Engine(make_config(heartbeat=60))
    sizes: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        async with engine.sse(request) as stream:
            for i in range(5):
                await stream.send({"n": i})
        sizes.append(stream.response.body_length)
        return stream.response

    app = web.Application()
    app.router.add_get("/sse", handler)
    async with running(app, handler_cancellation=False) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /sse HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            raw = await reader.read()
        writer.close()
    await engine.aclose()
    assert raw.endswith(b"0\r\n\r\n")
    assert sizes == [len(raw)]

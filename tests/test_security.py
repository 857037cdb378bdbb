"""Hardening, tried as an attacker would on loopback: keys, history, nesting, Host, Expect,
the header deadline. (Slowloris and malformed requests: test_server.py; the mock's size:
test_mock_provider.py; upstream redirects and URLs: test_upstream_hygiene.py.)"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncGenerator, Sequence

import pytest

from engine import create_app
from engine.app import ENGINE
from engine.errors import UpstreamError, UpstreamRateLimited
from engine.providers.base import ChunkStream, Provider
from engine.wire import Chunk, Message, Options

from .helpers import ScriptedProvider, make_config, read_events

KEY = "sk-test-0123456789abcdef0123456789abcdef"
USER = [{"role": "user", "content": "hi"}]


def _config(**overrides):
    overrides.setdefault("providers", {"openai": {"api_key": KEY}})
    return make_config(**overrides)


# -- 2. provider keys never leave in an error ----------------------------------------


@pytest.mark.parametrize("route", ["native", "openai"])
async def test_a_key_in_an_error_mid_stream_is_redacted(aiohttp_client, caplog, route):
    app = create_app(_config())
    provider = ScriptedProvider(
        ["one ", "two"], fail_after=1, error=UpstreamError(f"boom key={KEY}")
    )
    app[ENGINE].add_provider(provider, "mock")
    client = await aiohttp_client(app)
    if route == "native":
        resp = await client.post("/v1/chat/stream", json={"messages": USER})
    else:
        body = {"model": "mock/x", "messages": USER, "stream": True}
        resp = await client.post("/v1/chat/completions", json=body)
    raw = (await resp.read()).decode()
    assert resp.status == 200
    assert "boom key=***" in raw
    assert KEY not in raw
    assert KEY not in caplog.text


@pytest.mark.parametrize("route", ["native", "openai"])
async def test_a_key_in_an_error_before_the_stream_is_redacted(aiohttp_client, caplog, route):
    class Refusing(ScriptedProvider):
        async def open(self, messages, *, model=None, options=None):
            raise UpstreamError(f"upstream said: your key {KEY} is wrong")

    app = create_app(_config())
    app[ENGINE].add_provider(Refusing(), "mock")
    client = await aiohttp_client(app)
    if route == "native":
        resp = await client.post("/v1/chat/stream", json={"messages": USER})
        message = (await resp.json())["message"]
    else:
        body = {"model": "mock/x", "messages": USER, "stream": True}
        resp = await client.post("/v1/chat/completions", json=body)
        message = (await resp.json())["error"]["message"]
    assert resp.status == 502
    assert message == "upstream said: your key *** is wrong"
    assert KEY not in caplog.text


# -- 3. the stored history: bounded by default, not held while streaming --------------


class Gated(Provider):
    """One chunk, then waits for ``gate``; keeps nothing of the request."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__(model="gated-1")
        self.gate = asyncio.Event()
        self.open_streams = 0

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        return ChunkStream(self._chunks(), model=model or self.default_model)

    async def _chunks(self) -> AsyncGenerator[Chunk, None]:
        self.open_streams += 1
        try:
            yield Chunk(role="assistant", content="first", model="gated-1", finish_reason=None)
            await self.gate.wait()
            yield Chunk(role="assistant", content="last", model="gated-1", finish_reason="stop")
        finally:
            self.open_streams -= 1


@pytest.mark.parametrize("route", ["native", "openai"])
async def test_open_streams_do_not_hold_the_stored_history(aiohttp_client, tmp_path, route):
    """30 streams on a 10 MB conversation once took 285-859 MiB (the OpenAI route)."""
    history_mb = 4
    app = create_app(
        make_config(memory_url=f"sqlite:///{tmp_path}/m.db", max_history_chars=100_000_000)
    )
    provider = Gated()
    app[ENGINE].add_provider(provider, "mock")
    client = await aiohttp_client(app)
    conv = (await app[ENGINE].open_memory()).for_parent("Chat", "big")
    for i in range(history_mb):
        await conv.add_message("user" if i % 2 == 0 else "assistant", str(i) * 1_000_000)

    streams = 5
    responses = []
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(streams):
            if route == "native":
                body = {"messages": USER, "session": {"parent": "Chat", "id": "big"}}
                resp = await client.post("/v1/chat/stream", json=body)
            else:
                body = {"model": "mock/x", "messages": USER, "stream": True}
                headers = {"X-Session-Parent": "Chat", "X-Session-Id": "big"}
                resp = await client.post("/v1/chat/completions", json=body, headers=headers)
            responses.append(resp)
            async for line in resp.content:  # up to the first chunk: the stream is open
                if b"first" in line:
                    break
        assert provider.open_streams == streams
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        provider.gate.set()
        for resp in responses:
            await resp.read()
    # Each stream loaded 4 MB of history; none of it may stay referenced.
    assert held < history_mb * 1_000_000 / 2, f"{held / 1e6:.1f} MB held by {streams} streams"


async def _stored(app, n, size=10):
    conv = (await app[ENGINE].open_memory()).for_parent("Chat", "long")
    await conv.add_messages(
        [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:0{size}d}"}
            for i in range(n)
        ]
    )


async def test_history_sent_upstream_is_bounded_by_default(aiohttp_client):
    app = create_app(make_config())
    provider = ScriptedProvider(["ok"])
    app[ENGINE].add_provider(provider, "mock")
    client = await aiohttp_client(app)
    await _stored(app, 150)
    body = {"messages": USER, "session": {"parent": "Chat", "id": "long"}}
    assert (await client.post("/v1/chat", json=body)).status == 200
    sent = provider.requests[-1][0]
    assert len(sent) == 100 + 1  # the default max_history, then the new message
    assert sent[0].content == f"{50:010d}"  # the newest 100 of the 150
    # A request may ask for more, up to the documented bound.
    body["options"] = {"max_history": 120}
    assert (await client.post("/v1/chat", json=body)).status == 200
    assert len(provider.requests[-1][0]) == 120 + 1
    body["options"] = {"max_history": 10**20}
    resp = await client.post("/v1/chat", json=body)
    assert resp.status == 422
    assert "max_history" in (await resp.json())["message"]


async def test_history_sent_upstream_is_bounded_in_characters(aiohttp_client):
    app = create_app(make_config(max_history_chars=1000))
    provider = ScriptedProvider(["ok"])
    app[ENGINE].add_provider(provider, "mock")
    client = await aiohttp_client(app)
    await _stored(app, 30, size=100)
    body = {"messages": USER, "session": {"parent": "Chat", "id": "long"}}
    assert (await client.post("/v1/chat", json=body)).status == 200
    sent = provider.requests[-1][0]
    # The newest ten messages of 100 characters fit in 1,000; oldest dropped first.
    assert [m.content for m in sent[:-1]] == [f"{i:0100d}" for i in range(20, 30)]


# -- 4. deep JSON and huge numbers are 4xx, not 500 ----------------------------------


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [100, 5000])
async def test_deeply_nested_tools_are_refused(aiohttp_client, depth):
    client = await aiohttp_client(create_app(make_config()))
    tool = '{"type":"function","function":{"name":"f","parameters":' + _nested(depth) + "}}"
    native = '{"messages":[{"role":"user","content":"x"}],"options":{"tools":[' + tool + "]}}"
    resp = await client.post(
        "/v1/chat/stream", data=native, headers={"Content-Type": "application/json"}
    )
    assert resp.status in (400, 422)
    assert "nested" in (await resp.json())["message"]
    openai = '{"model":"mock/x","messages":[{"role":"user","content":"x"}],"tools":[' + tool + "]}"
    resp = await client.post(
        "/v1/chat/completions", data=openai, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert "nested" in (await resp.json())["error"]["message"]


async def test_a_deeply_nested_unknown_field_is_400(aiohttp_client):
    client = await aiohttp_client(create_app(make_config()))
    # Inside a free-form field (a JSON Schema): an unknown field is refused by name first.
    body = (
        '{"model":"mock/x","messages":[{"role":"user","content":"x"}],'
        '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"a":%s}}}}'
        % ("[" * 5000 + "]" * 5000)
    )
    resp = await client.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert "nested too deeply" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("depth", [100, 5000])
async def test_deeply_nested_metadata_is_refused_and_nothing_stored(aiohttp_client, depth):
    client = await aiohttp_client(create_app(make_config()))
    body = '{"role":"user","content":"x","metadata":' + _nested(depth) + "}"
    resp = await client.post(
        "/v1/memory/Chat/1/messages", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status in (400, 422)
    assert "nested" in (await resp.json())["message"]
    assert (await (await client.get("/v1/memory/Chat/1")).json())["messages"] == []


async def test_a_huge_limit_reads_everything(aiohttp_client, tmp_path):
    # SQLite: its 64-bit LIMIT raised OverflowError (a 500) for 20 digits.
    client = await aiohttp_client(create_app(make_config(memory_url=f"sqlite:///{tmp_path}/m.db")))
    await client.post("/v1/memory/Chat/1/messages", json={"role": "user", "content": "x"})
    resp = await client.get("/v1/memory/Chat/1", params={"limit": "9" * 20})
    assert resp.status == 200
    assert [m["content"] for m in (await resp.json())["messages"]] == ["x"]


# -- 8. what the server says about itself, and Expect: 100-continue -------------------


async def test_the_server_header_names_no_versions(aiohttp_client):
    client = await aiohttp_client(create_app(make_config()))
    for resp in (
        await client.get("/healthz"),
        await client.get("/nowhere"),
        await client.post("/v1/chat/stream", json={"messages": USER, "options": {"max_tokens": 1}}),
    ):
        assert resp.headers["Server"] == "sse-engine"


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            first = await reader.readuntil(b"\r\n\r\n")
            if first.startswith(b"HTTP/1.1 100"):
                return first
            length = next(
                int(line.split(b":")[1])
                for line in first.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            return first + await reader.readexactly(length)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/chat/stream", "native"), ("/v1/chat/completions", "openai")]
)
async def test_expect_continue_with_a_body_too_large_is_413_before_any_upload(
    aiohttp_server, path, shape
):
    server = await aiohttp_server(create_app(make_config(max_body_size=1024)))
    answer = await _raw(
        server.port,
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")  # and no "100 Continue" before it
    error = json.loads(body)
    assert (error["type"] if shape == "native" else error["error"]["type"]) in (
        "payload_too_large",
        "invalid_request_error",
    )


async def test_expect_continue_with_a_body_that_fits_is_invited(aiohttp_server):
    server = await aiohttp_server(create_app(make_config()))
    answer = await _raw(
        server.port,
        b"POST /v1/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10\r\nExpect: 100-continue\r\n\r\n",
    )
    assert answer == b"HTTP/1.1 100 Continue\r\n\r\n"


# -- 9. the header deadline: headers and heartbeats while the upstream thinks --------


class Thinking(ScriptedProvider):
    """``open()`` waits for ``answer`` (a test sets it), then streams or raises."""

    def __init__(self, tokens=("a", "b")):
        super().__init__(tokens)
        self.answer: asyncio.Future[BaseException | None] | None = None
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def open(self, messages, *, model=None, options=None):
        self.answer = asyncio.get_running_loop().create_future()
        self.waiting.set()
        try:
            error = await self.answer
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if error is not None:
            raise error
        return await super().open(messages, model=model, options=options)


def _thinking_app(provider):
    app = create_app(make_config(header_deadline=0.2, heartbeat=0.1))
    app[ENGINE].add_provider(provider, "mock")
    return app


async def _until_keepalive(resp) -> bytes:
    seen = b""
    async for line in resp.content:
        seen += line
        if line.startswith(b": keepalive"):
            return seen
    raise AssertionError(f"the stream ended before a heartbeat: {seen!r}")


@pytest.mark.parametrize("route", ["native", "openai"])
async def test_headers_and_heartbeats_go_out_while_the_upstream_thinks(aiohttp_client, route):
    provider = Thinking()
    client = await aiohttp_client(_thinking_app(provider))
    if route == "native":
        resp = await client.post("/v1/chat/stream", json={"messages": USER})
    else:
        body = {"model": "mock/x", "messages": USER, "stream": True}
        resp = await client.post("/v1/chat/completions", json=body)
    # The headers arrived although the upstream has not answered yet.
    assert resp.status == 200
    before = await _until_keepalive(resp)
    assert b"data:" not in before
    assert provider.answer is not None and not provider.answer.done()
    provider.answer.set_result(None)
    rest = (await resp.read()).decode()
    if route == "native":
        assert "event: start" in rest and "event: done" in rest
    else:
        assert rest.rstrip().endswith("data: [DONE]")
    assert '"a"' in rest and '"b"' in rest


@pytest.mark.parametrize("route", ["native", "openai"])
async def test_a_refusal_after_the_header_deadline_is_an_error_event(aiohttp_client, route):
    provider = Thinking()
    app = _thinking_app(provider)
    client = await aiohttp_client(app)
    if route == "native":
        body = {"messages": USER, "session": {"parent": "Chat", "id": "late"}}
        resp = await client.post("/v1/chat/stream", json=body)
    else:
        body = {"model": "mock/x", "messages": USER, "stream": True}
        headers = {"X-Session-Parent": "Chat", "X-Session-Id": "late"}
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    await _until_keepalive(resp)
    assert provider.answer is not None
    provider.answer.set_result(UpstreamRateLimited("slow down", retry_after=3))
    events = await read_events(resp)
    error = json.loads(events[-1].data)
    if route == "native":
        assert events[-1].event == "error"
        assert (error["type"], error["code"]) == ("rate_limited", 429)
    else:
        assert error["error"]["code"] == "rate_limit_exceeded"
        assert all(e.data != "[DONE]" for e in events)
    # Nothing half-stored: the request is not kept without a reply.
    conv = (await app[ENGINE].open_memory()).for_parent("Chat", "late")
    assert await conv.get_messages() == []


async def test_a_client_that_leaves_after_the_header_deadline_stops_the_upstream(aiohttp_client):
    provider = Thinking()
    client = await aiohttp_client(_thinking_app(provider))
    resp = await client.post("/v1/chat/stream", json={"messages": USER})
    await _until_keepalive(resp)
    resp.close()
    async with asyncio.timeout(10):
        await provider.cancelled.wait()


async def test_an_upstream_that_answers_within_the_deadline_is_refused_as_json(aiohttp_client):
    provider = Thinking()
    client = await aiohttp_client(_thinking_app(provider))
    request = asyncio.ensure_future(client.post("/v1/chat/stream", json={"messages": USER}))
    await provider.waiting.wait()
    assert provider.answer is not None
    provider.answer.set_result(UpstreamRateLimited("slow down", retry_after=3))
    resp = await request
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    assert (await resp.json())["type"] == "rate_limited"


# -- 10. Host: DNS rebinding -------------------------------------------------------


async def _status(client, host: str | None, path: str = "/healthz") -> int:
    headers = {} if host is None else {"Host": host}
    return (await client.get(path, headers=headers)).status


async def test_a_loopback_gateway_answers_only_loopback_names(aiohttp_client):
    client = await aiohttp_client(create_app(make_config()))  # host 127.0.0.1 by default
    for host in ("localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "app.localhost"):
        assert await _status(client, host) == 200, host
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil"):
        assert await _status(client, host) == 421, host
    resp = await client.get("/healthz", headers={"Host": "evil.example"})
    assert (await resp.json())["type"] == "host_not_allowed"
    # In the route's own shape: OpenAI's on the OpenAI routes.
    resp = await client.get("/v1/models", headers={"Host": "evil.example"})
    assert resp.status == 421
    assert (await resp.json())["error"]["code"] == "host_not_allowed"


async def test_allowed_hosts_lists_the_names(aiohttp_client):
    config = make_config(allowed_hosts=["gateway.example", ".corp.example"])
    client = await aiohttp_client(create_app(config))
    assert await _status(client, "gateway.example") == 200
    assert await _status(client, "a.corp.example:443") == 200
    assert await _status(client, "corp.example") == 200
    assert await _status(client, "localhost") == 421  # not listed
    assert await _status(client, "evil.example") == 421


async def test_any_host_when_listening_on_all_interfaces_or_with_a_star(aiohttp_client):
    for config in (make_config(host="0.0.0.0"), make_config(allowed_hosts=["*"])):
        client = await aiohttp_client(create_app(config))
        assert await _status(client, "anything.example") == 200


# -- 5. a request body sent a byte at a time -----------------------------------------


async def test_a_body_that_trickles_in_is_refused_after_the_header_timeout(aiohttp_server):
    server = await aiohttp_server(create_app(make_config(header_timeout=0.3)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /v1/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            assert json.loads(await reader.readexactly(length))["type"] == "request_timeout"
    finally:
        writer.close()


async def test_a_huge_streamed_reply_is_stored_truncated_not_held_whole(aiohttp_client):
    """1,000,000 x 65,536 characters with memory attached once meant holding all of it."""
    from engine.streams.relay import MAX_STORED_REPLY_CHARS

    app = create_app(make_config())
    client = await aiohttp_client(app)
    size = 65_536
    chunks = MAX_STORED_REPLY_CHARS // size + 3  # a little over the bound
    body = {
        "messages": USER,
        "session": {"parent": "Chat", "id": "huge"},
        "options": {"max_tokens": chunks, "token_size": size, "interval_ms": 0},
    }
    resp = await client.post("/v1/chat/stream", json=body)
    events = await read_events(resp)
    assert events[-1].event == "done"
    streamed = "".join(json.loads(e.data)["content"] for e in events[1:-1])
    assert len(streamed) == chunks * size  # the client got all of it
    conv = (await app[ENGINE].open_memory()).for_parent("Chat", "huge")
    reply = (await conv.get_messages())[-1]
    assert reply.metadata["truncated"] is True
    assert len(reply.content) <= MAX_STORED_REPLY_CHARS
    assert streamed.startswith(reply.content)

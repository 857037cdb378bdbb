"""What a client may learn about the upstream: no redirects, no API key, no internal URL.

Against real loopback servers. Most tests go through the gateway app and assert
on what its client receives; a few call a provider directly, so the provider
side's redaction is pinned down below any the gateway adds on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine import create_app
from engine.errors import UpstreamConnectError, UpstreamError
from engine.providers import create_provider
from engine.providers._http import translate_errors
from engine.sse import Decoder, ServerSentEvent
from engine.testing import FAKES, FakeUpstream, Script
from engine.wire import Message

from .helpers import make_config

KEY = "sk-hygiene-SECRET-42"
PROVIDERS = sorted(FAKES)
#: What goes after the server's address in each provider's base URL.
SUFFIX = {"openai": "/v1", "anthropic": "", "gemini": ""}
#: Paths the requests go to (gemini's contains "/v1" too: /v1beta/models/...).
PATHS = ("/v1", "/chat/completions", "/messages", "/models")


def chat(provider: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Hi"}], "provider": provider}


def completions(*, stream: bool) -> dict[str, Any]:
    return {
        "model": "openai/gpt-test",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": stream,
    }


async def events_of(resp: Any) -> list[ServerSentEvent]:
    decoder = Decoder()
    events: list[ServerSentEvent] = []
    async for data in resp.content.iter_any():
        events.extend(decoder.feed(data))
    return events


def assert_no_address(message: str, port: int, provider: str) -> None:
    """The message names the provider but not where it lives."""
    assert provider in message
    for leak in ("127.0.0.1", "localhost", str(port), *PATHS):
        assert leak not in message, (leak, message)


def origin_of(server: Any) -> str:
    """A test server's address, without the trailing slash."""
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def gateway(aiohttp_client):
    """``await gateway(name, origin, **settings)``: a client of a gateway using that upstream."""

    async def make(name: str, origin: str, **settings: Any) -> Any:
        provider = {"api_key": KEY, "base_url": origin + SUFFIX[name], **settings}
        return await aiohttp_client(create_app(make_config(providers={name: provider})))

    return make


# -- (a) redirects --------------------------------------------------------------------


class Redirector:
    """An upstream that answers every request with ``status`` and a Location elsewhere."""

    def __init__(self, status: int, target: Any) -> None:
        self.status = status
        self.target = target  # the TestServer redirected to
        self.hits = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await request.read()
        location = str(self.target.make_url(request.path_qs))
        return web.Response(status=self.status, headers={"Location": location})


@pytest.fixture
def redirect(aiohttp_server):
    """``await redirect(name, status)``: (redirector, the fake it points to, its server)."""

    async def make(name: str, status: int = 307) -> tuple[Redirector, FakeUpstream, Any]:
        fake = FAKES[name]()
        target = await aiohttp_server(fake.app())
        redirector = Redirector(status, target)
        origin = await aiohttp_server(redirector.app())
        return redirector, fake, origin

    return make


def assert_redirect_refused(message: str, redirector: Redirector, fake: FakeUpstream) -> None:
    assert fake.requests == []  # neither the prompt nor the key went there
    assert redirector.hits == 1  # and it was not retried
    assert "redirect" in message and "not followed" in message
    port = redirector.target.port
    assert str(port) not in message and "127.0.0.1" not in message


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("path", ["/v1/chat/stream", "/v1/chat"])
async def test_a_redirect_is_not_followed(gateway, redirect, name, path):
    redirector, fake, origin = await redirect(name)
    client = await gateway(name, origin_of(origin), max_retries=2)
    async with client.post(path, json=chat(name)) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"] is True and body["code"] == 502
    assert body["type"] == "upstream_error"
    assert_redirect_refused(body["message"], redirector, fake)
    assert name in body["message"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_no_redirect_status_is_followed(gateway, redirect, status):
    redirector, fake, origin = await redirect("openai", status)
    client = await gateway("openai", origin_of(origin))
    async with client.post("/v1/chat/stream", json=chat("openai")) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert_redirect_refused(body["message"], redirector, fake)
    assert f"({status})" in body["message"]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_redirect_on_chat_completions_is_an_openai_502(gateway, redirect, stream):
    redirector, fake, origin = await redirect("openai")
    client = await gateway("openai", origin_of(origin))
    async with client.post("/v1/chat/completions", json=completions(stream=stream)) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "server_error"
    assert_redirect_refused(body["error"]["message"], redirector, fake)


# -- (b) the API key in an error the upstream streams --------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
async def test_an_in_stream_error_event_never_shows_the_key(gateway, aiohttp_server, name):
    fake = FAKES[name](
        Script(tokens=["a", "b"], error_after=1, error_message=f"boom key={KEY} (sent {KEY})")
    )
    server = await aiohttp_server(fake.app())
    client = await gateway(name, origin_of(server))
    async with client.post("/v1/chat/stream", json=chat(name)) as resp:
        assert resp.status == 200
        events = await events_of(resp)
    assert [e.event for e in events] == ["start", "message", "error"]
    raw = events[-1].data
    assert KEY not in raw
    message = json.loads(raw)["message"]
    assert "boom key=***" in message
    assert "boom" in message and "***" in message


@pytest.mark.parametrize("name", PROVIDERS)
async def test_the_provider_itself_redacts_an_in_stream_error(aiohttp_server, name):
    # The provider side on its own, below any redaction the gateway adds.
    fake = FAKES[name](Script(tokens=["a", "b"], error_after=1, error_message=f"boom {KEY}"))
    server = await aiohttp_server(fake.app())
    origin = origin_of(server) + SUFFIX[name]
    config = make_config(providers={name: {"api_key": KEY, "base_url": origin}})
    async with aiohttp.ClientSession() as session:
        provider = create_provider(name, config, session=session)
        seen: list[str] = []
        with pytest.raises(UpstreamError) as info:
            async for chunk in provider.stream([Message(role="user", content="Hi")]):
                seen.append(chunk.content)
    assert seen == ["a"]
    assert KEY not in info.value.message and KEY not in str(info.value)
    assert "boom ***" in info.value.message


async def test_an_in_stream_error_on_chat_completions_never_shows_the_key(gateway, aiohttp_server):
    fake = FAKES["openai"](Script(tokens=["a", "b"], error_after=1, error_message=f"boom {KEY}"))
    server = await aiohttp_server(fake.app())
    client = await gateway("openai", origin_of(server))
    async with client.post("/v1/chat/completions", json=completions(stream=True)) as resp:
        assert resp.status == 200
        raw = await resp.text()
    assert KEY not in raw
    assert "boom ***" in raw


async def test_an_error_in_a_gemini_reply_never_shows_the_key(gateway, aiohttp_server):
    # Gemini can answer 200 with an error object; the reply parser raises on it.
    async def handle(request: web.Request) -> web.Response:
        error = {"code": 500, "message": f"boom key={KEY}", "status": "INTERNAL"}
        return web.json_response({"error": error})

    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", handle)
    server = await aiohttp_server(app)
    client = await gateway("gemini", origin_of(server))
    async with client.post("/v1/chat", json=chat("gemini")) as resp:
        assert resp.status == 502
        raw = await resp.text()
    assert KEY not in raw
    assert "boom key=***" in json.loads(raw)["message"]
    config = make_config(providers={"gemini": {"api_key": KEY, "base_url": origin_of(server)}})
    async with aiohttp.ClientSession() as session:
        provider = create_provider("gemini", config, session=session)
        with pytest.raises(UpstreamError) as info:
            await provider.send([Message(role="user", content="Hi")])
    assert KEY not in str(info.value) and "boom key=***" in info.value.message


# -- (c, d) unreachable and broken upstreams: no address in the message ---------------


@contextlib.contextmanager
def closed_port() -> Any:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[int]:
    """A loopback TCP server that reads a whole request, writes ``answer`` and hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def broken_upstream(kind: str) -> AsyncIterator[int]:
    """The port of an upstream that fails in way ``kind``."""
    if kind == "refused":
        with closed_port() as port:
            yield port
    elif kind == "dropped":  # accepts the request, closes without a word
        async with raw_server(b"") as port:
            yield port
    else:  # "garbage": answers something that is not HTTP
        async with raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as port:
            yield port


BROKEN = ["refused", "dropped", "garbage"]


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize("path", ["/v1/chat/stream", "/v1/chat"])
async def test_a_broken_upstream_is_named_but_not_located(gateway, caplog, name, kind, path):
    caplog.set_level(logging.INFO, logger="engine.providers")
    async with broken_upstream(kind) as port:
        client = await gateway(name, f"http://127.0.0.1:{port}", max_retries=0)
        async with client.post(path, json=chat(name)) as resp:
            assert resp.status == 502
            body = await resp.json()
    assert body["error"] is True
    assert body["type"] == ("upstream_connect_error" if kind == "refused" else "upstream_error")
    assert_no_address(body["message"], port, name)
    # The detail is for the operator: in the log, where it is still free of the key.
    logged = [r.getMessage() for r in caplog.records if r.name == "engine.providers"]
    assert logged and all(KEY not in line for line in logged)
    if kind == "refused":
        assert any(str(port) in line for line in logged)


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_broken_upstream_on_chat_completions(gateway, kind, stream):
    async with broken_upstream(kind) as port:
        client = await gateway("openai", f"http://127.0.0.1:{port}", max_retries=0)
        async with client.post("/v1/chat/completions", json=completions(stream=stream)) as resp:
            assert resp.status == 502
            body = await resp.json()
    assert_no_address(body["error"]["message"], port, "openai")


@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_stream_cut_off_midway_is_named_but_not_located(gateway, aiohttp_server, name):
    fake = FAKES[name](Script(tokens=["a", "b", "c"], drop_after=1))
    server = await aiohttp_server(fake.app())
    client = await gateway(name, origin_of(server))
    async with client.post("/v1/chat/stream", json=chat(name)) as resp:
        assert resp.status == 200
        events = await events_of(resp)
    # Whether "a" is relayed is aiohttp's business (a lost connection can beat
    # the buffered bytes to the reader); the end is an error event either way.
    assert events[0].event == "start" and events[-1].event == "error"
    assert_no_address(json.loads(events[-1].data)["message"], server.port, name)


@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_reply_cut_off_midway_is_named_but_not_located(gateway, aiohttp_server, name):
    fake = FAKES[name](Script(drop_after=0))
    server = await aiohttp_server(fake.app())
    client = await gateway(name, origin_of(server))
    async with client.post("/v1/chat", json=chat(name)) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert_no_address(body["message"], server.port, name)


def test_a_connector_error_keeps_its_detail_in_the_log_only(caplog):
    # What tests/test_providers_http.py's connector test checked in the message
    # (the key redacted from aiohttp's text) now holds for the log line, the
    # only place that text still goes.
    caplog.set_level(logging.INFO, logger="engine.providers")

    class Key:
        ssl = None
        host = "internal.example"
        port = 8443

    exc = aiohttp.ClientConnectorError(Key(), OSError(111, f"refused {KEY}"))  # type: ignore[arg-type]
    with (
        pytest.raises(UpstreamConnectError) as info,
        translate_errors([KEY], provider="openai"),
    ):
        raise exc
    assert info.value.message == "cannot connect to the openai upstream"
    assert info.value.__cause__ is exc
    (line,) = [r.getMessage() for r in caplog.records if r.name == "engine.providers"]
    assert "internal.example:8443" in line and "***" in line and KEY not in line

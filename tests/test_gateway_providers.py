"""Every real provider through the gateway: app -> provider -> fake upstream, on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from engine import create_app
from engine.sse import Decoder, ServerSentEvent
from engine.testing import FAKES, FakeUpstream, Script, serve

from .helpers import make_config

KEY = "sk-gateway-SECRET"
TOKENS = ["Héllo", " 世界", " 👩‍👩‍👧‍👦", "a\nb", "\r\n", "z" * 10_000, "."]
SUFFIX = {"openai": "/v1", "anthropic": "", "gemini": ""}
KINDS = {"openai": None, "anthropic": "overloaded_error", "gemini": "UNAVAILABLE"}


class Env:
    def __init__(self, name: str, fake: FakeUpstream, client: Any) -> None:
        self.name = name
        self.fake = fake
        self.client = client

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "Hi"}], "provider": self.name, **extra}


@pytest.fixture(params=sorted(FAKES))
async def env(request, aiohttp_client):
    name = request.param
    fake = FAKES[name]()
    async with serve(fake.app()) as url:
        settings = {"api_key": KEY, "base_url": url + SUFFIX[name], "max_retries": 0}
        app = create_app(make_config(providers={name: settings}))
        yield Env(name, fake, await aiohttp_client(app))


async def _events(resp) -> list[ServerSentEvent]:
    decoder = Decoder()
    events = []
    async for data in resp.content.iter_any():
        events.extend(decoder.feed(data))
    return events


async def test_stream_relays_exact_content(env):
    env.fake.default = Script(tokens=TOKENS, fragment=97, comments=True)
    async with env.client.post("/v1/chat/stream", json=env.body(model="m-1")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await _events(resp)
    start, *chunks, done = events
    assert start.event == "start"
    assert json.loads(start.data)["provider"] == env.name
    datas = [json.loads(e.data) for e in chunks]
    assert [d["content"] for d in datas if d["content"]] == TOKENS
    assert all(d["role"] == "assistant" and d["model"] == "m-1" for d in datas)
    assert done.event == "done"
    assert json.loads(done.data) == {
        "type": "done",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
    assert len(env.fake.requests) == 1


async def test_send_returns_the_reply(env):
    env.fake.default = Script(tokens=TOKENS)
    async with env.client.post("/v1/chat", json=env.body()) as resp:
        assert resp.status == 200
        reply = await resp.json()
    assert reply["content"] == "".join(TOKENS)
    assert reply["finish_reason"] == "stop"


async def test_429_passes_through_with_retry_after(env):
    env.fake.default = Script(status=429, retry_after="7")
    async with env.client.post("/v1/chat/stream", json=env.body()) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        body = await resp.json()
    assert body["error"] is True and body["code"] == 429 and body["type"] == "rate_limited"


async def test_upstream_401_is_a_502_without_the_key(env):
    env.fake.default = Script(status=401)
    for path in ("/v1/chat/stream", "/v1/chat"):
        async with env.client.post(path, json=env.body()) as resp:
            assert resp.status == 502
            raw = await resp.text()
        body = json.loads(raw)
        assert body["type"] == "upstream_auth_error" and body["code"] == 502
        assert KEY not in raw


async def test_mid_stream_error_becomes_an_error_event(env):
    env.fake.default = Script(tokens=["a", "b", "c"], error_after=2, error_type=KINDS[env.name])
    async with env.client.post("/v1/chat/stream", json=env.body()) as resp:
        assert resp.status == 200
        events = await _events(resp)
    assert [e.event for e in events] == ["start", "message", "message", "error"]
    error = json.loads(events[-1].data)
    assert error["error"] is True
    assert "overloaded" in error["message"]
    expected = ("upstream_error", 502) if env.name == "openai" else ("upstream_unavailable", 503)
    assert (error["type"], error["code"]) == expected


async def test_client_disconnect_closes_the_upstream_connection(env):
    env.fake.default = Script(tokens=["a", "b"], interval_ms=10_000)
    resp = await env.client.post("/v1/chat/stream", json=env.body())
    decoder = Decoder()
    seen: list[str] = []
    while "message" not in seen:
        seen += [e.event for e in decoder.feed(await resp.content.readany())]
    resp.close()
    await asyncio.wait_for(env.fake.requests[0].disconnected.wait(), 1)


async def test_client_disconnect_during_the_silent_wait_closes_the_upstream(env):
    # Headers and `start` are out, the upstream has not sent a token yet.
    env.fake.default = Script(tokens=["a"], first_ms=10_000)
    resp = await env.client.post("/v1/chat/stream", json=env.body())
    decoder = Decoder()
    seen: list[str] = []
    while "start" not in seen:
        seen += [e.event for e in decoder.feed(await resp.content.readany())]
    assert seen == ["start"]
    resp.close()
    await asyncio.wait_for(env.fake.requests[0].disconnected.wait(), 1)


async def test_missing_key_is_a_json_error_naming_the_variable(aiohttp_client):
    app = create_app(make_config(providers={"anthropic": {"base_url": "http://127.0.0.1:9"}}))
    client = await aiohttp_client(app)
    body = {"messages": [{"role": "user", "content": "Hi"}], "provider": "claude"}
    async with client.post("/v1/chat/stream", json=body) as resp:
        assert resp.status == 503
        error = await resp.json()
    assert error["type"] == "provider_not_configured"
    assert "ANTHROPIC_API_KEY" in error["message"]

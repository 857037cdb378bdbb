"""The HTTP API on a real loopback server: stream format, bad input, sub-app mounting."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from engine import create_app
from engine.app import ENGINE
from engine.providers.mock import mock_text
from engine.wire import Message

from .helpers import make_config, read_events

BODY = {"messages": [{"role": "user", "content": "hi"}], "options": {"interval_ms": 0}}


@pytest.fixture
async def client(aiohttp_client):
    return await aiohttp_client(create_app(make_config(max_body_size=4096)))


async def test_post_stream_is_the_documented_format(client):
    body = {**BODY, "options": {"max_tokens": 5, "token_size": 3, "interval_ms": 0}}
    async with client.post("/v1/chat/stream", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        raw = await resp.read()
    assert raw.startswith(b"retry: 3000\nid: ")  # retry travels in the start event's block

    from engine.sse import Decoder

    decoder = Decoder()
    events = decoder.feed(raw)
    assert decoder.retry == 3000
    start, *chunks, done = events
    assert start.event == "start"
    start_data = json.loads(start.data)
    sid = start_data["stream_id"]
    assert start_data == {"type": "start", "stream_id": sid, "provider": "mock", "model": "mock-1"}
    assert start.id == f"{sid}:0"

    assert [c.id for c in chunks] == [f"{sid}:{n}" for n in range(1, 6)]
    assert all(c.event == "message" for c in chunks)
    datas = [json.loads(c.data) for c in chunks]
    assert "".join(d["content"] for d in datas) == mock_text(
        [Message(role="user", content="hi")], 15
    )
    assert datas[0] == {
        "role": "assistant",
        "content": datas[0]["content"],
        "model": "mock-1",
        "finish_reason": None,
    }
    assert datas[-1]["finish_reason"] == "length"  # cut by max_tokens, as a model would be
    assert datas[-1]["usage"]["completion_tokens"] == 5

    assert done.event == "done"
    assert done.id == f"{sid}:6"
    assert json.loads(done.data) == {
        "type": "done",
        "finish_reason": "length",
        "usage": datas[-1]["usage"],
    }


async def test_get_stream_takes_typed_options_from_the_query(client):
    query = {"q": "hello there", "max_tokens": "3", "token_size": "5", "interval_ms": "0"}
    async with client.get("/v1/chat/stream", params=query) as resp:
        assert resp.status == 200
        events = await read_events(resp)
    chunks = [json.loads(e.data) for e in events if e.event == "message"]
    assert [len(c["content"]) for c in chunks] == [5, 5, 5]
    assert "".join(c["content"] for c in chunks) == "You said: hello"
    assert events[-1].event == "done"


async def test_send_gives_the_same_text_as_the_stream(client):
    body = {**BODY, "options": {"max_tokens": 12, "interval_ms": 0}}
    async with client.post("/v1/chat/stream", json=body) as resp:
        events = await read_events(resp)
    streamed = "".join(json.loads(e.data)["content"] for e in events if e.event == "message")
    resp = await client.post("/v1/chat", json=body)
    assert resp.status == 200
    reply = await resp.json()
    assert reply["content"] == streamed
    assert reply["role"] == "assistant"
    assert reply["model"] == "mock-1"
    assert reply["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 12


async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


GOOD = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "error_type"),
    [
        ("/v1/chat/stream", {"data": b'{"messages": [', "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
        ("/v1/chat/stream", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
        ("/v1/chat/stream", {"data": json.dumps(GOOD), "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ("/v1/chat/stream", {"data": b"messages=hi"}, 415, "unsupported_media_type"),
        ("/v1/chat/stream", {"json": {"messages": [{"role": "user", "content": "x" * 5000}]}}, 413, "payload_too_large"),
        ("/v1/chat/stream", {"json": {}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {"messages": []}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {"messages": [{"role": "wizard", "content": "x"}]}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {"messages": [{"role": "user"}]}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {**GOOD, "options": {"max_tokens": 0}}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {**GOOD, "options": {"bogus": 1}}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {**GOOD, "options": {"temperature": "hot"}}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {**GOOD, "session": {"parent": "", "id": "1"}}}, 422, "invalid_fields"),
        ("/v1/chat/stream", {"json": {**GOOD, "provider": "nosuch"}}, 400, "unknown_provider"),
        ("/v1/chat", {"json": {"messages": []}}, 422, "invalid_fields"),
        ("/v1/chat", {"json": {**GOOD, "provider": "nosuch"}}, 400, "unknown_provider"),
        ("/v1/chat", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
    ],
)  # fmt: skip
async def test_bad_post_input_gets_a_json_4xx(client, path, kwargs, status, error_type):
    resp = await client.post(path, **kwargs)
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert await resp.json() == {
        "error": True,
        "message": (await resp.json())["message"],
        "code": status,
        "type": error_type,
    }
    assert (await resp.json())["message"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({}, 422),
        ({"q": ""}, 422),
        ({"q": "hi", "max_tokens": "many"}, 422),
        ({"q": "hi", "interval_ms": "-1"}, 422),
        ({"q": "hi", "nosuch": "1"}, 422),
        ({"q": "hi", "parent": "ChatSession"}, 422),
        ({"q": "hi", "parent": "A", "parent_id": "x\x01"}, 422),
        ({"q": "hi", "provider": "nosuch"}, 400),
    ],
)
async def test_bad_query_input_gets_a_json_4xx(client, query, status):
    resp = await client.get("/v1/chat/stream", params=query)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] is True and body["code"] == status


async def test_chunked_body_over_the_limit_is_413(client):
    async def body():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    resp = await client.post(
        "/v1/chat/stream", data=body(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413


async def test_unknown_route_and_method_are_json(client):
    resp = await client.get("/v1/nowhere")
    assert resp.status == 404
    assert (await resp.json())["type"] == "not_found"
    resp = await client.delete("/v1/chat/stream")
    assert resp.status == 405
    assert (await resp.json())["code"] == 405


async def test_mounted_as_a_subapp(aiohttp_client):
    parent = web.Application()

    async def home(request: web.Request) -> web.Response:
        return web.Response(text="parent app")

    parent.router.add_get("/", home)
    sub = create_app(make_config())
    parent.add_subapp("/llm", sub)
    client = await aiohttp_client(parent)

    assert await (await client.get("/")).text() == "parent app"
    async with client.post(
        "/llm/v1/chat/stream", json={**BODY, "options": {"max_tokens": 4}}
    ) as resp:
        assert resp.status == 200
        events = await read_events(resp)
    assert [e.event for e in events] == [
        "start",
        "message",
        "message",
        "message",
        "message",
        "done",
    ]
    resp = await client.post("/llm/v1/chat", json={"messages": []})
    assert resp.status == 422
    # The sub-app's engine was started with the parent (its memory store is open).
    assert sub[ENGINE].memory() is not None

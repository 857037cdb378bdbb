"""Conversation memory over HTTP and wired into streaming, on a real server and real SQLite files."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from engine import create_app
from engine.errors import UpstreamUnavailable
from engine.gateway import Engine
from engine.providers.mock import mock_text
from engine.sse import Decoder
from engine.wire import Message

from .helpers import ScriptedProvider, make_config, read_events


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(make_config(memory_url=f"sqlite:///{tmp_path}/m.db")))


def scripted_app(provider: ScriptedProvider, **config) -> web.Application:
    engine = Engine(make_config(**config))
    engine.add_provider(provider)
    return create_app(engine=engine)


async def messages_of(client, parent="ChatSession", id="42"):
    resp = await client.get(f"/v1/memory/{parent}/{id}")
    assert resp.status == 200
    return (await resp.json())["messages"]


async def test_add_get_clear(client):
    resp = await client.post(
        "/v1/memory/ChatSession/42/messages",
        json={"role": "user", "content": "héllo 👋", "metadata": {"lang": "fr"}},
    )
    assert resp.status == 201
    stored = await resp.json()
    assert stored["role"] == "user" and stored["content"] == "héllo 👋"
    assert stored["type"] == "text" and stored["metadata"] == {"lang": "fr"}
    assert stored["message_id"] and stored["created_at"] > 0

    await client.post(
        "/v1/memory/ChatSession/42/messages", json={"role": "assistant", "content": "bonjour"}
    )
    assert [m["content"] for m in await messages_of(client)] == ["héllo 👋", "bonjour"]
    assert await messages_of(client, id="43") == []

    resp = await client.delete("/v1/memory/ChatSession/42")
    assert resp.status == 200
    assert (await resp.json())["deleted"] == 2
    assert await messages_of(client) == []


async def test_tool_calls_results_and_parts_round_trip(client):
    url = "/v1/memory/ChatSession/42/messages"
    image = {
        "type": "image_url",
        "image_url": {"url": "https://example.com/a.png", "detail": "low"},
    }
    parts = [{"type": "text", "text": "what is this?"}, image]
    calls = [
        {"id": "call_1", "function": {"name": "look", "arguments": '{"zoom": 2}'}},
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": "{}"}},
    ]
    bodies = [
        {"role": "user", "parts": parts},  # content left out: the parts' text
        {"role": "assistant", "tool_calls": calls, "content": None},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        {"role": "tool", "tool_call_id": "call_2", "content": "cats are mammals"},
        {"role": "assistant", "content": "A cat."},
    ]
    posted = []
    for body in bodies:
        resp = await client.post(url, json=body)
        assert resp.status == 201, await resp.text()
        posted.append(await resp.json())

    assert await messages_of(client) == posted
    user, asked, first, second, answer = posted
    assert user["content"] == "what is this?" and user["parts"] == parts
    assert asked["content"] == ""
    assert asked["tool_calls"] == [{**calls[0], "type": "function"}, calls[1]]
    assert [(m["role"], m["tool_call_id"]) for m in (first, second)] == [
        ("tool", "call_1"),
        ("tool", "call_2"),
    ]
    # Every message has all three fields, null where unset.
    assert (answer["tool_calls"], answer["tool_call_id"], answer["parts"]) == (None, None, None)
    assert user["tool_calls"] is None and asked["parts"] is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"role": "tool", "content": "x"}, id="tool-without-call-id"),
        pytest.param({"role": "user", "content": "x", "tool_call_id": "c"}, id="call-id-on-user"),
        pytest.param(
            {
                "role": "user",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": ""}}],
            },
            id="calls-on-user",
        ),
        pytest.param(
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
            id="call-without-arguments",
        ),
        pytest.param({"role": "assistant", "tool_calls": {"id": "c"}}, id="calls-not-a-list"),
        pytest.param({"role": "tool", "content": "x", "tool_call_id": 5}, id="call-id-int"),
        pytest.param({"role": "user", "parts": [{"type": "video"}]}, id="part-type"),
        pytest.param({"role": "user", "parts": "hello"}, id="parts-not-a-list"),
        pytest.param(
            {"role": "user", "content": "other", "parts": [{"type": "text", "text": "x"}]},
            id="content-not-the-parts-text",
        ),
        pytest.param({"role": "assistant"}, id="no-content"),
    ],
)
async def test_bad_agent_fields_are_422_and_store_nothing(client, body):
    resp = await client.post("/v1/memory/ChatSession/42/messages", json=body)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["type"] == "invalid_fields"
    assert await messages_of(client) == []


async def test_same_message_id_is_stored_once(client):
    body = {"role": "user", "content": "once", "message_id": "m-1"}
    first = await (await client.post("/v1/memory/ChatSession/42/messages", json=body)).json()
    second = await (await client.post("/v1/memory/ChatSession/42/messages", json=body)).json()
    assert first == second
    assert len(await messages_of(client)) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/memory/ChatSession/42/messages", {"role": "wizard", "content": "x"}),
        ("/v1/memory/ChatSession/42/messages", {"role": "user", "content": "x", "type": "video"}),
        ("/v1/memory/ChatSession/42/messages", {"role": "user", "content": "x", "metadata": [1]}),
        ("/v1/memory/ChatSession/42/messages", {"role": "user", "content": "x", "metadata": "a"}),
        ("/v1/memory/ChatSession/42/messages", {"role": "user", "content": 5}),
        ("/v1/memory/ChatSession/42/messages", {"role": "user"}),
        (f"/v1/memory/{'P' * 201}/42/messages", {"role": "user", "content": "x"}),
        (f"/v1/memory/ChatSession/{'9' * 201}/messages", {"role": "user", "content": "x"}),
        ("/v1/memory/Chat%01Session/42/messages", {"role": "user", "content": "x"}),
        ("/v1/memory/ChatSession/4%0A2/messages", {"role": "user", "content": "x"}),
    ],
)
async def test_bad_memory_input_is_422_and_stores_nothing(client, path, body):
    resp = await client.post(path, json=body)
    assert resp.status == 422
    error = await resp.json()
    assert error["type"] == "invalid_fields" and error["code"] == 422
    assert await messages_of(client) == []


async def test_bad_limit_is_422(client):
    resp = await client.get("/v1/memory/ChatSession/42", params={"limit": "-1"})
    assert resp.status == 422


async def test_stream_with_session_stores_the_exchange_and_sends_history(aiohttp_client):
    provider = ScriptedProvider(["Hel", "lo ", "🌍"])
    client = await aiohttp_client(scripted_app(provider))
    session = {"parent": "ChatSession", "id": "42"}
    body = {
        "messages": [{"role": "user", "content": "first"}],
        "provider": "scripted",
        "session": session,
    }
    async with client.post("/v1/chat/stream", json=body) as resp:
        events = await read_events(resp)
    assert events[-1].event == "done"
    stored = await messages_of(client)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "first"),
        ("assistant", "Hello 🌍"),
    ]
    # Stored once, whole: one assistant message, not one per chunk.
    assert stored[1]["metadata"]["stream_id"] == json.loads(events[0].data)["stream_id"]

    body["messages"] = [{"role": "user", "content": "second"}]
    async with client.post("/v1/chat/stream", json=body) as resp:
        await read_events(resp)
    sent, _ = provider.requests[-1]
    assert [(m.role, m.content) for m in sent] == [
        ("user", "first"),
        ("assistant", "Hello 🌍"),
        ("user", "second"),
    ]
    assert len(await messages_of(client)) == 4

    # max_history trims what goes upstream, never what is stored.
    body["messages"] = [{"role": "user", "content": "third"}]
    body["options"] = {"max_history": 1}
    async with client.post("/v1/chat/stream", json=body) as resp:
        await read_events(resp)
    sent, _ = provider.requests[-1]
    assert [m.content for m in sent] == ["Hello 🌍", "third"]
    assert len(await messages_of(client)) == 6


async def test_get_stream_with_parent_query(client):
    query = {"q": "yo", "max_tokens": "3", "interval_ms": "0", "parent": "Doc", "parent_id": "7"}
    async with client.get("/v1/chat/stream", params=query) as resp:
        await read_events(resp)
    stored = await messages_of(client, "Doc", "7")
    expected = mock_text([Message(role="user", content="yo")], 12)
    assert [(m["role"], m["content"]) for m in stored] == [("user", "yo"), ("assistant", expected)]


async def test_send_with_session_stores_the_exchange(client):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"max_tokens": 3},
        "session": {"parent": "ChatSession", "id": "42"},
    }
    reply = await (await client.post("/v1/chat", json=body)).json()
    stored = await messages_of(client)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "hi"),
        ("assistant", reply["content"]),
    ]


async def test_client_that_leaves_keeps_what_it_saw(aiohttp_client):
    # Two tokens flow, the third is held back until after the client left.
    provider = ScriptedProvider(
        ["seen ", "also seen", "never sent"], gate=asyncio.Event(), hold_from=2
    )
    client = await aiohttp_client(scripted_app(provider, heartbeat=0.2))
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "provider": "scripted",
        "session": {"parent": "ChatSession", "id": "42"},
    }
    resp = await client.post("/v1/chat/stream", json=body)
    decoder = Decoder()
    seen = []
    while len(seen) < 2:
        seen += [e for e in decoder.feed(await resp.content.readany()) if e.event == "message"]
    resp.close()
    await asyncio.wait_for(provider.closed.wait(), 2)
    # The upstream is closed first, the partial reply stored right after.
    async with asyncio.timeout(2):
        while len(stored := await messages_of(client)) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == "seen also seen"
    assert stored[1]["metadata"]["partial"] is True
    assert stored[1]["metadata"]["reason"] == "client_disconnected"


async def test_upstream_failure_keeps_what_was_shown(aiohttp_client):
    provider = ScriptedProvider(["part ", "two"], fail_after=1, error=UpstreamUnavailable("gone"))
    client = await aiohttp_client(scripted_app(provider))
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "provider": "scripted",
        "session": {"parent": "ChatSession", "id": "42"},
    }
    async with client.post("/v1/chat/stream", json=body) as resp:
        events = await read_events(resp)
    assert events[-1].event == "error"
    stored = await messages_of(client)
    assert stored[1]["content"] == "part "
    assert stored[1]["metadata"] == {
        "partial": True,
        "reason": "error",
        "stream_id": stored[1]["metadata"]["stream_id"],
        # The provider reported no usage before it failed: the gateway's estimate.
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5, "estimated": True},
    }


async def test_store_down_is_503_json_and_streams_refuse_before_starting(aiohttp_client):
    # Nothing listens on port 1: the store is down for the app's whole life.
    client = await aiohttp_client(create_app(make_config(memory_url="redis://127.0.0.1:1/0")))
    resp = await client.get("/v1/memory/ChatSession/42")
    assert resp.status == 503
    assert (await resp.json())["type"] == "store_unavailable"
    resp = await client.post(
        "/v1/memory/ChatSession/42/messages", json={"role": "user", "content": "x"}
    )
    assert resp.status == 503
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "session": {"parent": "ChatSession", "id": "42"},
    }
    resp = await client.post("/v1/chat/stream", json=body)
    assert resp.status == 503
    assert resp.content_type == "application/json"
    # Without a session the gateway still streams.
    async with client.post(
        "/v1/chat/stream", json={"messages": body["messages"], "options": {"max_tokens": 2}}
    ) as resp:
        assert resp.status == 200
        assert (await read_events(resp))[-1].event == "done"


async def test_restart_on_the_same_sqlite_file_keeps_every_message(aiohttp_client, tmp_path):
    url = f"sqlite:///{tmp_path}/keep.db"
    first = await aiohttp_client(create_app(make_config(memory_url=url)))
    for i in range(5):
        await first.post(
            "/v1/memory/ChatSession/42/messages", json={"role": "user", "content": f"m{i}"}
        )
    await first.close()  # the server stops, its engine and store close

    second = await aiohttp_client(create_app(make_config(memory_url=url)))
    assert [m["content"] for m in await messages_of(second)] == [f"m{i}" for i in range(5)]


async def test_200_sessions_streaming_at_once_lose_nothing(aiohttp_client, tmp_path):
    client = await aiohttp_client(
        create_app(make_config(memory_url=f"sqlite:///{tmp_path}/load.db"))
    )

    async def one(i: int) -> str:
        body = {
            "messages": [{"role": "user", "content": f"question {i}"}],
            "options": {"max_tokens": 10, "interval_ms": 1},
            "session": {"parent": "Load", "id": str(i)},
        }
        async with client.post("/v1/chat/stream", json=body) as resp:
            events = await read_events(resp)
        assert events[-1].event == "done"
        return "".join(json.loads(e.data)["content"] for e in events if e.event == "message")

    texts = await asyncio.gather(*(one(i) for i in range(200)))
    for i, text in enumerate(texts):
        stored = await messages_of(client, "Load", str(i))
        assert [(m["role"], m["content"]) for m in stored] == [
            ("user", f"question {i}"),
            ("assistant", text),
        ]

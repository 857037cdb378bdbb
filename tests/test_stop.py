"""Stop is not disconnect: POST /v1/streams/{id}/stop ends a generation on purpose."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine import create_app
from engine.app import ENGINE
from engine.memory.inmemory import InMemoryStore
from engine.sse import Decoder

from .helpers import ScriptedProvider, make_config, read_until

USER = [{"role": "user", "content": "hi"}]
SESSION = {"parent": "Chat", "id": "stop"}


@pytest.fixture
async def held(aiohttp_client):
    """A gateway whose provider sends two chunks, then waits for ``gate``."""
    gate = asyncio.Event()
    provider = ScriptedProvider([f"t{i} " for i in range(6)], gate=gate, hold_from=2)
    app = create_app(make_config())
    app[ENGINE].add_provider(provider, "mock")
    client = await aiohttp_client(app)
    return client, provider, gate, app[ENGINE]


async def test_stop_ends_a_native_stream_with_done_stopped_and_keeps_the_partial_reply(held):
    client, provider, gate, engine = held
    resp = await client.post("/v1/chat/stream", json={"messages": USER, "session": SESSION})
    events, decoder = await read_until(resp, 3)  # start, t0, t1; the provider now waits
    sid = json.loads(events[0].data)["stream_id"]
    follower = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:1"})

    stop = await client.post(f"/v1/streams/{sid}/stop")
    assert stop.status == 200
    assert await stop.json() == {"stream_id": sid, "state": "stopped"}
    assert provider.closed.is_set()  # the upstream was closed, not left to finish
    assert provider.sent == 2

    rest = decoder.feed(await resp.read())
    assert [e.event for e in rest] == ["done"]
    done = json.loads(rest[0].data)
    assert done["finish_reason"] == "stopped"
    # The provider reported no usage before the Stop: the gateway's estimate, flagged.
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, "estimated": True}
    assert done["usage"] == usage
    assert rest[0].id == f"{sid}:3"
    # Every reader gets the same end.
    followed = Decoder().feed(await follower.read())
    assert [e.event for e in followed] == ["message", "done"]
    assert json.loads(followed[-1].data)["finish_reason"] == "stopped"
    # Memory keeps what was sent, marked stopped.
    conv = (await engine.open_memory()).for_parent("Chat", "stop")
    reply = (await conv.get_messages())[-1]
    assert reply.content == "t0 t1 "
    assert reply.metadata["partial"] is True and reply.metadata["reason"] == "stopped"
    assert reply.metadata["usage"] == usage
    # Stopping again is not an error: it says how the stream ended.
    again = await client.post(f"/v1/streams/{sid}/stop")
    assert again.status == 200
    assert (await again.json())["state"] == "stopped"


async def test_stop_ends_an_openai_stream_with_its_normal_end(held):
    client, provider, gate, engine = held
    body = {"model": "mock/x", "messages": USER, "stream": True}
    resp = await client.post("/v1/chat/completions", json=body)
    sid = resp.headers["X-Stream-Id"]
    assert sid.startswith("chatcmpl-")
    await read_until(resp, 3)  # role, t0, t1
    stop = await client.post(f"/v1/streams/{sid}/stop")
    assert (await stop.json())["state"] == "stopped"
    events = Decoder().feed(await resp.read())
    assert events[-1].data == "[DONE]"
    last = json.loads(events[-2].data)
    assert last["choices"][0]["finish_reason"] == "stopped"
    # With include_usage a stopped stream's usage chunk is the estimate.
    resp = await client.post(
        "/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}
    )
    await read_until(resp, 3)
    await client.post(f"/v1/streams/{resp.headers['X-Stream-Id']}/stop")
    events = Decoder().feed(await resp.read())
    usage = json.loads(events[-2].data)["usage"]
    assert usage["estimated"] is True and usage["completion_tokens"] == 2


async def test_stop_of_a_finished_stream_says_how_it_ended_and_an_unknown_one_is_404(held):
    client, provider, gate, engine = held
    gate.set()
    raw = await (await client.post("/v1/chat/stream", json={"messages": USER})).read()
    sid = json.loads(Decoder().feed(raw)[0].data)["stream_id"]
    stop = await client.post(f"/v1/streams/{sid}/stop")
    assert stop.status == 200
    assert await stop.json() == {"stream_id": sid, "state": "done"}
    missing = await client.post("/v1/streams/0123456789abcdef0123456789abcdef/stop")
    assert missing.status == 404
    assert (await missing.json())["type"] == "stream_not_found"


async def test_a_disconnect_is_not_a_stop(held):
    client, provider, gate, engine = held
    resp = await client.post("/v1/chat/stream", json={"messages": USER, "session": SESSION})
    events, _ = await read_until(resp, 3)
    sid = json.loads(events[0].data)["stream_id"]
    resp.close()
    async with asyncio.timeout(10):
        await provider.closed.wait()
    stop = await client.post(f"/v1/streams/{sid}/stop")
    assert (await stop.json())["state"] == "interrupted"
    conv = (await engine.open_memory()).for_parent("Chat", "stop")
    reply = (await conv.get_messages())[-1]
    assert reply.metadata["reason"] == "client_disconnected"


class _GatedStore(InMemoryStore):
    """A store that holds the reply's write until ``gate`` opens (``storing`` is set then)."""

    def __init__(self) -> None:
        super().__init__()
        self.storing = asyncio.Event()
        self.gate = asyncio.Event()

    async def _append(self, parent, parent_id, messages):
        if any(m.role == "assistant" for m in messages):
            self.storing.set()
            await self.gate.wait()
        return await super()._append(parent, parent_id, messages)


async def test_a_stop_after_the_last_chunk_while_the_reply_is_stored_lets_the_stream_end(
    aiohttp_client,
):
    app = create_app(make_config())
    engine = app[ENGINE]
    store = engine._store = _GatedStore()
    engine.add_provider(ScriptedProvider(["t0 ", "t1 "]), "mock")
    client = await aiohttp_client(app)
    resp = await client.post("/v1/chat/stream", json={"messages": USER, "session": SESSION})
    events, decoder = await read_until(resp, 1)
    sid = json.loads(events[0].data)["stream_id"]
    await store.storing.wait()  # every chunk is out; the whole reply is being stored

    # The Stop route looks the generation up, then stops it in the same step: once it
    # looked, the Stop has been asked (the test's only other lookup of this id is none).
    looked = asyncio.Event()
    lookup = engine.generations.get
    engine.generations.get = lambda stream_id: (looked.set(), lookup(stream_id))[1]
    stop = asyncio.ensure_future(client.post(f"/v1/streams/{sid}/stop"))
    await looked.wait()
    store.gate.set()
    answer = await (await stop).json()
    rest = events + decoder.feed(await resp.read())

    # Too late to stop: the stream ends as it was going to, and Stop says so.
    assert answer == {"stream_id": sid, "state": "done"}
    assert [e.event for e in rest] == ["start", "message", "message", "done"]
    stored = await store.for_parent("Chat", "stop").get_messages()
    replies = [m for m in stored if m.role == "assistant"]
    assert [(m.content, m.metadata.get("partial")) for m in replies] == [("t0 t1 ", None)]

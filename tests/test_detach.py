"""Detach: a generation that outlives its readers, and the window after which it stops."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from engine import create_app
from engine.app import ENGINE
from engine.sse import Decoder

from .helpers import ScriptedProvider, make_config, read_until, running

USER = [{"role": "user", "content": "hi"}]
TOKENS = [f"t{i} " for i in range(6)]


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_a_detached_generation_goes_on_and_a_resume_gets_the_rest(handler_cancellation):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = create_app(make_config(heartbeat=0.1))
    app[ENGINE].add_provider(provider, "mock")
    engine = app[ENGINE]
    body = {
        "messages": USER,
        "options": {"detach": 30},
        "session": {"parent": "Chat", "id": "detached"},
    }
    async with running(app, handler_cancellation=handler_cancellation) as url:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{url}/v1/chat/stream", json=body)
            events, _ = await read_until(resp, 3)
            sid = json.loads(events[0].data)["stream_id"]
            resp.close()  # the tab lost its connection
            # The generation goes on: its client is gone, its upstream is not.
            generation = engine.generations.get(sid)
            assert generation is not None
            async with asyncio.timeout(10):
                await engine.supervisor.wait_empty()  # the stream detached: nothing to watch
            assert not provider.closed.is_set()
            assert generation.state == "streaming"
            gate.set()
            async with asyncio.timeout(10):
                await generation.wait_ended()
            assert generation.state == "done"
            resumed = await session.get(
                f"{url}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"}
            )
            rest = Decoder().feed(await resumed.read())
            # The whole reply is stored, not a partial one.
            conv = engine.memory().for_parent("Chat", "detached")
            reply = (await conv.get_messages())[-1]
    assert [e.event for e in rest] == ["message"] * 4 + ["done"]
    assert json.loads(rest[-1].data)["finish_reason"] == "stop"
    assert len(provider.requests) == 1
    assert reply.content == "".join(TOKENS)
    assert "partial" not in reply.metadata


async def test_a_detached_generation_nobody_resumes_stops_after_its_window():
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = create_app(make_config(heartbeat=0.1))
    app[ENGINE].add_provider(provider, "mock")
    engine = app[ENGINE]
    async with running(app, handler_cancellation=True) as url:
        async with aiohttp.ClientSession() as session:
            body = {"messages": USER, "options": {"detach": 0.3}}
            resp = await session.post(f"{url}/v1/chat/stream", json=body)
            events, _ = await read_until(resp, 3)
            sid = json.loads(events[0].data)["stream_id"]
            resp.close()
            async with asyncio.timeout(10):
                await provider.closed.wait()  # the window passed: the upstream is closed
            resumed = await session.get(
                f"{url}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"}
            )
            rest = Decoder().feed(await resumed.read())
    assert [e.event for e in rest] == ["error"]
    assert json.loads(rest[0].data)["type"] == "interrupted"
    assert engine.generations.ended_state(sid) == "interrupted"


async def test_detach_is_capped_and_checked(aiohttp_client):
    client = await aiohttp_client(create_app(make_config(max_detach=5)))
    bad = await client.post("/v1/chat/stream", json={"messages": USER, "options": {"detach": -1}})
    assert bad.status == 422
    assert "detach" in (await bad.json())["message"]


@pytest.mark.parametrize("handler_cancellation", [False, True, "serve"])
async def test_a_follower_keeps_a_detached_generation_going_when_the_first_reader_leaves(
    handler_cancellation,
):
    """A reconnect that arrived while the old connection still looked alive: the old one then
    drops, the new one reads on. A detached generation (even with a tiny window) stops when
    its *last* reader leaves."""
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = create_app(make_config(heartbeat=0.1))
    app[ENGINE].add_provider(provider, "mock")
    engine = app[ENGINE]
    async with running(app, handler_cancellation=handler_cancellation) as url:
        async with aiohttp.ClientSession() as session:
            body = {"messages": USER, "options": {"detach": 0.01}}
            primary = await session.post(f"{url}/v1/chat/stream", json=body)
            events, _ = await read_until(primary, 3)
            sid = json.loads(events[0].data)["stream_id"]
            follower = await session.get(
                f"{url}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"}
            )
            assert follower.status == 200
            primary.close()
            generation = engine.generations.get(sid)
            assert generation is not None
            # The first reader's loss is noticed (its stream detaches), the generation goes on.
            async with asyncio.timeout(10):
                while len(engine.supervisor) > 1:  # noqa: ASYNC110 - no event for "unregistered"
                    await asyncio.sleep(0.02)
            assert generation.state == "streaming"
            gate.set()
            rest = Decoder().feed(await follower.read())
    assert [e.event for e in rest] == ["message"] * 4 + ["done"]
    assert generation.state == "done"
    assert len(provider.requests) == 1


async def _primary_and_follower(session, url, body):
    """Start a stream, read its first events, attach a resumed reader; both responses."""
    primary = await session.post(f"{url}/v1/chat/stream", json=body)
    events, _ = await read_until(primary, 3)
    sid = json.loads(events[0].data)["stream_id"]
    follower = await session.get(f"{url}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    assert follower.status == 200
    return sid, primary, follower


async def _until_detached(engine):
    async with asyncio.timeout(10):
        while len(engine.supervisor) > 1:  # noqa: ASYNC110 - no event for "unregistered"
            await asyncio.sleep(0.02)


# Not aiohttp's own server with handler_cancellation=True: it cancels the handler,
# and with it a generation that runs in it (README: a stream that must survive its
# first connection there asks to detach).
@pytest.mark.parametrize("handler_cancellation", [False, "serve"])
async def test_a_follower_keeps_a_plain_generation_going_when_the_first_reader_leaves(
    handler_cancellation,
):
    """No detach asked: the reconnect that arrived before the old connection was noticed
    dead reads to the end; one generation, the reply stored once, whole."""
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = create_app(make_config(heartbeat=0.1))
    app[ENGINE].add_provider(provider, "mock")
    engine = app[ENGINE]
    body = {"messages": USER, "session": {"parent": "Chat", "id": "followed"}}
    async with running(app, handler_cancellation=handler_cancellation) as url:
        async with aiohttp.ClientSession() as session:
            sid, primary, follower = await _primary_and_follower(session, url, body)
            generation = engine.generations.get(sid)
            assert generation is not None
            primary.close()
            await _until_detached(engine)
            assert generation.state == "streaming"
            assert not provider.closed.is_set()
            gate.set()
            rest = Decoder().feed(await follower.read())
            messages = await engine.memory().for_parent("Chat", "followed").get_messages()
    assert [e.event for e in rest] == ["message"] * 4 + ["done"]
    assert [e.id for e in rest] == [f"{sid}:{n}" for n in range(3, 8)]
    assert generation.state == "done"
    assert len(provider.requests) == 1
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[-1].content == "".join(TOKENS)
    assert "partial" not in messages[-1].metadata


@pytest.mark.parametrize("handler_cancellation", [False, "serve"])
async def test_the_last_reader_leaving_ends_a_plain_generation(handler_cancellation):
    """Disconnect is still not Stop, and still cancels: once the follower leaves too, the
    upstream is closed and the log ends ``interrupted``."""
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = create_app(make_config(heartbeat=0.1))
    app[ENGINE].add_provider(provider, "mock")
    engine = app[ENGINE]
    async with running(app, handler_cancellation=handler_cancellation) as url:
        async with aiohttp.ClientSession() as session:
            sid, primary, follower = await _primary_and_follower(session, url, {"messages": USER})
            primary.close()
            await _until_detached(engine)
            assert not provider.closed.is_set()
            follower.close()
            async with asyncio.timeout(2):  # "upstream closed within a second" (a tick: 0.25 s)
                await provider.closed.wait()
            resumed = await session.get(
                f"{url}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"}
            )
            rest = Decoder().feed(await resumed.read())
    assert [e.event for e in rest] == ["error"]
    assert json.loads(rest[0].data)["type"] == "interrupted"
    assert engine.generations.ended_state(sid) == "interrupted"
    assert len(provider.requests) == 1


async def test_a_plain_stream_nobody_follows_still_ends_with_its_client():
    """The serve server cancels a lost client's handler as before when no reader resumed."""
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = create_app(make_config(heartbeat=30))  # no tick to notice it: the cancellation does
    app[ENGINE].add_provider(provider, "mock")
    async with running(app, handler_cancellation="serve") as url:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{url}/v1/chat/stream", json={"messages": USER})
            await read_until(resp, 3)
            resp.close()
            async with asyncio.timeout(2):
                await provider.closed.wait()


async def test_a_follower_that_never_reads_holds_neither_the_generation_nor_the_log():
    """A resumed reader that stops reading (a frozen tab) is dropped after send_timeout,
    and then, being the last reader, ends the generation; the log stays in its bound."""
    app = create_app(make_config(heartbeat=0.1, send_timeout=0.5, resume_max_bytes=64 * 1024))
    engine = app[ENGINE]
    body = {  # an endless fast mock stream: about 16 MB/s
        "messages": USER,
        "options": {"max_tokens": 1_000_000, "token_size": 16_384, "interval_ms": 1},
    }
    async with running(app, handler_cancellation="serve") as url:
        host, port = url.removeprefix("http://").split(":")
        async with aiohttp.ClientSession() as session:
            primary = await session.post(f"{url}/v1/chat/stream", json=body)
            events, _ = await read_until(primary, 3)
            sid = json.loads(events[0].data)["stream_id"]
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            _, writer = await asyncio.open_connection(sock=sock)
            writer.write(
                f"GET /v1/streams/{sid} HTTP/1.1\r\nHost: {host}\r\n"
                f"Last-Event-ID: {sid}:2\r\n\r\n".encode()
            )  # and never a read
            log = engine.registry.get(sid)
            async with asyncio.timeout(10):
                while log.readers == 0:  # noqa: ASYNC110 - no event for "a reader attached"
                    await asyncio.sleep(0.01)
            primary.close()
            generation = engine.generations.get(sid)
            assert generation is not None
            async with asyncio.timeout(15):
                await generation.wait_ended()
            writer.close()
    assert generation.state == "interrupted"
    assert log.readers == 0
    assert log.size <= 64 * 1024

"""Clients that leave must leave nothing behind: no task, no connection, no file descriptor;
an idle stream holds nothing it already sent.

Steady state, not a snapshot: after a warm-up round of disconnects the process
holds some pooled connections legitimately, so the test checks that further
rounds do not grow the counts.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import msgspec
import pytest

from engine import create_app
from engine.app import ENGINE
from engine.sse import Decoder
from engine.testing import FakeOpenAI, Script, serve
from engine.wire import Chunk

from .helpers import ScriptedProvider, make_config, read_until


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_disconnects_leave_no_tasks_or_descriptors_behind():
    fake = FakeOpenAI(Script(tokens=["tick"] * 1000, interval_ms=5))
    async with serve(fake.app()) as upstream:
        config = make_config(
            heartbeat=0.2,
            providers={"openai": {"api_key": "k", "base_url": upstream + "/v1", "max_retries": 0}},
        )
        app = create_app(config)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}/v1/chat/stream"
        body = {"messages": [{"role": "user", "content": "hi"}], "provider": "openai"}

        async def leave_mid_stream() -> None:
            # A fresh client each time: its connection really closes.
            async with aiohttp.ClientSession() as session:
                resp = await session.post(url, json=body)
                decoder = Decoder()
                chunks = 0
                while chunks < 3:
                    events = decoder.feed(await resp.content.readany())
                    chunks += sum(e.event == "message" for e in events)
                resp.close()

        async def one_round(n: int) -> None:
            before = len(fake.requests)
            await asyncio.gather(*(leave_mid_stream() for _ in range(n)))
            # Every upstream request of the round saw its connection closed...
            for rec in fake.requests[before:]:
                await asyncio.wait_for(rec.disconnected.wait(), 2)
            # ...and every stream unregistered from the supervisor.
            await asyncio.wait_for(app[ENGINE].supervisor.wait_empty(), 2)

        try:
            await one_round(10)  # warm-up: pools and caches fill once
            tasks, fds = len(asyncio.all_tasks()), open_fds()
            for _ in range(3):
                await one_round(10)
            assert len(asyncio.all_tasks()) <= tasks
            assert open_fds() <= fds
            assert len(fake.requests) == 40
        finally:
            await runner.cleanup()


class _Kept(Chunk, weakref=True):
    """A chunk the test can watch die (msgspec Structs take no weak reference by default)."""


class _WatchedProvider(ScriptedProvider):
    """ScriptedProvider whose chunks are watched: ``sent_chunks`` are weak references."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent_chunks: list[weakref.ref[Chunk]] = []

    async def _chunks(self) -> AsyncGenerator[Chunk, None]:
        async for chunk in super()._chunks():
            kept = _Kept(**msgspec.structs.asdict(chunk))
            self.sent_chunks.append(weakref.ref(kept))
            del chunk
            yield kept
            del kept


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/stream", {"messages": [{"role": "user", "content": "hi"}]}),
        (
            "/v1/chat/completions",
            {"model": "mock/x", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ),
    ],
)
async def test_an_idle_stream_holds_none_of_the_chunks_it_already_sent(aiohttp_client, path, body):
    """A stream whose provider goes quiet keeps nothing of what it relayed (idle memory).

    Ten thousand streams waiting on a slow model must each cost what an open
    connection costs, not that plus their last chunk and its frame.
    """
    gate = asyncio.Event()
    provider = _WatchedProvider(["t0 ", "t1 ", "t2 "], gate=gate, hold_from=2)
    app = create_app(make_config())
    app[ENGINE].add_provider(provider, "mock")
    client = await aiohttp_client(app)
    resp = await client.post(path, json=body)
    events, decoder = await read_until(resp, 3)  # (start or role), t0, t1; then quiet
    assert "t1 " in events[-1].data
    for _ in range(50):  # the relay is back in its wait for t2 once the write is out
        await asyncio.sleep(0)
    gc.collect()
    assert len(provider.sent_chunks) == 2
    assert [ref() for ref in provider.sent_chunks] == [None, None]
    gate.set()
    rest = decoder.feed(await resp.read())
    assert any("t2 " in e.data for e in rest)

"""Clients that leave must leave nothing behind: no task, no connection, no file descriptor.

Steady state, not a snapshot: after a warm-up round of disconnects the process
holds some pooled connections legitimately, so the test checks that further
rounds do not grow the counts.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp

from engine import create_app
from engine.app import ENGINE
from engine.sse import Decoder
from engine.testing import FakeOpenAI, Script, serve

from .helpers import make_config


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

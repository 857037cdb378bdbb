"""Coalescing ready events into one write: ``next_ready`` and ``EventStream.queue_frame/flush``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from engine._eager import next_ready
from engine.gateway import Engine
from engine.sse import Decoder, encode_json

from .helpers import make_config


def gated(gate: asyncio.Event, finished: asyncio.Event):
    """Three items at once, a wait on ``gate``, then two more."""

    async def gen():
        try:
            for i in range(3):
                yield i
            await gate.wait()
            for i in range(3, 5):
                yield i
        finally:
            finished.set()

    return gen()


async def test_before_wait_runs_only_when_the_iterator_must_wait():
    log: list[str] = []
    gate = asyncio.Event()
    finished = asyncio.Event()
    it = gated(gate, finished)

    async def before_wait() -> None:
        log.append("flush")
        gate.set()  # what we were waiting for is now there

    while True:
        try:
            item = await next_ready(it, before_wait)
        except StopAsyncIteration:
            break
        log.append(str(item))
    assert log == ["0", "1", "2", "flush", "3", "4"]
    assert finished.is_set()


async def test_a_failing_before_wait_cancels_the_pending_step_cleanly():
    gate = asyncio.Event()
    finished = asyncio.Event()
    it = gated(gate, finished)

    async def broken() -> None:
        raise ConnectionResetError("client gone")

    items = []
    try:
        while True:
            items.append(await next_ready(it, broken))
    except ConnectionResetError:
        pass
    assert items == [0, 1, 2]
    assert finished.is_set()  # the generator was unwound, not left suspended
    await it.aclose()  # and is not "already running"


async def test_cancelling_the_waiting_task_reaches_the_iterator():
    gate = asyncio.Event()
    finished = asyncio.Event()
    it = gated(gate, finished)
    waiting = asyncio.Event()

    async def before_wait() -> None:
        waiting.set()

    async def consume() -> None:
        while True:
            await next_ready(it, before_wait)

    task = asyncio.ensure_future(consume())
    await waiting.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
    assert finished.is_set()
    await it.aclose()


async def test_errors_from_the_iterator_propagate():
    async def gen():
        yield 1
        await asyncio.sleep(0)
        raise ValueError("upstream broke")

    it = gen()

    async def nothing() -> None:
        pass

    assert await next_ready(it, nothing) == 1
    try:
        await next_ready(it, nothing)
    except ValueError as exc:
        assert str(exc) == "upstream broke"
    else:  # pragma: no cover
        raise AssertionError("no error")


async def test_queued_frames_go_out_in_order_before_done(aiohttp_client):
    engine = Engine(make_config())

    async def handler(request: web.Request) -> web.StreamResponse:
        async with engine.sse(request) as stream:
            for i in range(3):
                stream.queue_frame(encode_json({"n": i}, id=str(i)))
            assert stream.queued == 3
            await stream.flush()
            assert stream.queued == 0
            stream.queue_frame(encode_json({"n": 3}, id="3"))
            # end() writes what is still queued before `done`
        return stream.response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    async with client.get("/") as resp:
        raw = await resp.read()
    events = Decoder().feed(raw)
    assert [e.data for e in events[:4]] == [f'{{"n":{i}}}' for i in range(4)]
    assert [e.id for e in events[:4]] == ["0", "1", "2", "3"]
    assert events[-1].event == "done"
    await engine.aclose()

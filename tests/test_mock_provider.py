"""The mock provider's limits: lazy generation, fair yielding, a bounded whole reply.

A request may ask the mock for up to 1,000,000 chunks of 65,536 characters (the
``Options`` bounds). Streamed, that must cost memory independent of its length
and leave the loop to the other streams; whole (``send``), it is refused above
``MAX_WHOLE_REPLY_CHARS`` instead of being built.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
import zlib

import pytest

from engine import create_app
from engine.client import iter_events
from engine.errors import InvalidFields
from engine.providers.mock import _WORDS, MAX_WHOLE_REPLY_CHARS, MockProvider, mock_text
from engine.wire import Message, Options

from .helpers import make_config

MiB = 1024 * 1024
HI = [Message(role="user", content="hi")]
IDLE = [Message(role="user", content="idle")]


def reference_text(last: str, length: int) -> str:
    """The mock's text as it was built before it became lazy (the whole reply, word by word)."""
    parts = [f"You said: {last}. "]
    size = len(parts[0])
    seed = zlib.crc32(last.encode())
    while size < length:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        word = _WORDS[seed % len(_WORDS)] + " "
        parts.append(word)
        size += len(word)
    return "".join(parts)[:length]


def options(max_tokens: int, token_size: int, interval_ms: int = 0) -> Options:
    return Options(max_tokens=max_tokens, token_size=token_size, interval_ms=interval_ms)


# -- lazy generation -------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [100, 1_000_000])
async def test_a_huge_stream_holds_little_memory(max_tokens):
    # 1,000,000 x 65,536 is 65 GB of text; the first few chunks must not cost it.
    provider = MockProvider(model="mock-1")
    tracemalloc.start()
    try:
        chunks = await provider.open(HI, options=options(max_tokens, 65_536))
        async with chunks:
            sizes = [len((await anext(chunks)).content) for _ in range(8)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes == [65_536] * 8
    assert peak < 2 * MiB


async def test_idle_streams_of_a_million_tokens_hold_little_memory():
    # What a load test of idle streams holds (the same request each time, as
    # benchmarks/bench_concurrency.py sends): each has sent its first chunk.
    provider = MockProvider(model="mock-1")
    streams = []
    tracemalloc.start()
    try:
        for _ in range(1_000):
            chunks = await provider.open(IDLE, options=options(1_000_000, 4, 60_000))
            await anext(chunks)
            streams.append(chunks)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        for chunks in streams:
            await chunks.aclose()
    # Under 2 KiB a stream: the 16 KiB of words they repeat are shared, not copied.
    assert held < 2 * MiB


@pytest.mark.parametrize(
    ("content", "max_tokens", "token_size"),
    [
        ("hi", 40_000, 1),
        ("hi", 10_000, 7),  # 7 divides no period of whole words here
        ("hi", 20, 4_096),
        ("hi", 5, 65_536),  # each chunk holds the period several times
        ("hello there", 3, 5),  # within the echo
        ("héllo wörld", 5_000, 13),
        ("x" * 20_000, 3_000, 11),  # an echo longer than the period
    ],
)
async def test_the_stream_is_mock_text_and_starts_as_before(content, max_tokens, token_size):
    messages = [Message(role="user", content=content)]
    provider = MockProvider(model="mock-1")
    chunks = await provider.open(messages, options=options(max_tokens, token_size))
    async with chunks:
        received = [chunk async for chunk in chunks]
    text = "".join(c.content for c in received)

    assert [len(c.content) for c in received] == [token_size] * max_tokens
    assert text == mock_text(messages, max_tokens * token_size)
    # The echo and the first 16 KiB of words are exactly the text of before.
    before = min(len(text), len(f"You said: {content}. ") + 16 * 1024)
    assert text[:before] == reference_text(content, before)
    assert [c.finish_reason for c in received[:-1]] == [None] * (max_tokens - 1)
    assert received[-1].finish_reason == "stop"
    assert received[-1].usage is not None
    assert received[-1].usage.completion_tokens == max_tokens


# -- yielding ----------------------------------------------------------------------------


@pytest.mark.parametrize("token_size", [16_384, 65_536])
async def test_a_fast_stream_of_large_chunks_lets_another_stream_progress(token_size):
    provider = MockProvider(model="mock-1")
    big = await provider.open(HI, options=options(64, token_size))
    small = await provider.open(HI, options=options(10_000, 4))
    received_by_small = 0

    async def read_small() -> None:
        nonlocal received_by_small
        async for _ in small:
            received_by_small += 1

    # Created before the big stream is read, so it runs at the big stream's
    # first yield to the loop (the loop runs ready tasks in order): no race.
    task = asyncio.create_task(read_small())
    sent_by_big = 0
    try:
        async with big:
            while received_by_small == 0 and sent_by_big < 64 * token_size:
                sent_by_big += len((await anext(big)).content)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await small.aclose()
    assert received_by_small > 0
    # Yields come at least every 64 KiB; the first chunk after one is counted too.
    assert sent_by_big <= 64 * 1024 + token_size


# -- the whole reply's bound -------------------------------------------------------------


async def test_send_refuses_a_whole_reply_above_the_bound():
    provider = MockProvider(model="mock-1")
    with pytest.raises(InvalidFields) as caught:
        await provider.send(HI, max_tokens=17, token_size=65_536, interval_ms=0)
    message = caught.value.message
    assert "max_tokens" in message
    assert "token_size" in message
    assert str(MAX_WHOLE_REPLY_CHARS) in message


async def test_send_gives_a_whole_reply_at_the_bound():
    provider = MockProvider(model="mock-1")
    reply = await provider.send(HI, max_tokens=16, token_size=65_536, interval_ms=0)
    assert len(reply.content) == MAX_WHOLE_REPLY_CHARS
    assert reply.content == mock_text(HI, MAX_WHOLE_REPLY_CHARS)
    assert reply.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


@pytest.fixture
async def client(aiohttp_client):
    return await aiohttp_client(create_app(make_config()))


async def test_post_chat_above_the_bound_is_422(client):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"max_tokens": 17, "token_size": 65_536, "interval_ms": 0},
    }
    resp = await client.post("/v1/chat", json=body)
    assert resp.status == 422
    error = await resp.json()
    assert error["type"] == "invalid_fields"
    assert "max_tokens" in error["message"]
    assert "token_size" in error["message"]


async def test_chat_completions_above_the_bound_is_400(client):
    # token_size is the mock's default, 4: 300,000 of them are over 1 MiB.
    body = {"model": "mock/x", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json={**body, "max_tokens": 300_000})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


# -- over HTTP ---------------------------------------------------------------------------


async def test_a_huge_stream_streams_while_the_server_answers(client):
    query = {"q": "x", "max_tokens": "1000000", "token_size": "65536", "interval_ms": "0"}
    async with client.get("/v1/chat/stream", params=query) as resp:
        assert resp.status == 200
        contents = []
        async with contextlib.aclosing(iter_events(resp)) as events:
            async for event in events:
                if event.event == "message":
                    contents.append(json.loads(event.data)["content"])
                    if len(contents) == 3:
                        break
        # The big stream is open (and its client not reading): others still get answers.
        health = await client.get("/healthz")
        assert health.status == 200
        assert (await health.json())["status"] == "ok"
    assert "".join(contents) == mock_text([Message(role="user", content="x")], 3 * 65_536)

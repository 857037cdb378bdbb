"""Every real provider against its fake upstream, through every delivery mode.

The same scripted reply goes out whole, byte by byte, with CRLF, comments,
unknown fields, slowly, cut off, failing; the provider must read exactly the
scripted text, map finish reason and usage, and raise the specified errors.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from engine.config import Config, ProviderSettings
from engine.errors import (
    ProviderNotConfigured,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from engine.providers import create_provider
from engine.providers._http import HTTPProvider
from engine.providers.anthropic import AnthropicProvider
from engine.providers.gemini import GeminiProvider
from engine.providers.openai import OpenAIProvider
from engine.testing import FAKES, FakeUpstream, Script, serve
from engine.wire import Chunk, Message, Usage

KEY = "sk-test-SECRET-0123456789"
MESSAGES = [Message(role="system", content="Be brief."), Message(role="user", content="Hi!")]

#: Unicode, emoji (multi-code-point), newlines and CR inside tokens, JSON specials, a long token.
TOKENS = [
    "Héllo",
    " 世界",
    " 👩‍👩‍👧‍👦",
    "line one\nline two",
    "\r\n",
    ' "quoted" \\ back\\slash',
    "data: not a field",
    "\u2028sep\u2029",
    "x" * 20_000,
    " end.",
]
#: Short tokens for byte-by-byte delivery (one write per byte).
SHORT = ["Héllo", " 世界", " 👩‍👩‍👧‍👦", "a\nb", "\r\n", ' "q"\\', "."]

CLASSES: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}
# Where each provider's base URL points, relative to the fake's root.
SUFFIX = {"openai": "/v1", "anthropic": "", "gemini": ""}


@dataclass
class Harness:
    name: str
    fake: FakeUpstream
    url: str
    session: aiohttp.ClientSession

    def settings(self, **overrides: Any) -> ProviderSettings:
        fields: dict[str, Any] = {
            "api_key": KEY,
            "base_url": self.url + SUFFIX[self.name],
            "model": "test-model",
        }
        fields.update(overrides)
        return ProviderSettings(**fields)

    def provider(self, **overrides: Any) -> HTTPProvider:
        return CLASSES[self.name](
            self.settings(**overrides), session=self.session, backoff_base=0.005
        )


@pytest.fixture(params=sorted(CLASSES))
async def h(request):
    fake = FAKES[request.param]()
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        yield Harness(request.param, fake, url, session)


def contents(chunks: list[Chunk]) -> list[str]:
    return [c.content for c in chunks if c.content]


def check_reply(chunks: list[Chunk], tokens: list[str], *, finish: str = "stop") -> None:
    assert contents(chunks) == tokens
    assert "".join(c.content for c in chunks) == "".join(tokens)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == finish
    assert last.usage == Usage(
        prompt_tokens=9, completion_tokens=len(tokens), total_tokens=9 + len(tokens)
    )
    assert {c.model for c in chunks} == {"test-model"}
    assert all(c.role == "assistant" for c in chunks)


MODES = {
    "whole": Script(tokens=TOKENS),
    "byte-by-byte": Script(tokens=SHORT, fragment=1),
    "fragments-of-7": Script(tokens=TOKENS, fragment=7),
    "crlf": Script(tokens=TOKENS, crlf=True),
    "comments-and-pings": Script(tokens=TOKENS, comments=True),
    "unknown-fields": Script(tokens=TOKENS, unknown_fields=True),
    "slow": Script(tokens=SHORT, interval_ms=5),
    "everything": Script(tokens=SHORT, fragment=3, crlf=True, comments=True, unknown_fields=True),
}


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_stream_reads_exact_content_in_every_mode(h, mode):
    script = MODES[mode]
    h.fake.default = script
    chunks = [c async for c in h.provider().stream(MESSAGES)]
    check_reply(chunks, list(script.tokens))


async def test_slow_stream_yields_each_chunk_as_it_arrives(h):
    # A chunk must come out when its event is complete, not when a buffer fills:
    # with 30 ms between events, consecutive chunks arrive about 30 ms apart.
    h.fake.default = Script(tokens=["a", "b", "c", "d"], interval_ms=30)
    seen: list[float] = []
    async for chunk in h.provider().stream(MESSAGES):
        if chunk.content:
            seen.append(time.monotonic())
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert len(gaps) == 3
    assert all(gap > 0.02 for gap in gaps), gaps


async def test_length_finish_is_mapped(h):
    h.fake.default = Script(tokens=["a", "b"], finish="length")
    chunks = [c async for c in h.provider().stream(MESSAGES)]
    check_reply(chunks, ["a", "b"], finish="length")


async def test_send_is_one_non_streaming_call(h):
    h.fake.default = Script(tokens=TOKENS)
    reply = await h.provider().send(MESSAGES)
    assert reply.content == "".join(TOKENS)
    assert reply.finish_reason == "stop"
    assert reply.usage == Usage(prompt_tokens=9, completion_tokens=10, total_tokens=19)
    assert reply.model == "test-model"
    (rec,) = h.fake.requests
    if h.name == "gemini":
        assert rec.path.endswith(":generateContent")
    else:
        assert "stream" not in rec.json


async def test_stamp_mode_carries_the_send_time(h):
    h.fake.default = Script(stamp=True, stamp_count=5, interval_ms=1)
    chunks = [c async for c in h.provider().stream(MESSAGES)]
    stamps = [int(c) for c in contents(chunks)]
    assert len(stamps) == 5
    assert stamps == sorted(stamps)
    assert 0 <= time.time_ns() - stamps[-1] < 1_000_000_000


async def test_drop_mid_stream_raises_after_the_chunks_before_it(h):
    h.fake.default = Script(tokens=["a", "b", "c", "d"], drop_after=2)
    got: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in h.provider().stream(MESSAGES):
            got.append(chunk.content)
    assert got == ["a", "b"]
    assert type(info.value) is UpstreamError
    assert "before it was complete" in info.value.message


ERROR_EVENT = {
    "openai": (None, UpstreamError),
    "anthropic": ("overloaded_error", UpstreamUnavailable),
    "gemini": ("UNAVAILABLE", UpstreamUnavailable),
}


async def test_error_event_mid_stream_is_raised_not_swallowed(h):
    kind, cls = ERROR_EVENT[h.name]
    h.fake.default = Script(tokens=["a", "b", "c"], error_after=2, error_type=kind)
    got: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in h.provider().stream(MESSAGES):
            got.append(chunk.content)
    assert got == ["a", "b"]
    assert type(info.value) is cls
    assert "overloaded" in info.value.message
    if kind is not None:
        assert info.value.upstream_type == kind


STATUS_ERRORS = [
    (400, UpstreamBadRequest, 400),
    (401, UpstreamAuthError, 502),
    (403, UpstreamAuthError, 502),
    (404, UpstreamBadRequest, 400),
    (429, UpstreamRateLimited, 429),
    (500, UpstreamError, 502),
    (503, UpstreamUnavailable, 503),
    (529, UpstreamUnavailable, 503),
]


@pytest.mark.parametrize(("status", "cls", "http_status"), STATUS_ERRORS)
async def test_error_status_is_raised_by_open_before_any_chunk(h, status, cls, http_status):
    h.fake.default = Script(status=status, retry_after="7" if status == 429 else None)
    provider = h.provider(max_retries=0)
    with pytest.raises(UpstreamError) as info:
        await provider.open(MESSAGES)
    err = info.value
    assert type(err) is cls
    assert err.status == http_status
    assert err.upstream_status == status
    assert KEY not in str(err) and KEY not in err.message
    assert f"answered {status}" in err.message
    if status == 429:
        assert err.retry_after == 7.0
    assert len(h.fake.requests) == 1
    # The same for send().
    with pytest.raises(cls):
        await provider.send(MESSAGES)


async def test_the_key_is_redacted_from_an_error_that_echoes_it(h):
    h.fake.default = Script(status=401)
    with pytest.raises(UpstreamAuthError) as info:
        await h.provider().open(MESSAGES)
    if h.name == "openai":  # the fake echoes the key it received, whole
        assert "***" in info.value.message
    assert KEY not in repr(info.value.to_dict())
    assert KEY not in str(info.value.__cause__ or "")


async def test_retries_429_and_5xx_honouring_retry_after(h):
    h.fake.push(Script(status=429, retry_after="0.2"), Script(status=500), Script(status=503))
    h.fake.default = Script(tokens=["ok"])
    started = time.monotonic()
    chunks = [c async for c in h.provider(max_retries=3).stream(MESSAGES)]
    elapsed = time.monotonic() - started
    assert contents(chunks) == ["ok"]
    assert len(h.fake.requests) == 4
    assert elapsed >= 0.2  # Retry-After was waited out
    bodies = {repr(r.json) for r in h.fake.requests}
    assert len(bodies) == 1  # the same request each time


async def test_retries_are_bounded(h):
    h.fake.default = Script(status=500)
    with pytest.raises(UpstreamError) as info:
        await h.provider(max_retries=2).open(MESSAGES)
    assert info.value.upstream_status == 500
    assert len(h.fake.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(h, status):
    h.fake.default = Script(status=status)
    with pytest.raises(UpstreamError):
        await h.provider(max_retries=3).open(MESSAGES)
    assert len(h.fake.requests) == 1


async def test_a_long_retry_after_is_passed_on_not_slept(h):
    h.fake.default = Script(status=429, retry_after="120")
    started = time.monotonic()
    with pytest.raises(UpstreamRateLimited) as info:
        await h.provider(max_retries=3).open(MESSAGES)
    assert time.monotonic() - started < 1
    assert info.value.retry_after == 120
    assert len(h.fake.requests) == 1


async def test_connect_error_is_retried_then_raised(h):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = CLASSES[h.name](
        ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{port}", max_retries=1),
        session=h.session,
        backoff_base=0.001,
    )
    with pytest.raises(UpstreamConnectError) as info:
        await provider.open(MESSAGES)
    assert KEY not in info.value.message


async def test_first_byte_timeout(h):
    h.fake.default = Script(delay_ms=5_000)
    with pytest.raises(UpstreamTimeout, match="first_byte_timeout"):
        await h.provider(first_byte_timeout=0.05).open(MESSAGES)
    (rec,) = h.fake.requests  # not retried
    await asyncio.wait_for(rec.disconnected.wait(), 1)


async def test_idle_timeout_between_chunks(h):
    h.fake.default = Script(tokens=["a", "b"], interval_ms=5_000)
    got: list[str] = []
    with pytest.raises(UpstreamTimeout, match="idle_timeout"):
        async for chunk in h.provider(idle_timeout=0.05).stream(MESSAGES):
            got.append(chunk.content)
    assert got == ["a"]
    await asyncio.wait_for(h.fake.requests[0].disconnected.wait(), 1)


async def test_closing_early_closes_the_upstream_connection(h):
    h.fake.default = Script(tokens=["a", "b", "c"], interval_ms=10_000)
    chunks = await h.provider().open(MESSAGES)
    assert (await chunks.__anext__()).content == "a"
    await chunks.aclose()
    rec = h.fake.requests[0]
    await asyncio.wait_for(rec.disconnected.wait(), 1)


async def test_closing_before_the_first_chunk_closes_the_upstream_connection(h):
    h.fake.default = Script(tokens=["a", "b"], interval_ms=10_000)
    chunks = await h.provider().open(MESSAGES)
    await chunks.aclose()
    await chunks.aclose()  # twice is fine
    await asyncio.wait_for(h.fake.requests[0].disconnected.wait(), 1)


async def test_cancelling_a_reader_closes_the_upstream_connection(h):
    h.fake.default = Script(tokens=["a", "b"], interval_ms=10_000)
    first = asyncio.Event()

    async def read() -> None:
        async for _ in h.provider().stream(MESSAGES):
            first.set()

    task = asyncio.create_task(read())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(h.fake.requests[0].disconnected.wait(), 1)


async def test_cancelling_send_closes_the_upstream_connection(h):
    h.fake.default = Script(delay_ms=10_000)
    task = asyncio.create_task(h.provider().send(MESSAGES))
    await h.fake.received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(h.fake.requests[0].disconnected.wait(), 1)


async def test_a_complete_stream_does_not_look_like_a_disconnect(h):
    h.fake.default = Script(tokens=["a"])
    chunks = [c async for c in h.provider().stream(MESSAGES)]
    assert contents(chunks) == ["a"]
    rec = h.fake.requests[0]
    await asyncio.wait_for(rec.done.wait(), 1)
    assert not rec.disconnected.is_set()


ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}


async def test_missing_key_names_the_variable_and_sends_nothing(h):
    config = Config(providers={h.name: ProviderSettings(base_url=h.url)})
    provider = create_provider(h.name, config, session=h.session)
    assert isinstance(provider, CLASSES[h.name])
    with pytest.raises(ProviderNotConfigured, match=f"{ENV[h.name]} is not set"):
        await provider.open(MESSAGES)
    with pytest.raises(ProviderNotConfigured, match=ENV[h.name]):
        await provider.send(MESSAGES)
    assert h.fake.requests == []


async def test_registry_builds_each_provider_with_the_app_session(h):
    config = Config(providers={h.name: h.settings()})
    provider = create_provider(h.name, config, session=h.session)
    h.fake.default = Script(tokens=["hi"])
    reply = await provider.send(MESSAGES)
    assert reply.content == "hi"
    await provider.aclose()
    assert not h.session.closed  # the shared session is not the provider's to close


async def test_provider_without_a_session_makes_and_closes_its_own(h):
    provider = CLASSES[h.name](h.settings())
    h.fake.default = Script(tokens=["hi"])
    try:
        assert contents([c async for c in provider.stream(MESSAGES)]) == ["hi"]
    finally:
        await provider.aclose()


def test_claude_is_an_alias_for_anthropic():
    provider = create_provider("claude", Config(providers={}))
    assert isinstance(provider, AnthropicProvider)
    assert provider.default_model == "claude-sonnet-4-5"

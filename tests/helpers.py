"""Shared test helpers: configs, scripted providers, reading a stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from engine.client import iter_events
from engine.config import Config
from engine.providers.base import ChunkStream, Provider
from engine.sse import Decoder, ServerSentEvent
from engine.wire import Chunk, Message, Options, Usage


def make_config(**overrides: Any) -> Config:
    """A config that ignores the environment and keeps memory in-process."""
    overrides.setdefault("memory_url", "memory://")
    return Config.load(environ={}, **overrides)


async def read_events(response: aiohttp.ClientResponse) -> list[ServerSentEvent]:
    return [event async for event in iter_events(response)]


async def read_until(
    response: aiohttp.ClientResponse, count: int
) -> tuple[list[ServerSentEvent], Decoder]:
    """At least ``count`` events of a stream still open, and the decoder to read on with."""
    decoder, events = Decoder(), []
    while len(events) < count:
        data = await response.content.readany()
        assert data, f"the stream ended after {events!r}"
        events += decoder.feed(data)
    return events, decoder


class ScriptedProvider(Provider):
    """A provider whose reply the test controls step by step.

    ``tokens`` are sent in order; before each one from index ``hold_from`` on it
    waits for ``gate`` when set (the test opens it); ``fail_after`` raises an error after that many chunks.
    ``closed`` is set when the producer stops for any reason (finished, failed,
    cancelled): the tests' view of "the upstream request was stopped".
    """

    name = "scripted"

    def __init__(
        self,
        tokens: Sequence[str] = ("a", "b", "c"),
        *,
        gate: asyncio.Event | None = None,
        hold_from: int = 0,
        fail_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        super().__init__(model="scripted-1")
        self.tokens = list(tokens)
        self.gate = gate
        self.hold_from = hold_from
        self.fail_after = fail_after
        self.error = error
        self.closed = asyncio.Event()
        self.started = asyncio.Event()
        self.sent = 0
        self.requests: list[tuple[list[Message], Options | None]] = []

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        self.requests.append((list(messages), options))
        return ChunkStream(self._chunks(), model=model or self.default_model, provider=self.name)

    async def _chunks(self) -> AsyncGenerator[Chunk, None]:
        try:
            self.started.set()
            for i, token in enumerate(self.tokens):
                if self.fail_after is not None and i == self.fail_after:
                    raise self.error or RuntimeError("scripted failure")
                if self.gate is not None and i >= self.hold_from:
                    await self.gate.wait()
                last = i == len(self.tokens) - 1
                self.sent += 1
                yield Chunk(
                    role="assistant",
                    content=token,
                    model=self.default_model,
                    finish_reason="stop" if last else None,
                    usage=Usage(prompt_tokens=1, completion_tokens=len(self.tokens))
                    if last
                    else None,
                )
        finally:
            self.closed.set()


@contextlib.asynccontextmanager
async def running(app: web.Application, *, handler_cancellation: bool | str) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (an ephemeral port); yield its base URL.

    aiohttp's own test server always cancels handlers on disconnect; an app
    mounted in someone else's server may not, so the tests need both.
    ``"serve"``: the server ``sse-engine serve`` runs (handlers cancelled,
    unless a stream says it may outlive its client).
    """
    runner: web.AppRunner
    if handler_cancellation == "serve":
        from engine.server import GatewayRunner

        runner = GatewayRunner(app, handler_cancellation=True, header_timeout=10)
    else:
        runner = web.AppRunner(app, handler_cancellation=bool(handler_cancellation))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()

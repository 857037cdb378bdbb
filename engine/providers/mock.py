"""The mock provider: deterministic replies with no key and no network.

It is the embedded default (``make serve`` works offline) and a load-testing
target: ``interval_ms`` sets the cadence (0 streams as fast as the client reads)
and ``max_tokens`` and ``token_size`` set how many chunks of how many
characters. The same request always gives the same text, so a test can compare
the stream with ``send()`` and a benchmark can check every byte it received.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from ..wire import Chunk, Message, Options, Usage
from .base import ChunkStream, Provider

if TYPE_CHECKING:
    from ..config import ProviderSettings

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_INTERVAL_MS",
    "DEFAULT_TOKEN_SIZE",
    "MockProvider",
    "mock_text",
]

DEFAULT_CHUNKS = 40
DEFAULT_INTERVAL_MS = 20
DEFAULT_TOKEN_SIZE = 4
# After this many chunks sent without a pause, yield to the event loop once, so
# an interval of 0 cannot starve the other streams on the same loop.
_YIELD_EVERY = 32

_WORDS = (
    "stream", "token", "event", "gateway", "latency", "socket", "buffer", "reply",
    "model", "chunk", "server", "client", "memory", "session", "provider", "heartbeat",
)  # fmt: skip


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile
        future.set_result(None)


def mock_text(messages: Sequence[Message], length: int) -> str:
    """The first ``length`` characters the mock says in reply to ``messages``.

    The reply echoes the last user message, then continues with words chosen by
    a CRC of that message, so it is the same in every process and run.
    """
    last = next((m.content for m in reversed(messages) if m.role == "user"), "")
    if length <= _CACHED_TEXT_MAX:
        return _cached_text(last, length)
    return _text(last, length)


def _text(last: str, length: int) -> str:
    parts = [f"You said: {last}. "]
    size = len(parts[0])
    seed = zlib.crc32(last.encode())
    while size < length:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        word = _WORDS[seed % len(_WORDS)] + " "
        parts.append(word)
        size += len(word)
    return "".join(parts)[:length]


# A load test asks for the same reply thousands of times; building it is a Python
# loop per word, so recent texts are kept (small ones only: at most 32 x 256 KiB).
_CACHED_TEXT_MAX = 256 * 1024
_cached_text = functools.lru_cache(maxsize=32)(_text)


def _count_tokens(messages: Sequence[Message]) -> int:
    # A rough, deterministic stand-in for a tokenizer: four characters a token.
    return sum(len(m.content) // 4 + 1 for m in messages)


class MockProvider(Provider):
    """Replies derived from the last user message, at a cadence the request sets."""

    name = "mock"

    @classmethod
    def from_settings(cls, settings: ProviderSettings, *, session: Any = None) -> MockProvider:
        return cls(model=settings.model or "mock-1")

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        options = options or Options()
        model = model or self.default_model
        count = options.max_tokens if options.max_tokens is not None else DEFAULT_CHUNKS
        size = options.token_size or DEFAULT_TOKEN_SIZE
        interval = DEFAULT_INTERVAL_MS if options.interval_ms is None else options.interval_ms
        text = mock_text(messages, count * size)
        usage = Usage(
            prompt_tokens=_count_tokens(messages),
            completion_tokens=count,
            total_tokens=_count_tokens(messages) + count,
        )
        return ChunkStream(self._chunks(text, size, interval / 1000, model, usage), model=model)

    @staticmethod
    async def _chunks(
        text: str, size: int, interval: float, model: str, usage: Usage
    ) -> AsyncGenerator[Chunk, None]:
        last = len(text) - size
        loop = asyncio.get_running_loop()
        for n, start in enumerate(range(0, len(text), size)):
            if start:
                if interval:
                    # asyncio.sleep(interval), minus its coroutine: thousands of
                    # paced mock streams sleep once per chunk (benchmarks).
                    wake: asyncio.Future[None] = loop.create_future()
                    timer = loop.call_later(interval, _wake, wake)
                    try:
                        await wake
                    finally:
                        timer.cancel()
                elif n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if start >= last:
                yield Chunk(
                    role="assistant",
                    content=text[start : start + size],
                    model=model,
                    finish_reason="stop",
                    usage=usage,
                )
            else:
                yield Chunk(
                    role="assistant",
                    content=text[start : start + size],
                    model=model,
                    finish_reason=None,
                )

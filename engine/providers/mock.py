"""The mock provider: deterministic replies with no key and no network.

It is the embedded default (``make serve`` works offline) and a load-testing
target: ``interval_ms`` sets the cadence (0 streams as fast as the client reads)
and ``max_tokens`` and ``token_size`` set how many chunks of how many
characters. The same request always gives the same text, so a test can compare
the stream with ``send()`` and a benchmark can check every byte it received.

The text is generated lazily, because a request may ask for up to
1,000,000 x 65,536 characters (the :class:`~engine.wire.Options` bounds): it is
the echo of the last user message, then a *period* of words (about 16 KiB)
repeated for as long as asked. The period is built once per distinct message
and cached, and each chunk is a slice of it, so a stream holds
O(echo + period + token_size) characters whatever its length, and a chunk costs
a copy of its own characters, never a loop per word.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidFields
from ..wire import Chunk, Message, Options, Reply, Usage
from .base import ChunkStream, Provider, to_options

if TYPE_CHECKING:
    from ..config import ProviderSettings

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_INTERVAL_MS",
    "DEFAULT_TOKEN_SIZE",
    "MAX_WHOLE_REPLY_CHARS",
    "PERIOD_CHARS",
    "MockProvider",
    "mock_text",
]

DEFAULT_CHUNKS = 40
DEFAULT_INTERVAL_MS = 20
DEFAULT_TOKEN_SIZE = 4

#: The words after the echo repeat with this period (rounded up to a whole word),
#: so the first 16 KiB after the echo are exactly what the mock said before it
#: repeated (tests and benchmarks compare short replies byte for byte), and a
#: cached period costs 16 KiB: 64 of them (``_period``'s cache) hold 1 MiB.
PERIOD_CHARS = 16 * 1024

#: The largest non-streamed reply (``send()``, ``POST /v1/chat``, ``stream: false``),
#: in characters of ``max_tokens`` x ``token_size``. A whole reply is held in memory
#: and sent as one JSON body, so it is bounded like a request body: aiohttp's
#: default ``client_max_size`` and this engine's ``max_body_size`` are 1 MiB. It is
#: still above any real model's output (128k tokens are about 512 KiB of text).
#: Streams have no such bound: their memory does not grow with their length.
MAX_WHOLE_REPLY_CHARS = 1024 * 1024

# At interval 0, yield to the event loop after this many chunks or this many
# characters sent without a pause, whichever comes first, so a fast stream cannot
# starve the other streams on the same loop. 64 KiB is aiohttp's write buffer
# high-water mark (``StreamWriter`` drains past it): about one socket buffer of
# work between two yields, even with 64 KiB chunks.
_YIELD_EVERY = 32
_YIELD_CHARS = 64 * 1024

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
    a CRC of that message, so it is the same in every process and run. It is
    exactly what a stream of ``max_tokens`` x ``token_size`` = ``length``
    characters concatenates to; unlike the stream, it builds the whole string.
    """
    echo, period = _parts(messages, length)
    if length <= len(echo):
        return echo[:length]
    repeats, rest = divmod(length - len(echo), len(period))
    return echo + period * repeats + period[:rest]


def _parts(messages: Sequence[Message], length: int) -> tuple[str, str]:
    """The echo and the period of a reply ``length`` characters long.

    A reply that ends within its first period gets only the words it needs (the
    same words, so it is a prefix of any longer reply): a short reply to a new
    message costs a few words, not 16 KiB of them.
    """
    last = next((m.text for m in reversed(messages) if m.role == "user"), "")
    echo = f"You said: {last}. "
    wanted = min(max(length - len(echo), 0), PERIOD_CHARS)
    return echo, _period(zlib.crc32(last.encode()), wanted)


# A load test asks for the same reply thousands of times and building a period
# is a Python loop per word, so recent ones are kept: at most 64 x 16 KiB. The
# key is the CRC, not the message, so a long message is not kept alive by it.
@functools.lru_cache(maxsize=64)
def _period(seed: int, length: int) -> str:
    """The shortest run of whole words from ``seed`` that reaches ``length`` characters."""
    parts: list[str] = []
    size = 0
    while size < length:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        word = _WORDS[seed % len(_WORDS)] + " "
        parts.append(word)
        size += len(word)
    return "".join(parts)


def _wrap(head: str, period: str, size: int) -> tuple[str, int]:
    """``head`` continued by ``period`` from its start, to ``size`` characters.

    Returns the chunk and where in ``period`` the next one starts. A chunk larger
    than the period repeats it whole: still one copy per character.
    """
    repeats, rest = divmod(size - len(head), len(period))
    return head + period * repeats + period[:rest], rest


def _count_tokens(messages: Sequence[Message]) -> int:
    # A rough, deterministic stand-in for a tokenizer: four characters a token.
    return sum(len(m.text) // 4 + 1 for m in messages)


def _shape(options: Options) -> tuple[int, int, int]:
    """Chunks, characters per chunk and milliseconds between chunks that ``options`` ask for."""
    count = options.max_tokens if options.max_tokens is not None else DEFAULT_CHUNKS
    size = options.token_size or DEFAULT_TOKEN_SIZE
    interval = DEFAULT_INTERVAL_MS if options.interval_ms is None else options.interval_ms
    return count, size, interval


def _usage(messages: Sequence[Message], count: int) -> Usage:
    prompt = _count_tokens(messages)
    return Usage(prompt_tokens=prompt, completion_tokens=count, total_tokens=prompt + count)


class MockProvider(Provider):
    """Replies derived from the last user message, at a cadence the request sets."""

    name = "mock"
    # Deterministic text whatever is asked: no option can change its answer.
    ignores = frozenset(Options.__struct_fields__)

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
        count, size, interval = _shape(options)
        echo, period = _parts(messages, count * size)
        usage = _usage(messages, count)
        chunks = self._chunks(echo, period, count, size, interval / 1000, model, usage)
        return ChunkStream(chunks, model=model)

    async def send(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
        **extra: Any,
    ) -> Reply:
        """The whole reply: the text the stream would give, built in one piece.

        It is built with :func:`mock_text` rather than by joining the stream's
        chunks, which would hold every chunk's string as well (tens of bytes
        each); it still takes as long as the stream would, ``interval_ms``
        between chunks.

        Raises :class:`~engine.errors.InvalidFields` when ``max_tokens`` x
        ``token_size`` exceeds :data:`MAX_WHOLE_REPLY_CHARS`.
        """
        options = to_options(options, extra)
        model = model or self.default_model
        count, size, interval = _shape(options)
        if count * size > MAX_WHOLE_REPLY_CHARS:
            raise InvalidFields(
                f"`max_tokens` x `token_size` ({count} x {size} = {count * size} characters) "
                f"exceeds the mock's bound for a whole reply, {MAX_WHOLE_REPLY_CHARS} "
                "characters: lower them, or stream the reply (streams have no such bound)"
            )
        if interval and count > 1:
            await asyncio.sleep((count - 1) * interval / 1000)
        return Reply(
            role="assistant",
            content=mock_text(messages, count * size),
            model=model,
            finish_reason="stop",
            usage=_usage(messages, count),
        )

    @staticmethod
    async def _chunks(
        echo: str,
        period: str,
        count: int,
        size: int,
        interval: float,
        model: str,
        usage: Usage,
    ) -> AsyncGenerator[Chunk, None]:
        loop = asyncio.get_running_loop()
        every = max(1, min(_YIELD_EVERY, _YIELD_CHARS // size))
        final = count - 1
        # The string the next chunk starts in: the echo, then the period forever.
        text, pos, end_of_text = echo, 0, len(echo)
        for n in range(count):
            if n:
                if interval:
                    # asyncio.sleep(interval), minus its coroutine: thousands of
                    # paced mock streams sleep once per chunk (benchmarks).
                    wake: asyncio.Future[None] = loop.create_future()
                    timer = loop.call_later(interval, _wake, wake)
                    try:
                        await wake
                    finally:
                        timer.cancel()
                elif n % every == 0:
                    await asyncio.sleep(0)
            end = pos + size
            if end <= end_of_text:
                content = text[pos:end]
                pos = end
            else:
                content, pos = _wrap(text[pos:], period, size)
                text, end_of_text = period, len(period)
            if n == final:
                yield Chunk(
                    role="assistant",
                    content=content,
                    model=model,
                    finish_reason="stop",
                    usage=usage,
                )
            else:
                yield Chunk(role="assistant", content=content, model=model, finish_reason=None)

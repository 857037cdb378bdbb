"""What every provider is: open an upstream reply, read it as ``Chunk``s.

A provider works in two steps because the HTTP layer needs them apart:
:meth:`Provider.open` returns once the upstream has *accepted* the request
(status 200), so any failure it reports by status can still become a JSON error
with a real HTTP status; the :class:`ChunkStream` it returns is then read chunk
by chunk after the response headers went out. :meth:`Provider.stream` and
:meth:`Provider.send` are the one-call forms for library users.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar

import msgspec

from ..errors import InvalidFields, UnsupportedField
from ..wire import ENGINE_OPTIONS, Chunk, Message, Options, Reply, Usage

__all__ = ["ChunkStream", "Provider", "collect", "to_options"]


def to_options(options: Options | None, extra: dict[str, Any]) -> Options:
    """Merge keyword options into an :class:`Options`, validated the same way as HTTP input."""
    if not extra:
        return options or Options()
    merged = msgspec.structs.asdict(options) if options else {}
    merged.update(extra)
    try:
        return msgspec.convert(
            {k: v for k, v in merged.items() if v is not None}, Options, strict=False
        )
    except msgspec.ValidationError as exc:
        raise InvalidFields(f"invalid option: {exc}") from exc


class ChunkStream(AsyncIterator[Chunk]):
    """An accepted upstream reply, read one :class:`Chunk` at a time.

    Always close it (``aclose()`` or ``async with``): that releases the upstream
    connection, and closing early is how a client that left cancels the upstream
    request.
    """

    __slots__ = (
        "_chunks",
        "_on_close",
        "_closed",
        "model",
        "prompt_estimate",
        "provider",
        "started",
    )

    def __init__(
        self,
        chunks: AsyncGenerator[Chunk, None],
        *,
        model: str,
        on_close: Callable[[], Awaitable[None] | None] | None = None,
        provider: str = "",
    ) -> None:
        self._chunks = chunks
        self._on_close = on_close
        self._closed = False
        #: The model that answers, as far as is known before the first chunk.
        self.model = model
        #: The name of the provider that answers (a fallback's: its target's), for metrics.
        self.provider = provider
        #: When its request was sent (``time.monotonic()``; set by ``open_upstream``, 0: unknown).
        self.started = 0.0
        #: About how many tokens the request was (engine.wire.estimate_tokens), set
        #: by whoever opened it: the prompt side of an estimated usage.
        self.prompt_estimate = 0

    def __aiter__(self) -> ChunkStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        # The generator's own awaitable, not a coroutine wrapping it: one frame
        # less on every chunk's way up (and the relay's eager step sees it).
        return self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the upstream connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._chunks.aclose()
        finally:
            if self._on_close is not None:
                result = self._on_close()
                if result is not None:
                    await result

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Provider(abc.ABC):
    """A source of replies. Subclasses implement :meth:`open`; the rest follows.

    Raises (from ``open``, ``stream``, ``send``): subclasses of
    :class:`~engine.errors.UpstreamError` for upstream failures,
    :class:`~engine.errors.ProviderNotConfigured` when a key is missing,
    :class:`~engine.errors.InvalidFields` for options that fail validation.
    """

    #: The name requests use to pick this provider ("openai", "mock", ...).
    name: ClassVar[str]
    #: The :class:`~engine.wire.Options` this provider carries upstream in its
    #: own form. Any other option a request sets is refused by name
    #: (:meth:`check_options`), bar the engine's own (``ENGINE_OPTIONS``) and
    #: those listed in :attr:`ignores`.
    carries: ClassVar[frozenset[str]] = frozenset()
    #: Options that cannot change the answer, accepted and not sent (``user``
    #: where a provider has no such field).
    ignores: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, model: str) -> None:
        #: The model used when a request names none.
        self.default_model = model

    def output_limit(self, options: Options) -> int | None:
        """The most output tokens a reply to ``options`` can have, or None if unbounded.

        A client key with a token limit reserves it when the request is admitted;
        unbounded, the request gets the provider's ``default_max_tokens``.
        """
        return options.max_tokens

    def check_options(self, options: Options) -> None:
        """Raise :class:`~engine.errors.UnsupportedField` for the first option set
        that this provider neither carries nor may ignore."""
        for name in options.set_fields():
            if name in ENGINE_OPTIONS or name in self.carries or name in self.ignores:
                continue
            raise UnsupportedField(
                f"`{name}` is not supported by the {self.name} provider: it has no "
                "equivalent, so the answer would not be what was asked for. Leave it out, "
                "or choose another provider",
                field=name,
            )

    @abc.abstractmethod
    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        """Send the request; return once the upstream accepted it."""

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
        **extra: Any,
    ) -> AsyncIterator[Chunk]:
        """Yield the reply chunk by chunk (the seed's ``stream()``)."""
        chunks = await self.open(messages, model=model, options=to_options(options, extra))
        async with chunks:
            async for chunk in chunks:
                yield chunk

    async def send(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
        **extra: Any,
    ) -> Reply:
        """Return the whole reply at once (the seed's ``send()``).

        The default reads the stream to its end, so a provider's ``send`` gives
        exactly the text its ``stream`` gives; a provider may override it with a
        non-streaming upstream call.
        """
        chunks = await self.open(messages, model=model, options=to_options(options, extra))
        return await collect(chunks)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the provider holds (the shared HTTP session is not its to close)."""


async def collect(chunks: ChunkStream) -> Reply:
    """Read a :class:`ChunkStream` to its end and join it into one :class:`Reply`."""
    parts: list[str] = []
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[dict[str, Any]] = []
    model = chunks.model
    async with chunks:
        async for chunk in chunks:
            parts.append(chunk.content)
            model = chunk.model or model
            if chunk.finish_reason is not None:
                finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.tool_calls:
                tool_calls.extend(chunk.tool_calls)
    return Reply(
        role="assistant",
        content="".join(parts),
        model=model,
        finish_reason=finish_reason,
        usage=usage,
        tool_calls=tool_calls or None,
    )

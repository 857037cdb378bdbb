"""A model name that tries several ``provider/model`` targets in turn: :class:`Fallback`.

Configured as ``[fallbacks]`` in the TOML file::

    [fallbacks]
    smart = ["anthropic/claude-sonnet-4-5", "openai/gpt-4o", "gemini/gemini-2.5-flash"]

A request for ``smart`` (``model: "smart"`` on the OpenAI endpoint, ``provider:
"smart"`` on the native one) goes to the first target; when that one fails
*before its first byte* (a 429, a 5xx, a timeout, a connection that could not
be made), the next one is tried, and so on. ``open()`` returns only once an
upstream accepted the request, so nothing was sent to the client yet: a
failure after that is reported, never replayed on another target (the client
would see the text twice). Any other error (a refused field, a bad key, a
400) is the request's or the operator's to fix and is raised at once: another
provider would not make it right.

The reply's ``model`` is the target that answered, ``provider/model``, so a
client sees which one it got (the OpenAI endpoint also sends it as the
``X-Model-Target`` header when it is known before the headers go out).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..wire import Message, Options, Reply
from .base import ChunkStream, Provider, to_options

__all__ = ["RETRYABLE", "Fallback", "retryable"]

log = logging.getLogger("engine.providers")

#: Failures before the first byte after which the next target is tried.
RETRYABLE = (UpstreamRateLimited, UpstreamUnavailable, UpstreamTimeout, UpstreamConnectError)

T = TypeVar("T")


def retryable(exc: UpstreamError) -> bool:
    """True for a failure another target may not have: rate limits, 5xx, timeouts,
    connections that could not be made. Not for 4xx (the request's) or a bad key
    (the operator's)."""
    if isinstance(exc, RETRYABLE):
        return True
    status = getattr(exc, "upstream_status", None)
    return type(exc) is UpstreamError and status is not None and status >= 500


class Fallback(Provider):
    """Several ``(provider, model, "provider/model")`` targets behind one name."""

    name = "fallback"

    def __init__(self, name: str, targets: Sequence[tuple[Provider, str | None, str]]) -> None:
        if not targets:
            raise ValueError("a fallback needs at least one target")
        super().__init__(model=targets[0][2])
        self.alias = name
        self.targets = list(targets)

    async def _first(
        self, attempt: Callable[[Provider, str | None], Awaitable[T]]
    ) -> tuple[T, str]:
        last: UpstreamError | None = None
        for provider, model, shown in self.targets:
            try:
                return await attempt(provider, model), shown
            except UpstreamError as exc:
                if not retryable(exc):
                    raise
                log.warning(
                    "%s: %s failed before its first byte (%s); next target",
                    self.alias,
                    shown,
                    exc.type,
                )
                last = exc
        assert last is not None
        raise last

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        chunks, shown = await self._first(
            lambda provider, target: provider.open(messages, model=target, options=options)
        )
        chunks.model = _answered(shown, chunks.model)
        return chunks

    async def send(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
        **extra: object,
    ) -> Reply:
        merged = to_options(options, dict(extra))
        reply, shown = await self._first(
            lambda provider, target: provider.send(messages, model=target, options=merged)
        )
        reply.model = _answered(shown, reply.model)
        return reply


def _answered(target: str, model: str) -> str:
    """``provider/model`` of the answer: the target's provider, the model it named."""
    return f"{target.partition('/')[0]}/{model}"

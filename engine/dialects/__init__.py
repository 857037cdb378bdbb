"""The wire formats the gateway speaks, one module each, free of aiohttp.

A dialect translates its requests onto :mod:`engine.wire`, frames a stream's
start, chunks, finish and error, and renders an error before the headers as
an :class:`ErrorAnswer` (status, JSON body, headers), which the error
middleware turns into the response: errors are mapped once, in the shape the
route's clients parse.

* :mod:`.native`: ``/v1/chat/stream`` and the other native routes;
* :mod:`.openai_chat`: OpenAI Chat Completions;
* :mod:`.anthropic_messages`: Anthropic's Messages API (``/v1/messages``);
* :mod:`.openai_responses`: OpenAI's Responses API (``/v1/responses``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["ErrorAnswer", "retry_after_seconds", "retry_headers"]


class ErrorAnswer(NamedTuple):
    """An error response before the headers: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None


def retry_after_seconds(retry_after: float) -> str:
    """``Retry-After`` is whole seconds (RFC 9110 10.2.3): rounded up, never 0."""
    return str(max(1, math.ceil(retry_after)))


def retry_headers(retry_after: float | None) -> dict[str, str] | None:
    """``Retry-After`` and ``retry-after-ms``: the OpenAI and Anthropic SDKs read the
    second first, which keeps the precision (a rate limit's reset is not whole seconds)."""
    if retry_after is None:
        return None
    return {
        "Retry-After": retry_after_seconds(retry_after),
        "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
    }

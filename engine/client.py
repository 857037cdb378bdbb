"""Reading an event stream over aiohttp: the gateway's own client side.

The providers read their upstreams this way, the tests read the gateway this
way, and so can a user's Python program::

    async with session.post(url, json=body) as response:
        async for event in iter_events(response):
            print(event.event, event.data)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from .sse import Decoder, ServerSentEvent

__all__ = ["iter_events"]


async def iter_events(
    response: aiohttp.ClientResponse, *, decoder: Decoder | None = None
) -> AsyncIterator[ServerSentEvent]:
    """Yield each event of ``response`` as soon as its closing blank line arrives.

    Reads whatever bytes the socket has (``iter_any``), so nothing waits for a
    fixed read size or a full line buffer.
    """
    decoder = decoder or Decoder()
    async for data in response.content.iter_any():
        for event in decoder.feed(data):
            yield event
    for event in decoder.flush():
        yield event

"""Streams: the response (:class:`EventStream`), the supervisor behind all of them,
the write policy (:mod:`.coalesce`) and the relay of a provider's reply (:mod:`.relay`)."""

from __future__ import annotations

from .response import DEFAULT_SEND_TIMEOUT, SSE_HEADERS, EventStream
from .supervisor import DEFAULT_HEARTBEAT, Opening, StreamSupervisor

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_SEND_TIMEOUT",
    "SSE_HEADERS",
    "EventStream",
    "Opening",
    "StreamSupervisor",
]

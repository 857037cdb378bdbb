"""The native dialect: ``/v1/chat/stream``, ``/v1/chat`` and the memory and health routes.

A stream is ``retry:``, then ``event: start`` (id ``<stream_id>:0``), one
unnamed event per chunk (ids ``<stream_id>:1..N``, the chunk as JSON), and
``event: done`` (id ``<stream_id>:N+1``) with the finish reason and usage; a
failure after the headers is ``event: error`` with the fields of the error
body, ``{"error": true, "message", "code", "type"}`` (EventStream's own).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from ..errors import EngineError, InvalidFields, ShuttingDown
from ..sse import encode_json, encode_json_numbered, encode_retry, numbered_id_prefix
from ..wire import (
    ChatRequest,
    Chunk,
    DoneEvent,
    ErrorEvent,
    Message,
    Options,
    SessionRef,
    StartEvent,
    Usage,
)
from . import ErrorAnswer, retry_after_seconds

__all__ = [
    "QUERY_FIELDS",
    "SHUTDOWN_RETRY_MS",
    "NativeFraming",
    "chat_request_from_query",
    "error_answer",
]

#: The reconnection delay a stream ended by a shutdown advises (ms): a restart's length.
SHUTDOWN_RETRY_MS = 5000

#: Query parameters of ``GET /v1/chat/stream`` that are not generation options.
QUERY_FIELDS = frozenset({"q", "provider", "model", "parent", "parent_id", "token"})

_encoder = msgspec.json.Encoder()


def error_answer(exc: EngineError) -> ErrorAnswer:
    """The JSON error body ``{"error": true, "message", "code", "type"}`` with the status."""
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": retry_after_seconds(exc.retry_after)}
    body = _encoder.encode(ErrorEvent(message=exc.message, code=exc.status, type=exc.type))
    return ErrorAnswer(exc.status, body, headers)


def chat_request_from_query(query: Mapping[str, str]) -> ChatRequest:
    """A ChatRequest from ``GET /v1/chat/stream``'s query string, typed and validated.

    Raises :class:`InvalidFields` for a missing ``q``, a bad option or session.
    """
    text = query.get("q")
    if not text:
        raise InvalidFields("query parameter `q` (the user's message) is required")
    raw_options = {k: v for k, v in query.items() if k not in QUERY_FIELDS}
    try:
        # strict=False lets "40" become 40: query values are always strings.
        options = msgspec.convert(raw_options, Options, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidFields(f"invalid option: {exc}") from exc
    session = None
    if "parent" in query or "parent_id" in query:
        try:
            session = msgspec.convert(
                {"parent": query.get("parent", ""), "id": query.get("parent_id", "")}, SessionRef
            )
        except msgspec.ValidationError as exc:
            raise InvalidFields(f"invalid session: {exc}") from exc
    return ChatRequest(
        messages=[Message(role="user", content=text)],
        provider=query.get("provider") or None,
        model=query.get("model") or None,
        options=options,
        session=session,
    )


class NativeFraming:
    """The frames of one native stream (engine.streams.relay.Framing).

    A slotted object rather than closures: an idle stream holds it for as
    long as it is open (benchmarks/NOTES.md, Change 9).
    """

    __slots__ = ("id_prefix", "model", "provider", "stream_id")

    def __init__(self, stream_id: str, provider: str, model: str) -> None:
        self.stream_id = stream_id
        self.provider = provider
        self.model = model
        self.id_prefix = numbered_id_prefix(stream_id)  # chunk n's id is f"{sid}:{n}"

    def start(self) -> bytes:
        start = StartEvent(stream_id=self.stream_id, provider=self.provider, model=self.model)
        return encode_json(start, event="start", id=f"{self.stream_id}:0")

    def chunk(self, chunk: Chunk, n: int) -> bytes:
        return encode_json_numbered(chunk, self.id_prefix, n)

    def finish(self, finish_reason: str | None, usage: Usage | None, n: int) -> bytes:
        done = DoneEvent(finish_reason=finish_reason, usage=usage)
        return encode_json(done, event="done", id=f"{self.stream_id}:{n + 1}")

    def error(self, exc: EngineError, n: int) -> bytes:
        """The ``error`` event that ends a stream after ``n`` chunks (id ``<stream_id>:<n+1>``).

        A shutdown's carries ``retry:`` advice: an EventSource reconnects after it,
        to a server that is back (or to another worker) by then.
        """
        body = ErrorEvent(message=exc.message, code=exc.status, type=exc.type)
        frame = encode_json(body, event="error", id=f"{self.stream_id}:{n + 1}")
        if isinstance(exc, ShuttingDown):
            frame = encode_retry(SHUTDOWN_RETRY_MS) + frame
        return frame

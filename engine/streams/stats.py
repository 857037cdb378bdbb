"""What a relayed stream reports when it ends: :class:`StreamEnd`, and who hears it.

The relay counts per stream in plain locals and attributes (the chunks, when
the first one came, a few sampled write delays; the stream's writer counts the
bytes) and hands one :class:`StreamEnd` to the engine's
:class:`StreamObserver` (engine.telemetry) in its ``finally``: the metrics are
folded in and the log line written there, once per stream. Nothing is looked
up, labelled or observed per chunk (benchmarks/NOTES.md, issue 15).

The gateway's own delay per chunk (from the chunk leaving the provider's parser
to its bytes reaching the socket) is timed for one chunk in
:data:`SAMPLE_EVERY`, at most :data:`MAX_SAMPLES` per stream: two clock reads
and an append for a sampled chunk, one integer test for the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import ShuttingDown, UpstreamError

if TYPE_CHECKING:
    from .response import EventStream

__all__ = ["MAX_SAMPLES", "REASONS", "SAMPLE_EVERY", "StreamEnd", "StreamObserver", "end_reason"]

#: Why a stream ended, as ``sse_engine_streams_ended_total`` counts it.
REASONS = (
    "done",  # the reply was complete
    "stopped",  # POST /v1/streams/{id}/stop
    "disconnect",  # its client left (and no resumed reader followed it)
    "upstream_error",  # the provider failed mid-stream
    "slow_client",  # its client read nothing for send_timeout: dropped
    "shutdown",  # the server stopped before it ended
    "interrupted",  # a detached generation nobody came back for, or its last reader left
    "error",  # anything else (a store that went down, an internal error)
)

#: One chunk in this many has the gateway's own delay timed (chunks 1, 17, 33 ...) ...
SAMPLE_EVERY = 16
#: ... at most this many per stream (the first 512 chunks: most replies are shorter).
MAX_SAMPLES = 32


class StreamEnd:
    """One relayed stream, as it ended (times are ``time.monotonic()`` seconds)."""

    __slots__ = (
        "alias",
        "bytes",
        "chunks",
        "content",
        "delays",
        "ended",
        "estimated",
        "first_chunk",
        "input_tokens",
        "model",
        "output_tokens",
        "provider",
        "reason",
        "started",
        "status",
        "stream_id",
    )

    def __init__(
        self,
        *,
        stream_id: str,
        provider: str,
        model: str,
        reason: str,
        status: int | None,
        started: float,
        first_chunk: float,
        ended: float,
        chunks: int,
        input_tokens: int,
        output_tokens: int,
        estimated: bool,
        bytes: int,
        delays: list[float],
        alias: str | None = None,
        content: str | None = None,
    ) -> None:
        self.stream_id = stream_id
        #: The provider that answered, and the model asked of it.
        self.provider = provider
        self.model = model
        #: One of :data:`REASONS`.
        self.reason = reason
        #: The response's HTTP status (None: its headers never went out).
        self.status = status
        #: When the upstream request was sent, its first chunk came (0: none), the stream ended.
        self.started = started
        self.first_chunk = first_chunk
        self.ended = ended
        self.chunks = chunks
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        #: True when the provider reported no usage (stopped, cut): the tokens are estimates.
        self.estimated = estimated
        #: Bytes written on the response (headers and HTTP framing included).
        self.bytes = bytes
        #: Sampled gateway delays, seconds (see the module docstring).
        self.delays = delays
        #: The client key's alias (None: no keys, or the admin).
        self.alias = alias
        #: The reply's text, only when the operator asked for it (``--log-content``).
        self.content = content

    @property
    def ttft(self) -> float | None:
        """Seconds from the upstream request to the first chunk (None: no chunk came)."""
        return self.first_chunk - self.started if self.first_chunk else None

    @property
    def duration(self) -> float:
        return self.ended - self.started


class StreamObserver(Protocol):
    """Who hears of every stream's end (engine.telemetry.Telemetry)."""

    #: Keep the reply's text for :attr:`StreamEnd.content`.
    log_content: bool

    def stream_ended(self, end: StreamEnd) -> None: ...


def end_reason(how: str, failure: BaseException | None, stream: EventStream) -> str:
    """Which of :data:`REASONS` a stream ended for.

    ``how`` is the relay's (``done``, ``stopped``, ``failed``, ``interrupted``),
    ``failure`` the engine error it ended with, if any.
    """
    if how in ("done", "stopped"):
        return how
    if isinstance(failure, ShuttingDown) or stream.interrupted == "shutdown":
        return "shutdown"
    if stream.dropped_slow:
        return "slow_client"
    if how == "failed":
        return "upstream_error" if isinstance(failure, UpstreamError) else "error"
    if stream.detached:
        return "interrupted"  # it outlived its client, then nobody followed it
    return "disconnect" if stream.end_reason == "client_disconnected" else "interrupted"

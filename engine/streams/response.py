"""The response side of a stream: :class:`EventStream`.

Flow, for one stream::

    handler task ──send()──▶ EventStream ──write()──▶ aiohttp StreamWriter ──▶ socket
         ▲                        │
         │ cancel                 │ registered with
         │                        ▼
    StreamSupervisor (engine.streams.supervisor): client gone -> cancel;
    silent -> ``: keepalive``; server stopping -> ``event: error`` (shutdown)

Back-pressure: every write goes through the transport; when the transport's
buffer is above its high-water mark (a slow reader), the write waits for it to
drain, at most ``send_timeout`` seconds. A reader that stays stuck longer is
treated as gone: the connection is aborted and the producer stops, instead of
the gateway buffering without bound (USERS-ASK 8).

The stream knows no dialect: its ``done`` and ``error`` events are the
library's own (``engine.sse(request)``), and another wire format passes its
``end_frame`` and ``error_frame`` (engine.dialects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from ..errors import ClientDisconnectedError, EngineError, ShuttingDown
from ..sse import encode, encode_comment, encode_json, encode_retry
from .stats import MAX_SAMPLES

if TYPE_CHECKING:
    from .log import StreamLog
    from .stats import StreamObserver
    from .supervisor import StreamSupervisor

__all__ = ["DEFAULT_SEND_TIMEOUT", "EXTRA_HEADERS", "SSE_HEADERS", "EventStream"]

log = logging.getLogger("engine.stream")

#: Seconds a write may wait for a slow reader (sse-starlette has no such limit: #89).
DEFAULT_SEND_TIMEOUT = 30.0

#: Headers a response carries whatever its route answers (CORS, an admitted
#: request's rate-limit headers): the middleware collects them before the route
#: runs, :meth:`EventStream.prepare` sends them with the stream's.
EXTRA_HEADERS = web.RequestKey("extra_headers", dict)

SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told not to.
    "X-Accel-Buffering": "no",
}


class _Nowhere:
    """The transport of a detached stream: every write succeeds and goes nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass


_DETACHED = cast(asyncio.Transport, _Nowhere())

_KEEPALIVE = encode_comment("keepalive")
_DONE = {"type": "done"}


def _stop_keepalive_timer(request: web.BaseRequest) -> None:
    """Drop the idle-connection timer aiohttp armed when the connection opened.

    It closes connections that never send a request; once a stream has begun
    it can only find the handler busy and do nothing, yet it holds a timer
    handle for the first ``keepalive_timeout`` (75 s) of every stream: about
    600 bytes of each idle stream (benchmarks/NOTES.md, Change 9). aiohttp
    re-arms it itself after the response, for the next request.
    """
    keep_alive = getattr(request.protocol, "keep_alive", None)
    if keep_alive is not None:
        keep_alive(True)  # keeps keep-alive on (it is on while a request runs); cancels the timer


def _limit_unacked(transport: asyncio.BaseTransport, seconds: float) -> None:
    """Let the kernel drop a connection whose data stays unacknowledged for ``seconds``.

    A client that vanished without a FIN (a laptop lid closed, a NAT entry
    expired) never makes a write fail on its own: heartbeats land in the socket
    buffer and are retransmitted for a quarter of an hour. ``TCP_USER_TIMEOUT``
    (Linux, RFC 5482) closes it after ``send_timeout`` instead, and the
    supervisor then sees the transport closed (USERS-ASK 8).
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))


class EventStream:
    """One ``text/event-stream`` response (the seed's ``Engine::sse()``).

    Use it as ``async with engine.sse(request) as stream:``; inside, ``send()``
    events. On the way out an exception becomes an ``error`` event, a client
    that left ends the stream quietly, and the response is always finished.

    ``send()`` and friends raise :class:`~engine.errors.ClientDisconnectedError`
    when the client is gone or stopped reading for ``send_timeout`` seconds.
    """

    __slots__ = (
        "__weakref__",
        "_busy",
        "_closed",
        "_queued",
        "_chunked",
        "_delays",
        "_end_frame",
        "_ended",
        "_error_frame",
        "_headers",
        "_high_water",
        "_interrupted",
        "_detached",
        "_last_write",
        "_log",
        "_on_detach",
        "_loop",
        "_owner",
        "_probe",
        "_request",
        "_response",
        "_retry_ms",
        "_scrub",
        "_slow",
        "_supervisor",
        "_transport",
        "_writer",
        "send_timeout",
    )

    def __init__(
        self,
        request: web.BaseRequest,
        *,
        supervisor: StreamSupervisor | None = None,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        retry_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
        end_frame: bytes | None = None,
        error_frame: Callable[[EngineError], bytes] | None = None,
        scrub: Callable[[EngineError], EngineError] | None = None,
    ) -> None:
        self._request = request
        self._supervisor = supervisor
        self.send_timeout = send_timeout
        self._retry_ms = retry_ms
        self._headers = headers
        # Another dialect's framing (the OpenAI endpoint's ``data: [DONE]`` and
        # ``data: {"error": ...}``) instead of the ``done`` and ``error`` events.
        self._end_frame = end_frame
        self._error_frame = error_frame
        # Redacts an error before it leaves as an event (Engine.scrub: provider keys).
        self._scrub = scrub
        self._response: web.StreamResponse | None = None
        self._writer: StreamWriter | None = None
        self._transport: asyncio.Transport | None = None
        self._high_water = 0
        self._chunked = False  # set once our own chunk framing may go straight to the socket
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: weakref.ref[asyncio.Task[Any]] | None = None
        self._busy = False
        self._queued: list[bytes] = []  # frames for the next flush()
        self._log: StreamLog | None = None  # where written frames also go (resume)
        self._on_detach: Callable[[], None] | None = None  # set: a lost client detaches
        self._detached = False
        self._closed = False
        self._ended = False
        self._interrupted: str | None = None  # why the supervisor cancelled the owner
        self._last_write = 0.0
        # Metrics (engine.streams.stats): a sampled chunk's read time, until its write;
        # the delays timed so far; whether the client was dropped for reading nothing.
        self._probe = 0.0
        self._delays: list[float] | None = None
        self._slow = False

    # -- lifecycle -------------------------------------------------------------

    @property
    def prepared(self) -> bool:
        """True once the response headers went out."""
        return self._response is not None

    @property
    def closed(self) -> bool:
        """True once the stream ended, failed, or its client left."""
        return self._closed

    @property
    def response(self) -> web.StreamResponse | None:
        return self._response

    @property
    def end_reason(self) -> str:
        """Why the stream stopped early: ``client_disconnected``, ``shutdown`` or ``error``."""
        transport = self._request.transport
        if (
            self._interrupted == "disconnect"
            or self._detached
            or transport is None
            or transport.is_closing()
        ):
            return "client_disconnected"
        if self._interrupted == "shutdown":
            return "shutdown"
        return "error"

    async def prepare(self, *, owner: asyncio.Task[Any] | None = None) -> EventStream:
        """Send the response headers (and ``retry:``) and start heartbeats. Idempotent.

        ``owner`` is the task to cancel when the client leaves (default: the
        current one); a handler that sends the headers from a helper task
        while it waits for the upstream passes itself.
        """
        if self._response is not None:
            return self
        if self._supervisor is not None and self._supervisor.stopping:
            raise ShuttingDown("the server is shutting down")
        response = web.StreamResponse(headers=SSE_HEADERS)
        if self._headers:
            response.headers.update(self._headers)
        extra = self._request.get(EXTRA_HEADERS)
        if extra:
            response.headers.update(extra)
        writer = await response.prepare(self._request)
        transport = self._request.transport
        if not isinstance(writer, StreamWriter) or transport is None:
            self._closed = True
            raise ClientDisconnectedError("the client left before the stream started")
        self._response = response
        self._headers = None  # sent: an open stream need not hold them (NOTES.md, Change 12)
        self._writer = writer
        self._transport = transport
        _stop_keepalive_timer(self._request)
        self._high_water = transport.get_write_buffer_limits()[1]
        _limit_unacked(transport, self.send_timeout)
        self._loop = loop = asyncio.get_running_loop()
        self._last_write = loop.time()
        task = owner or asyncio.current_task()
        self._owner = weakref.ref(task) if task is not None else None
        if self._supervisor is not None:
            self._supervisor.register(self)
        if self._retry_ms is not None:
            await self._write(encode_retry(self._retry_ms))
        return self

    async def __aenter__(self) -> EventStream:
        return await self.prepare()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            if exc is None:
                await self.end()
                return False
            if isinstance(exc, asyncio.CancelledError) and self._interrupted is not None:
                task = asyncio.current_task()
                # Swallow only the cancellation we asked for; one from elsewhere
                # (the server cancelling the handler) must propagate.
                if task is not None and task.uncancel() == 0:
                    if self._interrupted == "shutdown":
                        await self._final_error(ShuttingDown("the server is shutting down"))
                    return True
                return False
            if isinstance(exc, ClientDisconnectedError | ConnectionResetError):
                log.debug("client left stream: %s", exc)
                return True
            if isinstance(exc, EngineError):
                await self._final_error(exc)
                return True
            if isinstance(exc, Exception):
                log.exception("stream failed", exc_info=exc)
                await self._final_error(EngineError("internal error"))
                return True
            return False
        finally:
            self._close()

    def scrub(self, exc: EngineError) -> EngineError:
        """``exc`` redacted for a client (provider keys), as the stream's own error event is."""
        return self._scrub(exc) if self._scrub is not None else exc

    @property
    def interrupted(self) -> str | None:
        """Why the supervisor cancelled the stream's task: ``disconnect``, ``shutdown`` or None."""
        return self._interrupted

    # -- metrics (engine.streams.stats) ------------------------------------------

    @property
    def observer(self) -> StreamObserver | None:
        """Who hears of the stream's end: the supervisor's (the engine's telemetry)."""
        return self._supervisor.observer if self._supervisor is not None else None

    @property
    def bytes_sent(self) -> int:
        """Bytes written on the response so far, headers and HTTP framing included."""
        return self._writer.output_size if self._writer is not None else 0

    @property
    def dropped_slow(self) -> bool:
        """True if the client was dropped for reading nothing for ``send_timeout``."""
        return self._slow

    def probe(self, since: float) -> None:
        """Time the next write from ``since`` (a sampled chunk's read, ``time.monotonic()``)."""
        delays = self._delays
        if delays is None:
            delays = self._delays = []
        if not self._probe and len(delays) < MAX_SAMPLES:
            self._probe = since

    def _probed(self) -> None:
        assert self._delays is not None
        self._delays.append(time.monotonic() - self._probe)
        self._probe = 0.0

    @property
    def delays(self) -> list[float]:
        """The sampled delays from a chunk's read to its write, seconds."""
        return self._delays or []

    async def _final_error(self, exc: EngineError) -> None:
        if self._scrub is not None:
            exc = self._scrub(exc)
        try:
            await self.flush()
            if self._error_frame is not None:
                await self._write(self._error_frame(exc))
            else:
                await self.send_error(exc.message, code=exc.status, type=exc.type)
        except ConnectionResetError:
            pass

    def _close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.unregister(self)
        self._closed = True
        if self._on_detach is not None and not self._detached:
            keep = getattr(self._request.protocol, "keep_handler", None)
            if keep is not None:
                keep(None)  # the connection's next request is cancellable again

    # -- writing ---------------------------------------------------------------

    async def _write(self, frame: bytes) -> None:
        if self._chunked:
            behind = self._put(frame)
        else:
            behind = await self._put_via_aiohttp(frame)
        if behind:
            await self._drain()

    def _open_transport(self) -> asyncio.Transport:
        if self._closed:
            raise ClientDisconnectedError("the stream is closed")
        transport = self._transport
        if transport is None:
            raise RuntimeError("EventStream.prepare() was not called")
        if transport.is_closing():
            if self._on_detach is not None:
                return self._detach()
            self._closed = True
            raise ClientDisconnectedError("the client closed the connection")
        return transport

    def _put(self, frame: bytes) -> bool:
        """Frame ``frame`` as an HTTP chunk and write it now; True if the reader is behind.

        Used once the response is known to be chunked and uncompressed and its
        headers are out (after the first write, see :meth:`_put_via_aiohttp`).
        aiohttp's ``write()`` is a coroutine that frames the same bytes in three
        pieces; at one chunk per upstream read (a steady token cadence) that
        was about a tenth of the gateway's CPU (benchmarks/NOTES.md, Change 7).
        """
        transport = self._open_transport()
        data = b"%x\r\n%b\r\n" % (len(frame), frame)
        assert self._writer is not None and self._loop is not None
        self._writer.output_size += len(data)  # counted as aiohttp counts its own writes
        transport.write(data)
        if self._probe:
            self._probed()
        self._last_write = self._loop.time()
        return transport.get_write_buffer_size() > self._high_water

    async def _put_via_aiohttp(self, frame: bytes) -> bool:
        """:meth:`_put` through aiohttp's writer: the first write, which carries the
        buffered response headers, and every write of a body that is not chunked
        (an HTTP/1.0 client) or is compressed."""
        transport = self._open_transport()
        writer = self._writer
        response = self._response
        assert writer is not None and response is not None and self._loop is not None
        try:
            # drain=False: aiohttp would otherwise wait for a drain on its own,
            # with no time limit; the caller's wait (_drain) is the bounded one.
            await writer.write(frame, drain=False)
            if self._probe:
                self._probed()
        except ConnectionResetError as exc:
            if self._on_detach is not None:
                self._detach()
                return False
            self._closed = True
            raise ClientDisconnectedError(str(exc) or "the client closed the connection") from exc
        # The writer, not the response, knows whether aiohttp chose chunked
        # encoding (it does for any HTTP/1.1 body of unknown length).
        self._chunked = writer.chunked and writer.length is None and not response.compression
        self._last_write = self._loop.time()
        return transport.get_write_buffer_size() > self._high_water

    async def _drain(self) -> None:
        """Wait for a slow reader, at most ``send_timeout``; a reader stuck longer is dropped."""
        writer = self._writer
        transport = self._transport
        assert writer is not None and transport is not None
        if self._supervisor is not None:
            self._supervisor.waits += 1
        self._busy = True  # no heartbeat in the middle of this
        try:
            async with asyncio.timeout(self.send_timeout):
                await writer.drain()
        except TimeoutError:
            transport.abort()
            if self._on_detach is not None:
                self._detach()
                return
            self._closed = True
            self._slow = True
            raise ClientDisconnectedError(
                f"the client read nothing for {self.send_timeout:g} s; connection dropped"
            ) from None
        except ConnectionResetError as exc:
            if self._on_detach is not None:
                self._detach()
                return
            self._closed = True
            raise ClientDisconnectedError(str(exc) or "the client closed the connection") from exc
        finally:
            self._busy = False

    async def send(self, data: Any, event: str | None = None, id: str | None = None) -> None:
        """Send one event. ``str`` data goes as text; anything else as JSON (Structs, dicts)."""
        if isinstance(data, str):
            await self._write(encode(data, event=event, id=id))
        else:
            await self._write(encode_json(data, event=event, id=id))

    def queue_frame(self, frame: bytes) -> None:
        """Add bytes framed by :mod:`engine.sse` to the next :meth:`flush` (no I/O).

        Frames that are ready together go out in one write; see :func:`next_ready`.
        """
        self._queued.append(frame)

    def queued_frames(self) -> list[bytes]:
        """The list :meth:`queue_frame` appends to, for a caller that appends itself
        (the relay's write policy, once per chunk: one call less)."""
        return self._queued

    @property
    def queued(self) -> int:
        """How many queued frames have not reached the socket yet."""
        return len(self._queued)

    def detachable(self, on_detach: Callable[[], None]) -> None:
        """Let the stream outlive its client: a lost client detaches it instead of
        cancelling its producer (``options.detach``).

        From then on every write succeeds and goes nowhere but the log; heartbeats
        stop; ``on_detach()`` is called once, when it happens.

        A server that cancels the handler of a lost connection would cancel the
        producer with it; ours (:mod:`engine.server`) asks the stream first
        (``keep_handler``), and a stream that may detach says no.
        """
        self._on_detach = on_detach
        keep = getattr(self._request.protocol, "keep_handler", None)
        if keep is not None and not self._closed:
            keep(self.client_lost)

    @property
    def is_detachable(self) -> bool:
        """True once :meth:`detachable` was called."""
        return self._on_detach is not None

    def set_owner(self, task: asyncio.Task[Any]) -> None:
        """The task to cancel when the server stops (a generation in a task of its own)."""
        self._owner = weakref.ref(task)

    def client_lost(self) -> None:
        """The client's connection is gone (its handler was cancelled): detach, or stop
        the producer, now instead of at the supervisor's next tick."""
        self._interrupt("disconnect")

    @property
    def detached(self) -> bool:
        """True once the client was lost and the producer goes on into the log."""
        return self._detached

    def _detach(self) -> asyncio.Transport:
        if not self._detached:
            self._detached = True
            self._transport = _DETACHED
            self._chunked = True  # our own framing, to nowhere
            self._closed = False
            if self._supervisor is not None:
                self._supervisor.unregister(self)
            log.debug("client lost; the stream goes on detached")
            if self._on_detach is not None:
                self._on_detach()
        return _DETACHED

    def log_to(self, log: StreamLog) -> None:
        """Add every queued frame to ``log`` as it is written (a stream kept for resume).

        Per write, not per frame: a burst is one ``extend``. Frames sent with
        :meth:`send_frame` or :meth:`finish` are the caller's to log.
        """
        self._log = log

    async def flush(self) -> None:
        """Write every queued frame, in one write (waiting for a slow reader like ``send``)."""
        queued = self._queued
        if queued:
            data = queued[0] if len(queued) == 1 else b"".join(queued)
            await self._write(data)
            if self._log is not None:
                self._log.extend(queued, data)
            queued.clear()  # only once written: a failed write leaves them counted

    def flush_nowait(self) -> Awaitable[None] | None:
        """:meth:`flush` without a coroutine when it need not wait: None, or what to await.

        The relay loop writes each lone chunk of a steady cadence this way; a
        slow reader still bounds it (the returned wait is :meth:`flush`'s).
        """
        queued = self._queued
        if not queued:
            return None
        if not self._chunked:
            return self.flush()
        data = queued[0] if len(queued) == 1 else b"".join(queued)
        behind = self._put(data)
        if self._log is not None:
            self._log.extend(queued, data)
        if behind:
            return self._drain_queued()
        queued.clear()
        return None

    async def _drain_queued(self) -> None:
        await self._drain()
        self._queued.clear()  # as in flush(): counted as sent once the reader took them

    async def send_frame(self, frame: bytes) -> None:
        """Send bytes already framed by :mod:`engine.sse` (the hot path: no re-encoding)."""
        await self._write(frame)

    async def send_error(
        self, message: str, code: int = 500, *, type: str = "error", id: str | None = None
    ) -> None:
        """Send an ``error`` event: ``{"error": true, "message", "code", "type"}``."""
        payload = {"error": True, "message": message, "code": code, "type": type}
        await self._write(encode_json(payload, event="error", id=id))

    async def comment(self, text: str = "keepalive") -> None:
        """Send a comment line; clients ignore it, proxies see the connection is alive."""
        await self._write(encode_comment(text))

    async def retry(self, ms: int) -> None:
        """Tell the client how many milliseconds to wait before reconnecting."""
        await self._write(encode_retry(ms))

    async def end(self, data: Any = None, *, id: str | None = None) -> None:
        """Send the ``done`` event (once) and finish the response.

        ``data`` defaults to ``{"type": "done"}``. A stream made with
        ``end_frame`` sends those bytes instead when ``data`` is None.
        """
        if data is None and self._end_frame is not None:
            await self.finish(self._end_frame)
        else:
            await self.finish(encode_json(_DONE if data is None else data, event="done", id=id))

    async def finish(self, frame: bytes) -> None:
        """Send ``frame``, already framed (a dialect's last events), and finish the response.

        Once: a stream that ended, or whose client left, sends nothing more.
        """
        if self._ended or self._response is None:
            return
        self._ended = True
        try:
            if not self._closed:
                await self.flush()
                if frame:  # (an empty HTTP chunk would end the body early)
                    await self._write(frame)
                if not self._detached:
                    await self._response.write_eof()
        except ConnectionResetError:
            pass
        finally:
            self._close()

    # -- supervisor hooks --------------------------------------------------------

    def _check(self, due: float, supervisor: StreamSupervisor) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._request.transport is None:
            self._interrupt("disconnect")
        elif self._last_write <= due and not self._busy and not self._closed:
            supervisor.heartbeats += 1
            if not self._chunked:  # the first write, or a body aiohttp must frame
                self._last_write = due + supervisor.heartbeat  # no second heartbeat in flight
                supervisor._spawn(self._heartbeat())
                return
            # Written in place: ten thousand idle streams cost no task each per
            # heartbeat (nor a slot each in asyncio's task registry).
            try:
                behind = self._put(_KEEPALIVE)
            except ConnectionResetError:
                self._interrupt("disconnect")
                return
            if behind:  # a reader that stopped reading: bounded by send_timeout
                self._busy = True
                supervisor._spawn(self._drain_heartbeat())

    async def _drain_heartbeat(self) -> None:
        try:
            await self._drain()
        except ConnectionResetError:
            self._interrupt("disconnect")

    async def _heartbeat(self) -> None:
        try:
            await self._write(_KEEPALIVE)
        except ConnectionResetError:
            self._interrupt("disconnect")

    def _interrupt(self, reason: str) -> None:
        """Stop the task producing this stream (client gone, or server stopping)."""
        if reason == "disconnect" and self._on_detach is not None:
            self._detach()  # the producer goes on, into the log
            return
        if self._interrupted is not None or self._owner is None:
            return
        task = self._owner()
        if task is None or task.done():
            return
        self._interrupted = reason
        if reason == "disconnect":
            self._closed = True
            log.debug("client disconnected; stopping its producer")
        task.cancel()

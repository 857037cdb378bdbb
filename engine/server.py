"""The HTTP server under ``sse-engine serve``: aiohttp's, with two protocol-level guards.

aiohttp's ``RequestHandler`` has no deadline for reading a request head, and an
idle-connection timer (``keepalive_timeout``) of 3,630 s by default; it logs
every malformed request at ERROR with a traceback and answers it in plain
text that quotes the offending bytes. This module keeps aiohttp's parser and
request loop, passes ``keepalive_timeout`` (75 s by default, as nginx) and
changes two things:

* **Header timeout** (slowloris). A connection must send a complete request
  head within ``header_timeout`` seconds of opening, and within
  ``header_timeout`` of the first byte of each later head; otherwise it is
  closed without a response. nginx's ``client_header_timeout`` closes the same
  way and, like node's ``headersTimeout``, times a later head from its start.
  Between requests, an idle connection gets ``keepalive_timeout``: aiohttp's
  own timer, which runs from the end of the previous response and closes the
  connection unless a complete head has arrived by then. Both look only at
  a connection waiting for its next request, so a response that streams for
  minutes is never cut. The cost is a dict entry per request head, swept by
  one task per server (:class:`_HeadClock`), and nothing per chunk written.
* **Malformed requests** are answered in the engine's JSON error shape with a
  fixed message (never the request's bytes), ``Connection: close`` and
  ``Server: sse-engine``, and logged at INFO, one line per
  :data:`BAD_REQUEST_LOG_INTERVAL` at most, without a traceback.

The hooks, and the private aiohttp API they rely on (checked against aiohttp
3.14; each use is marked ``private aiohttp API`` below):

* ``AppRunner._make_server`` (overridden): lets aiohttp build its
  ``web.Server``, then builds :class:`_Server` from that server's
  ``request_handler``, ``request_factory``, ``handler_cancellation`` and its
  private ``_kwargs`` (the ``RequestHandler`` arguments ``Application``
  collected).
* ``RequestHandler._waiter``: the future the request loop (``start()``) awaits
  while it waits for the next request; pending means "idle". aiohttp's own
  ``_process_keepalive`` uses the same test.
* ``RequestHandler._messages``: the queue of parsed request heads; non-empty
  means a head has been received.
* ``RequestHandler.handle_error`` (public, overridden), which the request loop
  calls for a request the parser rejected, and ``connection_made``,
  ``data_received``, ``connection_lost`` (asyncio's protocol methods).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import http_exceptions, web

from .app import create_app
from .config import Config
from .wire import ErrorEvent

if TYPE_CHECKING:
    from .workers import WorkerSlot

__all__ = ["BACKLOG", "BAD_REQUEST_LOG_INTERVAL", "SERVER", "GatewayRunner", "start_server"]

log = logging.getLogger("engine.server")

#: Connections the kernel queues before we accept them. Linux caps it at
#: ``net.core.somaxconn``, 4096 by default since 5.4; uvicorn asks for 2048,
#: nginx for 511, aiohttp for 128.
BACKLOG = 4096

#: Seconds between two log lines about malformed requests; the ones in between
#: are counted and the count goes into the next line. Scanners send bursts of
#: them: aiohttp's one line and traceback per request made 594 KB of log from
#: 1,000 in 0.4 s. Like Linux's ``printk_ratelimit`` (5 s, burst 10) and
#: syslog-ng's ``throttle()``, but one line, since every line says the same.
BAD_REQUEST_LOG_INTERVAL = 1.0

#: The ``Server`` header of the responses written here: no version to fingerprint.
SERVER = "sse-engine"

_encoder = msgspec.json.Encoder()

# What a rejected request gets told, by parser error: fixed text, since the
# parser's own messages quote the input (a reflected-content vector, and noise).
# First match wins: BadHttpMethod subclasses BadStatusLine.
_PROTOCOL_ERRORS: tuple[tuple[type[http_exceptions.HttpProcessingError], str], ...] = (
    (http_exceptions.LineTooLong, "request line or header field too long"),
    (http_exceptions.BadHttpMethod, "invalid request method"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidURLError, "invalid request target"),
    (http_exceptions.InvalidHeader, "malformed header field"),
    (http_exceptions.PayloadEncodingError, "malformed message framing"),
)


def _describe(exc: http_exceptions.HttpProcessingError) -> str:
    for kind, message in _PROTOCOL_ERRORS:
        if isinstance(exc, kind):
            return message
    return "malformed HTTP request"


class _BadRequestLog:
    """Log malformed requests at most once per interval, counting the rest.

    One per server (not per connection): a flood arrives on many connections.
    The count of the last interval of a burst is reported with the next bad
    request, or never; a line per bad request is what this replaces.
    """

    __slots__ = ("_next", "_suppressed")

    def __init__(self) -> None:
        self._next = 0.0
        self._suppressed = 0

    def note(self, peer: str | None, status: int, what: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + BAD_REQUEST_LOG_INTERVAL
        suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            log.info(
                "malformed request from %s answered %d (%s); %d more since the last such line",
                peer,
                status,
                what,
                suppressed,
            )
        else:
            log.info("malformed request from %s answered %d (%s)", peer, status, what)


class _HeadClock:
    """The request heads being received on one server, and the sweep that bounds them.

    A connection waiting for the rest of a head is in :attr:`since` with the
    loop time its wait began; a task wakes every ``tick`` (at most a second, a
    quarter of the timeout) and closes those that waited ``header_timeout``.
    One dict entry per head instead of a timer: asyncio keeps timers in a heap
    of Python objects, and a timer armed and cancelled per request cost the
    request path more than the rest of this module (benchmarks/NOTES.md). A
    connection is closed between ``header_timeout`` and ``header_timeout +
    tick`` after its wait began.
    """

    __slots__ = ("_task", "header_timeout", "since", "tick")

    def __init__(self, header_timeout: float) -> None:
        self.header_timeout = header_timeout
        self.tick = min(1.0, header_timeout / 4)
        self.since: dict[_RequestHandler, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self, handler: _RequestHandler) -> None:
        loop = asyncio.get_running_loop()
        self.since[handler] = loop.time()
        if self._task is None:
            self._task = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Sleep first: most heads complete within the read that began them,
            # so the dict is usually empty again before the first tick, and a
            # task that stays for one idle tick is not re-made per request.
            while True:
                await asyncio.sleep(self.tick)
                if not self.since:
                    break
                late = loop.time() - self.header_timeout
                for handler, since in list(self.since.items()):
                    if since <= late:
                        del self.since[handler]
                        handler._head_timed_out()
        finally:
            self._task = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.since.clear()


class _RequestHandler(web.RequestHandler):
    """aiohttp's protocol with a request-head deadline and quiet, JSON protocol errors."""

    __slots__ = ("_address", "_addresses", "_bad_requests", "_heads", "_on_lost")

    def __init__(
        self,
        manager: web.Server,
        *,
        heads: _HeadClock,
        bad_requests: _BadRequestLog,
        addresses: _Addresses | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._heads = heads
        self._bad_requests = bad_requests
        self._on_lost: Callable[[], None] | None = None
        self._addresses = addresses
        self._address: str | None = None

    def keep_handler(self, on_lost: Callable[[], None] | None) -> None:
        """While set, a lost connection calls ``on_lost()`` instead of cancelling the handler.

        ``handler_cancellation`` cancels the handler of a lost connection, and with
        it the generation it relays; a stream that a resumed reader follows (or
        that asked to detach) must go on without its client
        (:meth:`EventStream.detachable`).
        """
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        addresses = self._addresses
        if addresses is not None:
            peer = transport.get_extra_info("peername")
            # (Not a sibling worker's connection on the Unix socket: the
            # client's was counted where it arrived.)
            address = peer[0] if isinstance(peer, tuple) and peer else None
            if address is not None and not addresses.add(address):
                # Over the cap: one short answer, then the door. No handler, no
                # parser, no head clock for it.
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(addresses.refusal)
                transport.close()
                return
            self._address = address
        # From the first moment: a connection that never sends a byte is the
        # cheapest slowloris of all.
        self._heads.start(self)

    def data_received(self, data: bytes) -> None:
        # A dict lookup or two per read; nothing on the write path.
        since = self._heads.since
        if data and self not in since:
            waiter = self._waiter  # private aiohttp API
            if waiter is not None and not waiter.done():
                # The first bytes of a new head on an idle kept-alive connection.
                self._heads.start(self)
        super().data_received(data)
        if self._messages:  # private aiohttp API
            # A complete head was parsed (or a parse error queued): the body
            # and the handler are not this clock's business.
            since.pop(self, None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is not None and self._addresses is not None:
            self._addresses.remove(self._address)
            self._address = None
        self._heads.since.pop(self, None)
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            self._task_handler = None  # private aiohttp API: then it cancels nothing
        super().connection_lost(exc)
        if on_lost is not None:
            on_lost()

    def _head_timed_out(self) -> None:
        waiter = self._waiter  # private aiohttp API
        if waiter is None or waiter.done() or self._messages:  # private aiohttp API
            # A request is queued or being answered: its head arrived in time.
            return
        log.debug(
            "closing connection from %s: no complete request head within %g s",
            self.peername,
            self._heads.header_timeout,
        )
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request the parser rejected in JSON, and log it quietly.

        Everything else (a handler's 500 or 504, which the app's middleware
        normally catches first) keeps aiohttp's behaviour, less its version.
        """
        if not isinstance(exc, http_exceptions.HttpProcessingError) or not 400 <= status < 500:
            response = super().handle_error(request, status, exc, message)
            response.headers["Server"] = SERVER
            return response
        self._bad_requests.note(request.remote, status, type(exc).__name__)
        if request.writer.output_size > 0:
            # As aiohttp: part of a response is out, so no error response fits.
            raise ConnectionError("response already started, cannot send the error")
        error = ErrorEvent(
            message=_describe(exc),
            code=status,
            type="bad_request" if status == 400 else "http_error",
        )
        response = web.Response(
            status=status,
            body=_encoder.encode(error),
            content_type="application/json",
            # The parser's stand-in request is HTTP/1.0, for which aiohttp
            # writes no Connection header even when it closes: say it.
            headers={"Server": SERVER, "Connection": "close"},
        )
        response.force_close()
        return response


_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Addresses:
    """Connections open per client address, capped (``max_connections_per_ip``).

    One dict entry per address with a connection open; a connection beyond the
    cap is answered 503 and closed as it is accepted. Behind a proxy every
    client has the proxy's address: set the cap there instead.
    """

    __slots__ = ("cap", "open", "refusal")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: dict[str, int] = {}
        body = _encoder.encode(
            ErrorEvent(
                message=f"too many connections from this address (at most {cap})",
                code=503,
                type="too_many_connections",
            )
        )
        self.refusal = (
            b"HTTP/1.1 503 Service Unavailable\r\nServer: " + SERVER.encode() + b"\r\n"
            b"Content-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def add(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if count >= self.cap:
            return False
        self.open[address] = count + 1
        return True

    def remove(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)


class _Server(web.Server):
    """Makes :class:`_RequestHandler` protocols; one bad-request log per server."""

    def __init__(
        self,
        handler: _Handler,
        *,
        request_factory: Callable[..., web.BaseRequest],
        handler_cancellation: bool,
        header_timeout: float,
        max_per_address: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            **kwargs,
        )
        # Our own copies of what Server keeps privately for its __call__.
        self._handler_loop = asyncio.get_running_loop()
        self._handler_kwargs = kwargs
        self._heads = _HeadClock(header_timeout)
        self._bad_requests = _BadRequestLog()
        self._addresses = _Addresses(max_per_address) if max_per_address else None

    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(
            self,
            loop=self._handler_loop,
            heads=self._heads,
            bad_requests=self._bad_requests,
            addresses=self._addresses,
            **self._handler_kwargs,
        )

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        self._heads.close()
        await super().shutdown(timeout)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections have a request-head deadline and quiet errors.

    Takes ``AppRunner``'s arguments plus ``header_timeout`` (seconds); pass
    ``keepalive_timeout`` as usual, it reaches aiohttp's ``RequestHandler``.
    """

    __slots__ = ("_header_timeout", "_max_per_address")

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float,
        max_connections_per_ip: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._max_per_address = max_connections_per_ip

    async def _make_server(self) -> web.Server:  # private aiohttp API
        # aiohttp runs the app's start-up and gathers the handler arguments
        # (debug, access log class, handler_args); keep all that, change the class.
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            header_timeout=self._header_timeout,
            max_per_address=self._max_per_address,
            **server._kwargs,  # private aiohttp API
        )


async def start_server(
    config: Config,
    *,
    access_log: logging.Logger | None = None,
    worker: WorkerSlot | None = None,
) -> GatewayRunner:
    """Build the app and listen on ``config.host``/``config.port``; ``cleanup()`` stops it.

    ``runner.addresses[0]`` is the bound address (the real port for port 0).
    ``cleanup()`` stops listening, runs the app's shutdown (the grace period
    for open streams), then closes what is left.

    ``worker``: one of ``serve --workers N``. The port is then shared with the
    other workers (``SO_REUSEPORT``), and the app also listens on the worker's
    Unix socket for its siblings (engine.siblings).

    Raises :class:`OSError` when the address cannot be bound (the app is
    cleaned up first).
    """
    logs: dict[str, Any] = {}
    if config.log_format == "json":
        # One JSON line per request (engine.logs), whether or not --access-log was given.
        from .logs import ACCESS_LOG, JSONAccessLogger

        access_log = logging.getLogger(ACCESS_LOG)
        logs["access_log_class"] = JSONAccessLogger
    app = create_app(config)
    if worker is not None:
        from .siblings import Siblings

        Siblings.install(app, worker)
    runner = GatewayRunner(
        app,
        handle_signals=False,
        # A client that disconnects cancels its handler at once, which stops
        # the upstream request too (USERS-ASK 1).
        handler_cancellation=True,
        access_log=access_log,
        # aiohttp's default is 3,630 s: idle connections would pile up.
        keepalive_timeout=config.keepalive_timeout,
        header_timeout=config.header_timeout,
        max_connections_per_ip=config.max_connections_per_ip,
        shutdown_timeout=config.shutdown_grace + 5,
        **logs,
    )
    await runner.setup()
    sites: list[web.BaseSite] = [web.TCPSite(runner, config.host, config.port, backlog=BACKLOG)]
    if worker is not None:
        sites = [
            web.TCPSite(runner, config.host, config.port, backlog=BACKLOG, reuse_port=True),
            web.UnixSite(runner, worker.socket_path(worker.slot), backlog=BACKLOG),
        ]
    try:
        for site in sites:
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner

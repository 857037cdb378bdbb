"""The one task that watches every open stream of an app: :class:`StreamSupervisor`.

For every registered stream, each tick (at most a second):

* client gone (transport closed)  -> cancel the task producing it at once;
* silent for ``heartbeat`` seconds -> write ``: keepalive`` (the stream does it in place);
* server stopping                 -> after the grace period, cancel; the stream
  sends ``event: error`` (shutdown).

Why one supervisor rather than a timer per stream: ten thousand idle streams
then cost ten thousand small objects and one timer, not ten thousand timers and
tasks; a tick walks the set and does nothing for a stream that is not due.

Besides streams it watches two kinds of waits that have no stream yet: a
non-streaming request (:meth:`StreamSupervisor.watch`, cancelled if its client
leaves) and a stream whose upstream has not answered (:class:`Opening`, whose
headers go out at a deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from ..errors import ClientDisconnectedError, ShuttingDown

if TYPE_CHECKING:
    from .response import EventStream
    from .stats import StreamObserver

__all__ = ["DEFAULT_HEARTBEAT", "Opening", "StreamSupervisor"]

log = logging.getLogger("engine.stream")

#: Seconds of silence before a keep-alive comment. Proxies and load balancers
#: commonly cut idle connections at 60 s (nginx ``proxy_read_timeout``, AWS ALB).
DEFAULT_HEARTBEAT = 15.0


class _Supervised(Protocol):
    """What the supervisor ticks over: an open stream, or a watched plain request."""

    def _check(self, due: float, supervisor: StreamSupervisor) -> None: ...

    def _interrupt(self, reason: str) -> None: ...


class _Watch:
    """A non-streaming request whose task is cancelled if its client leaves.

    aiohttp cancels handlers on disconnect only when the server was started with
    ``handler_cancellation=True``; an app mounted into someone else's server may
    not have it, and a reply computed for nobody still costs upstream tokens
    (USERS-ASK 1).
    """

    __slots__ = ("_request", "_task", "interrupted")

    def __init__(self, request: web.BaseRequest, task: asyncio.Task[Any]) -> None:
        self._request = request
        self._task = task
        self.interrupted: str | None = None

    def _check(self, due: float, supervisor: StreamSupervisor) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self._interrupt("disconnect")

    def _interrupt(self, reason: str) -> None:
        if self.interrupted is None and not self._task.done():
            self.interrupted = reason
            self._task.cancel()


class Opening(_Watch):
    """A stream whose upstream has not answered yet (see ``app.open_upstream``).

    Like :class:`_Watch`, its task is cancelled if the client leaves or the
    server stops; and once ``deadline`` (loop time) passes, the supervisor
    sends the stream's headers from a task of its own (:attr:`early`), so
    heartbeats begin while the upstream thinks. Ticked by the supervisor
    rather than timed: a timer per stream costs asyncio's heap more than the
    supervisor's set does, and a tick's lateness (at most a second) does not
    matter against a deadline of seconds.
    """

    __slots__ = ("_deadline", "_stream", "early")

    def __init__(
        self,
        request: web.BaseRequest,
        task: asyncio.Task[Any],
        stream: EventStream,
        deadline: float,
    ) -> None:
        super().__init__(request, task)
        self._stream = stream
        self._deadline = deadline
        #: The task sending the headers, once the deadline passed.
        self.early: asyncio.Task[EventStream] | None = None

    def _check(self, due: float, supervisor: StreamSupervisor) -> None:
        if self.early is not None:
            return  # the stream watches its client itself from here
        super()._check(due, supervisor)
        if self.interrupted is None and due + supervisor.heartbeat >= self._deadline:
            self.early = asyncio.get_running_loop().create_task(
                self._stream.prepare(owner=self._task)
            )

    def _interrupt(self, reason: str) -> None:
        if self.early is None:  # after it, the stream is registered and is interrupted itself
            super()._interrupt(reason)


class StreamSupervisor:
    """Heartbeats, disconnect detection and shutdown for every open stream of an app.

    One task, started with the first stream, ticks every ``tick`` seconds
    (default: the smaller of 1 s and half the heartbeat).
    """

    def __init__(self, heartbeat: float = DEFAULT_HEARTBEAT, *, tick: float | None = None) -> None:
        self.heartbeat = heartbeat
        self.tick = tick if tick is not None else min(1.0, heartbeat / 2)
        self._streams: set[_Supervised] = set()
        self._task: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self._stopping = False
        # Heartbeat writes run as tasks; keep them referenced until they finish.
        self._pending: set[asyncio.Task[None]] = set()
        #: Who hears of each relayed stream's end (engine.telemetry; None: nobody).
        self.observer: StreamObserver | None = None
        #: Counted in place, read when metrics are scraped: heartbeats written,
        #: and writes that waited for a slow reader (back-pressure).
        self.heartbeats = 0
        self.waits = 0

    def __len__(self) -> int:
        return len(self._streams)

    def open_streams(self) -> int:
        """Responses streaming now (not the plain requests and openings it also watches)."""
        return sum(1 for stream in self._streams if not isinstance(stream, _Watch))

    @property
    def stopping(self) -> bool:
        """True once :meth:`shutdown` has begun: new streams are refused."""
        return self._stopping

    def register(self, stream: _Supervised) -> None:
        if self._stopping:
            raise ShuttingDown("the server is shutting down")
        self._streams.add(stream)
        self._empty.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unregister(self, stream: _Supervised) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._empty.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._streams:
            await asyncio.sleep(self.tick)
            due = loop.time() - self.heartbeat
            for stream in list(self._streams):
                stream._check(due, self)

    @contextlib.asynccontextmanager
    async def watch(self, request: web.BaseRequest) -> AsyncIterator[None]:
        """Cancel the enclosed work if ``request``'s client leaves (non-streaming handlers).

        Raises :class:`~engine.errors.ClientDisconnectedError` out of the block
        when that happened, and :class:`~engine.errors.ShuttingDown` when the
        server stopped before the work finished.
        """
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under aiohttp
            yield
            return
        watch = _Watch(request, task)
        self.register(watch)
        try:
            yield
        except asyncio.CancelledError:
            if watch.interrupted is not None and task.uncancel() == 0:
                if watch.interrupted == "shutdown":
                    raise ShuttingDown("the server is shutting down") from None
                raise ClientDisconnectedError("the client left before the reply") from None
            raise
        finally:
            self.unregister(watch)

    def opening(self, request: web.BaseRequest, stream: EventStream, deadline: float) -> Opening:
        """Register the current task as opening ``stream``'s upstream; headers at ``deadline`` s.

        The caller unregisters it when the upstream answered. Raises
        :class:`~engine.errors.ShuttingDown` when the server is stopping (no
        upstream request is made then).
        """
        task = asyncio.current_task()
        assert task is not None  # always inside a task under aiohttp
        opening = Opening(request, task, stream, asyncio.get_running_loop().time() + deadline)
        self.register(opening)
        return opening

    async def wait_empty(self) -> None:
        """Return when no stream is open (at once if none is)."""
        await self._empty.wait()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def shutdown(self, grace: float) -> None:
        """Refuse new streams, give open ones ``grace`` seconds, then end them.

        Streams still open after the grace period get an ``error`` event of type
        ``shutdown`` and are closed; this returns when all of them are gone (or
        after a further bounded wait for handlers that ignore cancellation).
        """
        self._stopping = True
        if self._streams:
            log.info("waiting up to %.1f s for %d open stream(s)", grace, len(self._streams))
            try:
                async with asyncio.timeout(grace):
                    await self._empty.wait()
            except TimeoutError:
                for stream in list(self._streams):
                    stream._interrupt("shutdown")
                try:
                    async with asyncio.timeout(5):
                        await self._empty.wait()
                except TimeoutError:
                    log.warning("%d stream(s) did not stop", len(self._streams))
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the ticking task and any heartbeat writes in flight."""
        tasks = [t for t in (self._task, *self._pending) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

"""A worker's siblings (``serve --workers N``): resume and Stop on any worker, ``/metrics`` of all.

A stream lives in the worker that started it: its generation, its log, its
readers. The kernel hands a reconnecting client to any worker, so a resume
(``GET /v1/streams/{id}``, or a chat URL with ``Last-Event-ID``) or a Stop
(``POST /v1/streams/{id}/stop``) may reach one that does not hold the stream.
Without Redis the workers of one box find each other here:

* **The id says where.** Every stream id a worker makes ends with its tag,
  ``-w<slot>`` (:attr:`Engine.stream_tag <engine.gateway.Engine.stream_tag>`;
  empty, and ids as before, with one worker), so finding the owner is a
  regular expression, not a question to every sibling.
* **The owner answers.** Each worker also listens on a Unix socket in the
  parent's private runtime folder (mode 0700: only this user can connect),
  serving the same app. A worker that gets a request for a sibling's stream
  sends the same request there, headers (the client's key) and body
  included, and copies the answer back byte for byte as it arrives: the
  owner authenticates it, checks that the key started the stream (another
  key's is a 404, as on one worker), replays from its own log and follows it
  live. One log, one generation, one set of ids: no gap, no duplicate, no
  second generation. The relay costs the forwarded stream a read and a write
  per burst in the forwarding worker; nothing else pays.
* **A request from a sibling is never forwarded again** (it arrived on the
  Unix socket), so a stale or forged tag cannot make two workers bounce a
  request. A tag naming no live worker (a restarted one's streams are gone)
  is answered by the worker it reached: 404, like any unknown stream.

The routes forwarded: those with a ``{stream_id}`` (resume, Stop) or a
``{response_id}`` (``/v1/responses``: its ids carry the tag too), and
``/v1/chat/stream`` with ``Last-Event-ID``. Only a request naming another
worker's tag pays anything: a dict lookup and a regular expression.

:class:`StreamLocator` is the seam for the shared stream log (issue 14, part
B): with ``stream_log`` set, Redis holds the native streams' logs and takes
resumes and Stops (of every stream) itself, and :class:`Siblings` then
forwards none (only ``/metrics`` is still gathered here).

``/metrics``: the worker a scrape reaches asks each sibling for its own
exposition (the same request, plus :data:`SIBLING_HEADER`, honoured only on
the Unix socket) and sums them (engine.metrics_merge, which says why not
prometheus_client's multiprocess mode); ``sse_engine_workers_reporting``
says how many answered within :data:`METRICS_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .gateway import ENGINE
from .limits import Share
from .metrics_merge import merge
from .sse import encode_json
from .wire import ErrorEvent

if TYPE_CHECKING:
    from .middleware import Handler
    from .workers import WorkerSlot

__all__ = ["METRICS_TIMEOUT", "SIBLING_HEADER", "Siblings", "StreamLocator", "from_sibling", "tag"]

log = logging.getLogger("engine.siblings")

#: Marks a request one worker sends another for its own part (``/metrics``);
#: honoured only when it arrives on the Unix socket.
SIBLING_HEADER = "X-SSE-Engine-Sibling"

#: Seconds a scrape waits for a sibling's metrics before it answers without them.
METRICS_TIMEOUT = 2.0

_TAG = re.compile(r"-w([0-9]{1,4})\Z")
_LAST_EVENT_ID = "Last-Event-ID"
# The chat URLs on which a Last-Event-ID is a resume (engine.api.chat).
_RESUMING_PATHS = frozenset({"/v1/chat/stream"})

# Hop-by-hop headers (RFC 9110 7.6.1) and those the forwarding side's own
# HTTP framing sets: never copied across.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class StreamLocator(Protocol):
    """Where a stream lives, and how to reach it from here.

    ``owner(stream_id)`` is the worker to hand a request for that stream to,
    or ``None`` when this worker answers it itself (it holds the stream, or
    nobody does, or a shared log answers for all). ``forward`` sends the
    request there and relays the answer, or returns ``None`` when the owner
    cannot be reached before any of it was sent (the local route answers then).
    """

    def owner(self, stream_id: str) -> int | None: ...

    async def forward(self, request: web.Request, owner: int) -> web.StreamResponse | None: ...


def tag(slot: int) -> str:
    """The suffix of the stream ids worker ``slot`` makes."""
    return f"-w{slot}"


def from_sibling(request: web.BaseRequest) -> bool:
    """True if ``request`` came in on the worker's Unix socket (from a sibling)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


class Siblings:
    """This worker's view of the others (see the module docstring)."""

    def __init__(self, worker: WorkerSlot, *, send_timeout: float, locate: bool = True) -> None:
        self.worker = worker
        self.slot = worker.slot
        self.tag = tag(worker.slot)
        self._send_timeout = send_timeout
        #: False when a shared stream log (Redis) finds streams itself.
        self._locate = locate
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    @classmethod
    def install(cls, app: web.Application, worker: WorkerSlot) -> Siblings:
        """Make ``app``'s engine a worker of ``worker``'s box (before the app starts)."""
        engine = app[ENGINE]
        # With a shared stream log every worker reads every stream from it
        # (issue 14, part B), so resumes and Stops are not forwarded.
        config = engine.config
        siblings = cls(worker, send_timeout=config.send_timeout, locate=not config.stream_log)
        engine.siblings = siblings
        engine.stream_tag = siblings.tag
        # No counter shared across workers (no limits_url): each enforces its part.
        engine.gate.split_across(Share(worker.slot, worker.count))
        if siblings._locate:
            app.middlewares.append(siblings.middleware)

        async def close(app: web.Application) -> None:
            await siblings.aclose()

        app.on_cleanup.append(close)
        return siblings

    # -- where streams are -------------------------------------------------------------

    def owner(self, stream_id: str) -> int | None:
        if not self._locate:
            return None
        match = _TAG.search(stream_id)
        if match is None:
            return None
        slot = int(match.group(1))
        return slot if slot != self.slot and slot < self.worker.count else None

    @staticmethod
    def stream_of(request: web.Request) -> str | None:
        """The stream a request resumes or stops, if it is such a request."""
        match_info = request.match_info
        stream_id = match_info.get("stream_id") or match_info.get("response_id")
        if stream_id is not None:
            return stream_id
        if request.path in _RESUMING_PATHS:
            seen = request.headers.get(_LAST_EVENT_ID)
            if seen is not None:
                return seen.partition(":")[0]
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Hand a resume or Stop of a sibling's stream to that sibling; the rest as usual.

        Inside the error middleware: a request is authenticated here first
        (and again by the owner, which also checks the stream is its key's).
        """
        stream_id = self.stream_of(request)
        if stream_id is not None and not from_sibling(request):
            owner = self.owner(stream_id)
            if owner is not None:
                forwarded = await self.forward(request, owner)
                if forwarded is not None:
                    return forwarded
        # (An owner that cannot be reached holds nothing that still lives:
        # this worker's route answers, for a stream a 404 in its own shape.)
        return await handler(request)

    # -- reaching a sibling ------------------------------------------------------------

    def _session(self, slot: int) -> aiohttp.ClientSession:
        session = self._sessions.get(slot)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(self.worker.socket_path(slot), limit=0)
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # relayed as sent
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
            self._sessions[slot] = session
        return session

    async def _send(
        self, request: web.Request, slot: int, headers: CIMultiDict[str], body: bytes | None
    ) -> aiohttp.ClientResponse:
        # The Host header goes as the client sent it: the owner checks it too.
        return await self._session(slot).request(
            request.method,
            f"http://worker-{slot}{request.rel_url}",
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )

    @staticmethod
    def _headers(request: web.BaseRequest) -> CIMultiDict[str]:
        return CIMultiDict(
            (name, value) for name, value in request.headers.items() if name.lower() not in _HOP
        )

    async def forward(self, request: web.Request, owner: int) -> web.StreamResponse | None:
        """Send ``request`` to worker ``owner`` and relay its answer as it comes.

        ``None`` when that worker cannot be reached (it is restarting: the
        streams it held are gone) before anything was sent to the client.
        """
        body = await request.read() if request.can_read_body else None
        stream_id = self.stream_of(request) or "?"
        try:
            upstream = await self._send(request, owner, self._headers(request), body)
        except (aiohttp.ClientError, OSError) as exc:
            log.info(
                "worker %d unreachable for %s %s: %s", owner, request.method, request.path, exc
            )
            return None
        response: web.StreamResponse | None = None
        try:
            headers = CIMultiDict(
                (name, value)
                for name, value in upstream.headers.items()
                if name.lower() not in _HOP
            )
            if upstream.content_type != "text/event-stream":
                return web.Response(
                    status=upstream.status, body=await upstream.read(), headers=headers
                )
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            timeout = self._send_timeout
            async for data in upstream.content.iter_any():
                # The owner's heartbeats and send timeout see only this worker,
                # which reads as fast as it writes: a client that stops reading
                # must be timed here.
                async with asyncio.timeout(timeout):
                    await response.write(data)
            await response.write_eof()
            return response
        except aiohttp.ClientError as exc:
            # The owner went away mid-answer (killed): say so rather than end
            # the stream as if it were complete.
            log.info("relay of %s from worker %d cut: %r", stream_id, owner, exc)
            if response is None:
                return None
            lost = ErrorEvent(
                message=f"the worker producing the stream {stream_id!r} stopped",
                code=502,
                type="producer_lost",
            )
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self._send_timeout):
                    await response.write(encode_json(lost, event="error"))
                    await response.write_eof()
            return response
        except TimeoutError:
            log.info("relay of %s from worker %d: the client stopped reading", stream_id, owner)
            assert response is not None
            if request.transport is not None:
                request.transport.abort()  # (as EventStream drops a frozen reader)
            return response
        finally:
            # Closes the connection to the owner when the stream did not end
            # (its reader there then leaves, as a client's would).
            upstream.close()

    # -- metrics -----------------------------------------------------------------------

    @staticmethod
    def asked_by_sibling(request: web.BaseRequest) -> bool:
        """True for a sibling's request for this worker's own part (``/metrics``)."""
        return SIBLING_HEADER in request.headers and from_sibling(request)

    async def _metrics_of(self, request: web.Request, slot: int) -> bytes | None:
        headers = self._headers(request)
        headers[SIBLING_HEADER] = str(self.slot)
        try:
            async with asyncio.timeout(METRICS_TIMEOUT):
                upstream = await self._send(request, slot, headers, None)
                async with upstream:
                    data = await upstream.read()
                    return data if upstream.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("no metrics from worker %d: %r", slot, exc)
            return None

    async def gather_metrics(self, request: web.Request, own: bytes) -> bytes:
        """``own`` exposition and every sibling's that answers, summed (engine.metrics_merge)."""
        others = [slot for slot in range(self.worker.count) if slot != self.slot]
        answers = await asyncio.gather(*(self._metrics_of(request, slot) for slot in others))
        parts = [own, *(answer for answer in answers if answer is not None)]
        name = "sse_engine_workers_reporting"
        extra = (
            f"# HELP {name} Workers whose metrics this scrape adds up (of {self.worker.count}).",
            f"# TYPE {name} gauge",
            f"{name} {float(len(parts))!r}",
        )
        return merge(parts, extra)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

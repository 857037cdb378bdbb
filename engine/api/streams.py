"""Resuming a native stream: ``GET /v1/streams/{stream_id}``, and ``Last-Event-ID`` anywhere.

::

    GET /v1/streams/{stream_id}     Last-Event-ID: <stream_id>:<n>  (or ?last_event_id=)
        200 text/event-stream: the events after n, byte for byte as first sent
            (same ids), then the live rest, then the end; without a
            Last-Event-ID, the whole stream from its start
        204 when n is already the final event (EventSource stops reconnecting)
        404 stream_not_found: unknown or expired
        503 stream_log_unavailable (Retry-After): the Redis stream log cannot be
            reached, or lost events of this stream (its own box still serves it)
        410 resume_gap: the bounded log no longer holds event n+1 (the message
            names the earliest id still held)
        400 a malformed Last-Event-ID, one of another stream, or past what was sent

    POST /v1/streams/{stream_id}/stop   end it on purpose (native and completion streams)
        200 {"stream_id", "state"}: readers get the normal end with finish_reason
            "stopped", memory keeps the partial reply (reason "stopped"); a stream
            that already ended answers how it ended; 404 unknown (or another
            key's). With the Redis stream log, on any worker of any box, any
            stream (engine.streams.redis_control); 503 stream_log_unavailable
            (Retry-After) while Redis cannot be reached

A ``GET`` or ``POST /v1/chat/stream`` carrying ``Last-Event-ID`` resumes the
same way (what EventSource and fetch-event-source do when they reconnect)
and never starts a second generation. Several readers may follow one stream
at once, each from its own position.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from aiohttp import web

from ..errors import BadRequest, ResumeGap, StreamLogUnavailable, StreamNotFound
from ..gateway import ENGINE
from ..middleware import SERVER_HEADER, principal, query_token
from ..streams import EventStream
from ..streams.generation import outlive_client
from ..streams.log import StreamLog
from ._io import json_response

__all__ = ["LAST_EVENT_ID", "check_held", "follow_log", "resume", "routes"]

routes = web.RouteTableDef()

LAST_EVENT_ID = "Last-Event-ID"
#: Longest Last-Event-ID read: a stream id and an event number, with room to spare.
MAX_EVENT_ID = 200
# Our ids: "<stream_id>:<n>", the stream id being letters, digits, - and _.
_EVENT_ID = re.compile(r"([A-Za-z0-9_-]{1,128}):([0-9]{1,18})")
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _shown(stream_id: str) -> str:
    """A client-given stream id as an error message may quote it (ours whole, junk cut)."""
    return stream_id if _STREAM_ID.fullmatch(stream_id) else stream_id[:64]


def _last_event_id(request: web.Request) -> tuple[str, int] | None:
    """The (stream id, n) the client saw last, or None. Raises BadRequest when malformed."""
    value = request.headers.get(LAST_EVENT_ID)
    if value is None:
        value = request.query.get("last_event_id")
    if value is None:
        return None
    if len(value) > MAX_EVENT_ID:
        raise BadRequest(f"Last-Event-ID is longer than {MAX_EVENT_ID} characters")
    match = _EVENT_ID.fullmatch(value)
    if match is None:
        raise BadRequest(
            f"Last-Event-ID must be <stream_id>:<n>, an id this gateway sent, not {value[:64]!r}"
        )
    return match.group(1), int(match.group(2))


@routes.get("/v1/streams/{stream_id}")
@query_token
async def stream_resume(request: web.Request) -> web.StreamResponse:
    return await resume(request, request.match_info["stream_id"])


async def resume(request: web.Request, stream_id: str | None) -> web.StreamResponse:
    """Serve the events of a stream after the client's Last-Event-ID (see the module docstring).

    ``stream_id`` is the one the URL names (``None`` on the chat URLs, where
    the Last-Event-ID names it).
    """
    seen = _last_event_id(request)
    if stream_id is None:
        assert seen is not None  # the chat routes call this only with the header
        stream_id = seen[0]
    elif seen is not None and seen[0] != stream_id:
        raise BadRequest(f"Last-Event-ID {seen[0]}:{seen[1]} is of another stream than {stream_id}")
    engine = request.app[ENGINE]
    registry = engine.registry
    log = registry.get(stream_id) if registry is not None else None
    if log is None and registry is not None:
        try:
            log = await registry.fetch(stream_id)  # another worker's or box's (Redis)
        except StreamLogUnavailable:
            engine.telemetry.resumed("503")
            raise
    if log is not None and not _may_see(request, log.owner):
        log = None  # another key's stream: as if it did not exist
    if log is None:
        engine.telemetry.resumed("404")
        why = "is unknown or expired" if registry is not None else "cannot be resumed (resume off)"
        raise StreamNotFound(f"the stream {_shown(stream_id)!r} {why}")
    after = -1 if seen is None else seen[1]
    if after > log.next - 1 and not (log.remote and log.final is None):
        # (A copy of a log produced elsewhere may lag what its client was sent: it waits.)
        raise BadRequest(
            f"Last-Event-ID {stream_id}:{after} is past the last event sent "
            f"({stream_id}:{log.next - 1})"
        )
    if log.final is not None and after >= log.final:
        # Nothing after the final event: 204 is what makes an EventSource stop.
        engine.telemetry.resumed("204")
        return web.Response(status=204, headers={"Server": SERVER_HEADER})
    try:
        check_held(log, after)
    except ResumeGap:
        engine.telemetry.resumed("410")
        raise
    engine.telemetry.resumed("replayed" if log.final is not None else "live")
    return await _follow(request, log, after)


#: Seconds Stop waits for the generation to end before it answers (it ends
#: within one upstream read: the upstream connection is closed at once).
STOP_WAIT = 5.0


@routes.post("/v1/streams/{stream_id}/stop")
async def stream_stop(request: web.Request) -> web.Response:
    """Stop a stream on purpose: ``{"stream_id", "state"}``, its state once it ended.

    ``state`` is ``stopped``; or, for a stream that had already ended, how it
    ended (``done``, ``failed``, ``interrupted``, ``stopped``): stopping it
    again is not an error. An unknown stream is 404.
    """
    stream_id = request.match_info["stream_id"]
    engine = request.app[ENGINE]
    generation = engine.generations.get(stream_id)
    if generation is not None and not _may_see(request, generation.owner):
        generation = None
    owner = principal(request).owner
    state: str | None
    if generation is not None:
        generation.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_WAIT):
                await generation.wait_ended()
        state = generation.state
    else:
        state = engine.generations.ended_state(stream_id, owner)
        log = engine.registry.get(stream_id) if engine.registry is not None else None
        if state is None and log is not None and log.ended and _may_see(request, log.owner):
            state = "ended"
        if state is None and log is None and engine.registry is not None:
            state = await engine.registry.stop(stream_id, owner)  # produced elsewhere (Redis)
        if state is None:
            raise StreamNotFound(f"the stream {_shown(stream_id)!r} is unknown or expired")
    return json_response({"stream_id": stream_id, "state": state})


def _may_see(request: web.Request, owner: str | None) -> bool:
    """True if the request's key started the stream (the admin, or an open gateway, sees all)."""
    who = principal(request).owner
    return who is None or who == owner


def check_held(log: StreamLog, after: int) -> None:
    """Raise :class:`ResumeGap` if the log no longer holds the event after ``after``."""
    if after + 1 < log.first:
        raise ResumeGap(
            f"the events after {log.stream_id}:{after} are no longer held; "
            f"the earliest still held is {log.stream_id}:{log.first}"
        )


async def _follow(request: web.Request, log: StreamLog, after: int) -> web.StreamResponse:
    """Replay what the log holds after ``after`` in one write, then follow it live to its end."""
    engine = request.app[ENGINE]
    stream = engine.sse(request, Server=SERVER_HEADER)
    log.readers += 1
    generation = engine.generations.get(log.stream_id)
    if generation is not None:
        # From now on the generation ends when its last reader leaves, not
        # when its first connection does (a reconnect before the old
        # connection is noticed dead must not be cut off with it).
        outlive_client(generation, lambda: log.readers, 0, engine.spawn)
    try:
        return await follow_log(stream, log, after)
    finally:
        log.readers -= 1


async def follow_log(stream: EventStream, log: StreamLog, after: int) -> web.StreamResponse:
    """Send ``stream`` the events of ``log`` after ``after``, then the live rest, then the end.

    Any dialect's: the log holds the framed bytes (``/v1/responses`` follows its
    own logs with it). A reader slower than the log's bound gets an error event.
    """
    async with stream:
        position = after
        while True:
            check_held(log, position)  # a reader slower than the log's bound: an error event
            data = log.since(position)
            if data:
                position = log.next - 1
                await stream.send_frame(data)
            if log.final is not None and position >= log.final:
                break
            # Shielded: the future is shared by every reader of the stream, and a
            # reader that leaves (its task cancelled) must not cancel it for the others.
            await asyncio.shield(log.wait())
        await stream.finish(b"")
    return stream.response or web.Response(status=499)

"""Relaying a provider's reply to one stream: :func:`open_upstream`, then :func:`relay`.

The handler task runs both: it opens the upstream request (sending the headers
early if the upstream is slow to answer), then for each chunk accounts it,
frames it in the endpoint's dialect and sends it (:class:`Coalescer` decides
when a write happens). Memory, when attached, gets the request before any
reply and the reply once, whole, before the final event; a stream that ends
early stores what its client was sent, marked partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web

from ..errors import (
    ClientDisconnectedError,
    EngineError,
    ShuttingDown,
    StoreUnavailable,
    StreamInterrupted,
)
from ..wire import Chunk, EstimatedUsage, Usage, merge_tool_deltas
from .coalesce import Coalescer
from .stats import SAMPLE_EVERY, StreamEnd, StreamObserver, end_reason

if TYPE_CHECKING:
    from ..providers import ChunkStream
    from .generation import Generation, Generations
    from .log import StreamLog
    from .response import EventStream
    from .supervisor import StreamSupervisor

__all__ = ["MAX_STORED_REPLY_CHARS", "Framing", "ReplyMemory", "open_upstream", "relay"]

log = logging.getLogger("engine.stream")

#: Characters of a streamed reply kept for memory; the rest is streamed but not
#: stored, and the stored message says ``"truncated": true``. The largest real
#: outputs (128k tokens) are about 512 KiB of text; the mock streams up to
#: 64 GB, which a conversation must not try to hold.
MAX_STORED_REPLY_CHARS = 4 * 1024 * 1024


class Framing(Protocol):
    """One endpoint's wire format for a stream (engine.dialects)."""

    def start(self) -> bytes:
        """The first frame, sent before any chunk."""
        ...

    def chunk(self, chunk: Chunk, n: int) -> bytes | None:
        """Chunk ``n``'s frame, or ``None`` to send nothing for it."""
        ...

    def finish(self, finish_reason: str | None, usage: Usage | None, n: int) -> bytes:
        """The frames that end a complete reply of ``n`` chunks."""
        ...

    def error(self, exc: EngineError, n: int) -> bytes:
        """The frame that ends a stream that failed after ``n`` chunks."""
        ...


class ReplyMemory(Protocol):
    """Where a relayed conversation is stored (engine.memory.history.ChatMemory)."""

    async def store_request(self) -> None: ...

    async def store_reply(
        self,
        text: str,
        metadata: dict[str, Any],
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None: ...


async def open_upstream(
    stream: EventStream,
    opening: Awaitable[ChunkStream],
    *,
    request: web.BaseRequest,
    supervisor: StreamSupervisor,
    deadline: float,
) -> ChunkStream | None:
    """Await ``opening`` (a provider's ``open()``), sending the headers after ``deadline`` s.

    An upstream that answers within ``deadline`` seconds (the usual case) is
    answered as before: its refusal is still a JSON error with a real status.
    One that is still thinking gets the response headers sent, and with them
    heartbeats, so no proxy cuts a silent connection (USERS-ASK 2); a refusal
    after that is an ``error`` event on the stream, which is then finished, and
    ``None`` is returned. A client that leaves meanwhile stops the upstream
    request, also when the server does not cancel handlers (USERS-ASK 1), and a
    server that is stopping makes none (503).

    ``opening`` runs in this task, not in one of its own, and the deadline is
    the supervisor's to watch (:class:`~engine.streams.supervisor.Opening`): a
    task and a wait cost a stream 13 us, a timer 2 us, a supervisor entry well
    under one (benchmarks/NOTES.md).
    """
    started = time.monotonic()  # the upstream request's start, for its stream's metrics
    watch = supervisor.opening(request, stream, deadline)
    try:
        chunks = await opening
    except BaseException as exc:
        early = watch.early
        if early is None:
            if isinstance(exc, asyncio.CancelledError) and watch.interrupted is not None:
                task = asyncio.current_task()
                if task is not None and task.uncancel() == 0:
                    if watch.interrupted == "shutdown":
                        raise ShuttingDown("the server is shutting down") from None
                    raise ClientDisconnectedError("the client left before the reply") from None
            raise
        if not early.done():
            if isinstance(exc, asyncio.CancelledError):
                early.cancel()
                raise
            await asyncio.wait((early,))  # the headers are on their way: finish them first
        if stream.prepared and await stream.__aexit__(type(exc), exc, exc.__traceback__):
            return None  # the error event was sent (or the client left)
        raise
    finally:
        supervisor.unregister(watch)
    chunks.started = started
    if watch.early is not None:
        try:
            await watch.early  # the headers are out (or could not be sent) before any write
        except BaseException:
            await chunks.aclose()
            raise
    return chunks


class _Reply:
    """The text of the reply its client was sent, for memory, bounded."""

    __slots__ = ("calls", "room", "seen")

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.room = MAX_STORED_REPLY_CHARS  # below 0: the rest is not kept
        #: The reply's tool calls, whole (folded from the streamed deltas).
        self.calls: list[dict[str, Any]] = []

    def keep(self, text: str) -> None:
        if self.room >= 0:
            self.room -= len(text)
            if self.room >= 0:
                self.seen.append(text)

    @property
    def truncated(self) -> bool:
        return self.room < 0

    def metadata(self, stream_id: str, partial: str | None) -> dict[str, Any]:
        """The stored reply's metadata; ``partial`` is why it did not finish, if it did not."""
        metadata: dict[str, Any] = {"partial": True, "reason": partial} if partial else {}
        metadata["stream_id"] = stream_id
        if self.truncated:
            metadata["truncated"] = True
        return metadata

    def text_shown(self, unsent: int) -> str:
        """The kept text less the last ``unsent`` frames (framed, never written)."""
        seen = self.seen
        if unsent and not self.truncated:
            seen = seen[:-unsent]
        return "".join(seen)


async def relay(
    stream: EventStream,
    chunks: ChunkStream,
    framing: Framing,
    memory: ReplyMemory | None,
    stream_id: str,
    log: StreamLog | None = None,
    generation: Generation | None = None,
    generations: Generations | None = None,
) -> web.StreamResponse:
    """Relay ``chunks`` to ``stream`` in ``framing``'s format, with memory around it.

    ``framing.start()`` goes out first; the final frames go out once the whole
    reply is stored, so the final event means it is saved. A failure or a
    client that left stores the part that was written, marked partial.

    With a ``log`` (native streams, for resume), every frame also goes there,
    the final ``done`` or ``error`` included; a stream cancelled before its
    end (its client left, the server stopped) ends its log with an ``error``
    event saying so, so a late resume learns why it ended.

    With a ``generation``, ``POST /v1/streams/{id}/stop`` may stop it: the
    upstream is closed at once, the partial reply is stored with reason
    ``stopped``, and the stream ends normally with ``finish_reason: "stopped"``.
    """
    n = 0
    how = "interrupted"  # how the stream ended, for a late Stop
    stopped = False
    usage: Usage | None = None
    # For the stream's end (engine.streams.stats): counted here, reported once.
    observer = stream.observer
    failure: EngineError | None = None
    first = 0.0  # when the first chunk came
    # Timed: the first chunk (TTFT), and with an observer one in SAMPLE_EVERY.
    every = SAMPLE_EVERY if observer is not None else 1 << 62
    # What the client was sent, kept for memory or a log of the content only: a
    # stream with neither holds none of it (benchmarks/NOTES.md, Change 12).
    reply = (
        _Reply() if memory is not None or (observer is not None and observer.log_content) else None
    )
    try:
        async with chunks:
            # Stored before the headers, so a store that is down is still a JSON
            # 503; once the header deadline sent them, inside the stream (an
            # error event). Either way the request is stored before any reply.
            store_inside = memory is not None and stream.prepared
            if memory is not None and not store_inside:
                await memory.store_request()
            async with stream:
                try:
                    if memory is not None and store_inside:
                        await memory.store_request()
                    if log is not None:
                        stream.log_to(log)  # each burst's frames, as they are written
                    # Queued, not sent: it goes out with the chunks ready at once, or
                    # alone the moment the relay would wait (one write less a stream).
                    stream.queue_frame(framing.start())
                    policy = Coalescer(stream)
                    finish_reason: str | None = None
                    chunk: Chunk | None = None
                    wait: Awaitable[None] | None = None
                    try:
                        while True:
                            # An idle stream waits in the fetch below for as long as
                            # its provider is silent: it holds nothing it already sent
                            # (the last chunk, its frame, a finished wait: about 320 B,
                            # benchmarks/NOTES.md, Change 12).
                            chunk = data = wait = None
                            try:
                                chunk = await policy.next(chunks)
                            except StopAsyncIteration:
                                break
                            except Exception:
                                await stream.flush()  # what came before the failure goes out first
                                raise
                            # account
                            n += 1
                            if n % every == 1:
                                now = time.monotonic()
                                if observer is not None:
                                    stream.probe(now)  # its write is timed too
                                first = first or now
                            if chunk.finish_reason is not None:
                                finish_reason = chunk.finish_reason
                            if chunk.usage is not None:
                                usage = chunk.usage
                            # frame
                            data = framing.chunk(chunk, n)
                            if data is None:
                                continue
                            # send (now, or with the rest of its burst; the log with it)
                            wait = policy.add(data)
                            if reply is not None:
                                reply.keep(chunk.content)
                                if chunk.tool_calls:
                                    merge_tool_deltas(reply.calls, chunk.tool_calls)
                            if wait is not None:
                                await wait
                    except asyncio.CancelledError:
                        if log is not None and stream.interrupted == "shutdown" and _withdrawn():
                            # A resumable stream ends with the shutdown error *and its id*,
                            # alike on the wire and in the log, with advice to come back.
                            raise ShuttingDown(
                                "the server is restarting: reconnect in a moment"
                            ) from None
                        if not _stop_requested(generation):
                            raise
                        stopped, finish_reason = True, "stopped"
                        await chunks.aclose()  # the upstream is closed now, not after the rest
                    if generation is not None:
                        generation.ending()  # a Stop from now on waits for the end
                    await stream.flush()
                    if usage is None:
                        # Stopped, or a server that sends none: say about what it was.
                        usage = _estimate(chunks, n)
                    if memory is not None and reply is not None:  # (one implies the other)
                        metadata = reply.metadata(stream_id, "stopped" if stopped else None)
                        if isinstance(usage, EstimatedUsage):
                            metadata["usage"] = msgspec.to_builtins(usage)
                        await memory.store_reply("".join(reply.seen), metadata, reply.calls)
                        memory = None
                    last = framing.finish(finish_reason, usage, n)
                    if log is not None:
                        log.end(last)
                    await stream.finish(last)
                    how = "stopped" if stopped else "done"
                except EngineError as exc:
                    failure = exc
                    how = "interrupted" if isinstance(exc, ShuttingDown) else "failed"
                    if log is None:
                        raise  # the stream sends it, in its dialect's error frame
                    # Sent and logged alike, with its id: a resume replays it.
                    last = framing.error(stream.scrub(exc), n)
                    with contextlib.suppress(ConnectionResetError):
                        await stream.flush()  # what was queued goes (and is logged) first
                    log.end(last)
                    await stream.finish(last)
    finally:
        if generation is not None and generations is not None:
            if usage is None:
                usage = _estimate(chunks, n)
            generations.finish(generation, how, usage.total_tokens)
        if observer is not None:
            if usage is None:
                usage = _estimate(chunks, n)
            _report(
                observer,
                stream,
                chunks,
                stream_id,
                generation,
                reply,
                failure,
                how,
                n,
                first,
                usage,
            )
        if log is not None and not log.ended:
            # Cancelled (or failed in a way the stream reports as internal).
            if stream.interrupted == "shutdown":
                reason: EngineError = ShuttingDown("the server stopped before the stream ended")
            elif stream.interrupted == "disconnect" or stream.end_reason == "client_disconnected":
                reason = StreamInterrupted("the stream's client left before it ended")
            else:
                reason = EngineError("internal error")
            log.end(framing.error(reason, n))
        # `memory` is None once the whole reply was stored.
        if memory is not None and reply is not None and reply.seen:
            await _store_partial(memory, reply, stream, stream_id, _estimate(chunks, n))
    return stream.response or web.Response(status=499)


def _report(
    observer: StreamObserver,
    stream: EventStream,
    chunks: ChunkStream,
    stream_id: str,
    generation: Generation | None,
    reply: _Reply | None,
    failure: EngineError | None,
    how: str,
    n: int,
    first: float,
    usage: Usage,
) -> None:
    """Tell ``observer`` how the stream ended (once, from the relay's ``finally``)."""
    ended = time.monotonic()
    try:
        provider = chunks.provider or "unknown"
        model = chunks.model.removeprefix(f"{provider}/")  # (a fallback's target)
        response = stream.response
        end = StreamEnd(
            stream_id=stream_id,
            provider=provider,
            model=model,
            reason=end_reason(how, failure, stream),
            status=response.status if response is not None else None,
            started=chunks.started or ended,
            first_chunk=first,
            ended=ended,
            chunks=n,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            estimated=isinstance(usage, EstimatedUsage),
            bytes=stream.bytes_sent,
            delays=stream.delays,
            alias=generation.alias if generation is not None else None,
            content=(
                reply.text_shown(stream.queued)
                if reply is not None and observer.log_content
                else None
            ),
        )
        observer.stream_ended(end)
    except Exception:  # metrics must never break a stream's end
        log.exception("could not report the end of stream %s", stream_id)


def _stop_requested(generation: Generation | None) -> bool:
    """True if this cancellation is a Stop (and only that): then it is withdrawn."""
    if generation is None or not generation.stopping:
        return False
    return _withdrawn()


def _withdrawn() -> bool:
    """Withdraw the cancellation being handled; False if another one is pending too."""
    task = asyncio.current_task()
    return task is not None and task.uncancel() == 0


def _estimate(chunks: ChunkStream, n: int) -> EstimatedUsage:
    prompt = chunks.prompt_estimate
    return EstimatedUsage(prompt_tokens=prompt, completion_tokens=n, total_tokens=prompt + n)


async def _store_partial(
    memory: ReplyMemory, reply: _Reply, stream: EventStream, stream_id: str, usage: Usage
) -> None:
    """Keep what the user saw of a reply that did not finish (USERS-ASK 5), and about
    what it cost (the provider reported nothing before the end)."""
    metadata = reply.metadata(stream_id, stream.end_reason)
    metadata["usage"] = msgspec.to_builtins(usage)
    try:
        await memory.store_reply(reply.text_shown(stream.queued), metadata)
    except StoreUnavailable:
        log.warning("could not store the partial reply of stream %s", stream_id)

"""Every native stream's framed events, kept for resume: :class:`StreamLog` and :class:`Registry`.

A stream's events have ids ``<stream_id>:<n>``: ``start`` is 0, chunks 1..N,
the final ``done`` or ``error`` N+1. The log keeps event n's frame, the exact
bytes first sent, at index n, so a resume is a byte copy of a slice, in one
write (DESIGN.md). The relay appends each frame as it frames it (a list
append and an addition per chunk); readers that follow a live stream
(:meth:`StreamLog.wait`) are woken once per burst, and only while they exist.

Bounds, so that no stream and no reader can make the gateway hold without end:

* per stream, ``max_bytes`` (``--resume-max-bytes``): past it the oldest
  frames go, a quarter of the bound at a time; a resume from before the
  earliest frame held is refused (410 ``resume_gap``), never served with a
  hole in it;
* in total, ``total_bytes`` (``--resume-total-bytes``): past it finished
  streams are dropped, oldest first, then live logs are cut to their newest
  frames; a live stream is never stalled for it;
* in time, ``ttl`` (``--resume-ttl``): a finished stream is dropped that many
  seconds after its end.

A :class:`Registry` (one per engine) finds logs by stream id and applies the
total and time bounds on a tick of its own, while it holds any log.

Two backends share this interface (the resume and Stop routes use nothing
else): this in-process one, and :class:`~engine.streams.redis_log.RedisRegistry`
(``stream_log = "redis://..."``), whose logs are these same objects, with each
burst also handed to one writer per worker for Redis. ``Registry.get`` finds
this worker's logs (synchronous, the common case); ``await Registry.fetch``
finds another worker's or box's (``None`` here); ``await Registry.stop``
stops a stream produced elsewhere (``None`` here: unknown).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from array import array
from collections import deque
from itertools import accumulate

__all__ = ["Registry", "StreamLog"]

log = logging.getLogger("engine.stream")

#: Seconds between two sweeps of the registry (expiry and the total bound).
SWEEP_TICK = 1.0


class StreamLog:
    """One stream's frames by event number (see the module docstring).

    Held as one ``bytearray`` and an ``array`` of where each event ends, not a
    list of ``bytes``: a log kept for ten minutes is then two objects however
    many events it holds, none tracked by the garbage collector, and a burst
    is added with two C calls (benchmarks/NOTES.md).

    Until a second write comes, the first (``start`` and what was ready with it)
    is held as the very ``bytes`` written, with no ``array`` at all for one
    event: an idle stream's log then holds no growable copy of its first burst
    (benchmarks/NOTES.md, Change 11).
    """

    __slots__ = (
        "_base",
        "_buf",
        "_ends",
        "_max_bytes",
        "_registry",
        "_waiter",
        "_waking",
        "ended_at",
        "final",
        "first",
        "owner",
        "readers",
        "stream_id",
    )

    def __init__(
        self,
        stream_id: str,
        max_bytes: int,
        registry: Registry | None = None,
        owner: str | None = None,
    ) -> None:
        self.stream_id = stream_id
        #: The client key whose request started it (``None``: no keys): only it
        #: (or the admin) may resume it.
        self.owner = owner
        self._registry = registry  # keeps the running total of all logs' bytes
        # The frames of events first.. next-1, back to back (``bytes``: the first write).
        self._buf: bytes | bytearray = b""
        # Where event first + i ends, counted from the stream's start (None: one event at most).
        self._ends: array[int] | None = None
        self._base = 0  # where _buf begins, counted the same way
        self.first = 0  # the number of the earliest event held
        #: Readers following the stream (resumed connections), for the detach window.
        self.readers = 0
        #: The number of the final event (``done`` or ``error``) once the stream ended.
        self.final: int | None = None
        self.ended_at: float | None = None
        self._max_bytes = max_bytes
        self._waiter: asyncio.Future[None] | None = None
        self._waking = False

    #: True for a copy of a log produced elsewhere (engine.streams.redis_follow):
    #: its events may lag what a client was sent, so a Last-Event-ID past its end waits.
    remote = False

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self._buf)

    @property
    def next(self) -> int:
        """The number the next event will have."""
        ends = self._ends
        return self.first + (len(ends) if ends is not None else 1 if self._buf else 0)

    @property
    def ended(self) -> bool:
        return self.final is not None

    def append(self, frame: bytes) -> None:
        """Add the next event's frame."""
        if not self._buf:  # the first: held as it is (the same object when bytes)
            self._buf = bytes(frame)
        else:
            buf, ends = self._growable()
            buf += frame
            ends.append(self._base + len(buf))
        self._added(len(frame))

    def _growable(self) -> tuple[bytearray, array[int]]:
        """The buffer and its ends, made to grow (the first write is held as written)."""
        buf, ends = self._buf, self._ends
        if ends is None:  # one event: it ends where the buffer does
            ends = self._ends = array("q", [self._base + len(buf)])
        if not isinstance(buf, bytearray):
            buf = self._buf = bytearray(buf)
        return buf, ends

    def extend(self, frames: list[bytes], joined: bytes | None = None) -> None:
        """Add the frames of a burst, in order (once per write, not per chunk).

        ``joined`` is ``b"".join(frames)`` when the caller has it (it just wrote it).
        """
        data = b"".join(frames) if joined is None else joined
        if not self._buf:  # the first burst: held as written, with its ends if many
            self._buf = bytes(data)
            if len(frames) > 1:
                self._ends = array("q", accumulate(map(len, frames), initial=self._base))
                del self._ends[0]  # (the initial value: where the burst begins)
        else:
            buf, ends = self._growable()
            end = self._base + len(buf)
            buf += data
            if len(frames) == 1:  # a lone chunk (a steady cadence): no accumulate
                ends.append(end + len(data))
            else:
                added = accumulate(map(len, frames), initial=end)
                next(added)  # (the initial value: where the burst begins)
                ends.extend(added)
        self._added(len(data))

    def _added(self, added: int) -> None:
        if self._registry is not None:
            self._registry.size += added
        if len(self._buf) > self._max_bytes:
            self._trim(self._max_bytes * 3 // 4)
        if self._waiter is not None and not self._waking:
            # One wake-up per burst: readers run after the relay's current step.
            self._waking = True
            asyncio.get_running_loop().call_soon(self._wake)

    def end(self, frame: bytes) -> None:
        """Add the final event's frame; the log then only serves resumes until it expires."""
        if self.final is not None:
            return
        self.append(frame)
        self.final = self.next - 1
        self.ended_at = asyncio.get_running_loop().time()
        if self._registry is not None:
            self._registry._ended.append(self)
        self._wake()

    def since(self, after: int) -> bytes:
        """The frames of the events after ``after`` (>= ``first - 1``), joined for one write."""
        i = after + 1 - self.first
        ends = self._ends
        if ends is None:  # one event at most: i is 0 or past it
            return bytes(self._buf) if i <= 0 else b""
        if i >= len(ends):
            return b""
        start = (ends[i - 1] if i > 0 else self._base) - self._base
        return bytes(memoryview(self._buf)[start:])

    def wait(self) -> asyncio.Future[None]:
        """A future resolved when events are added or the stream ends (shared by all readers)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def _wake(self) -> None:
        self._waking = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _trim(self, target: int) -> None:
        """Drop the oldest events until at most ``target`` bytes are held (at least one stays)."""
        ends = self._ends
        if ends is None or len(ends) < 2:
            return
        buf, ends = self._growable()
        # The fewest events to drop: those ending before `stop - target`.
        stop = self._base + len(buf)
        drop = min(bisect.bisect_left(ends, stop - target) + 1, len(ends) - 1)
        cut = ends[drop - 1] - self._base
        del buf[:cut]
        del ends[:drop]
        self._base += cut
        self.first += drop
        if self._registry is not None:
            self._registry.size -= cut


class Registry:
    """The logs of one engine's streams, by stream id, with their total and time bounds.

    A sweep costs what it drops, not what is held: finished logs wait in the
    order they ended, and the total is kept as logs grow, so a gateway holding
    the last ten minutes of a busy day does not walk them all every second.
    """

    def __init__(self, *, max_bytes: int, total_bytes: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = total_bytes
        self.ttl = ttl
        #: Bytes held by all logs together.
        self.size = 0
        self._logs: dict[str, StreamLog] = {}
        self._ended: deque[StreamLog] = deque()  # in the order they ended
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._logs)

    def open(self, stream_id: str, owner: str | None = None) -> StreamLog:
        """A new log for ``stream_id``, which the key ``owner`` started."""
        stream_log = StreamLog(stream_id, self.max_bytes, self, owner)
        self._logs[stream_id] = stream_log
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep())
        return stream_log

    #: Streams whose events could not all be kept in the shared log (Redis
    #: slow or down); always 0 for this in-process one.
    unlogged = 0

    def get(self, stream_id: str) -> StreamLog | None:
        """This worker's log of ``stream_id``, or None."""
        return self._logs.get(stream_id)

    async def fetch(self, stream_id: str) -> StreamLog | None:
        """The log of a stream produced by another worker or box, or None (none here).

        A shared backend raises :class:`~engine.errors.StreamLogUnavailable` when it
        cannot tell.
        """
        return None

    async def stop(self, stream_id: str, owner: str | None) -> str | None:
        """Stop a stream produced elsewhere: its state once it ended, or None if unknown
        (or not ``owner``'s; ``None`` sees all). None here: there is no elsewhere."""
        return None

    async def _sweep(self) -> None:
        try:
            while self._logs:
                await asyncio.sleep(SWEEP_TICK)
                self.sweep(asyncio.get_running_loop().time())
        finally:
            self._task = None

    def _drop(self, stream_log: StreamLog) -> None:
        if self._logs.get(stream_log.stream_id) is stream_log:
            del self._logs[stream_log.stream_id]
            self.size -= stream_log.size

    def sweep(self, now: float) -> None:
        """Drop expired logs, then apply the total bound (finished logs first, oldest first)."""
        ended = self._ended
        while ended and (ended[0].ended_at or 0.0) + self.ttl <= now:
            self._drop(ended.popleft())
        while self.size > self.total_bytes and ended:
            self._drop(ended.popleft())
        if self.size <= self.total_bytes:
            return
        # Still over with live streams only: cut each live log to its newest half.
        log.warning(
            "stream logs hold %d bytes over the %d-byte bound with live streams only; "
            "cutting their oldest events (a resume from there is refused)",
            self.size,
            self.total_bytes,
        )
        for stream_log in list(self._logs.values()):
            stream_log._trim(stream_log.size // 2)

    def start(self) -> None:
        """Start what the registry runs in the background (here nothing; called at app start-up)."""

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._logs.clear()
        self._ended.clear()
        self.size = 0

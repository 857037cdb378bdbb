"""When the relay writes: :class:`Coalescer`, the policy that joins ready chunks into one write.

Chunks a provider has ready at once (one upstream read holds several events;
the mock at interval 0 yields 32 at a time) go out in one write, made the
moment the relay would wait: one system call per burst, and no event waits
for a later one (:func:`engine._eager.next_ready`). That eager step costs
about a microsecond a chunk and saves nothing when chunks come one at a time
(a steady token cadence): after :data:`LONE_RUN` bursts of one in a row, the
next :data:`PLAIN_RUN` chunks are awaited plainly and each written at once,
then the policy looks again. A burst never holds more than :data:`MAX_BATCH`
frames (benchmarks/NOTES.md, Changes 1 and 3).

The policy is an object of its own so it can be tested without a socket; the
relay asks it two things per chunk: how to fetch the next one (:meth:`next`)
and whether the frame it just queued must go out now (:meth:`add`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from .._eager import next_ready

__all__ = ["LONE_RUN", "MAX_BATCH", "PLAIN_RUN", "Coalescer", "Queue"]

#: Most frames joined into one write: bounds how long the first of a burst waits
#: for the others to be framed (microseconds each).
MAX_BATCH = 64
#: Bursts of one in a row after which the relay stops stepping eagerly ...
LONE_RUN = 8
#: ... and for how many chunks.
PLAIN_RUN = 64

T = TypeVar("T")


class Queue(Protocol):
    """What the policy needs of the stream (EventStream has it)."""

    def queued_frames(self) -> list[bytes]:
        """The list of frames the next flush writes (appended to directly)."""
        ...

    def flush_nowait(self) -> Awaitable[None] | None: ...


class Coalescer:
    """The write policy of one relayed stream (see the module docstring)."""

    __slots__ = ("_flush", "_frames", "_lone", "_pending", "_plain")

    def __init__(self, queue: Queue) -> None:
        # The stream's own list: a frame is queued with one append, not a call.
        self._frames = queue.queued_frames()
        self._flush = queue.flush_nowait  # None, or the wait for a slow reader
        self._lone = 0  # bursts of one in a row
        self._plain = 0  # chunks still to fetch plainly
        self._pending = 0  # frames queued since the last flush we know of

    @property
    def eager(self) -> bool:
        """True while the next chunk is fetched with the eager step."""
        return not self._plain

    def next(self, chunks: AsyncIterator[T]) -> Awaitable[T]:
        """The awaitable that fetches the next chunk (no coroutine of its own)."""
        if self._plain:
            self._plain -= 1
            return chunks.__anext__()
        # Writes what is queued if the provider has nothing ready.
        return next_ready(chunks, self._flush)

    def add(self, frame: bytes) -> Awaitable[None] | None:
        """Queue ``frame``; returns what to await when it must be written now (else None)."""
        frames = self._frames
        pending = self._pending
        if pending and not frames:
            # The eager step wrote the previous burst while waiting: learn its size.
            self._lone = self._lone + 1 if pending == 1 else 0
            if self._lone >= LONE_RUN:
                self._lone, self._plain = 0, PLAIN_RUN
            pending = 0
        frames.append(frame)
        pending += 1
        # Fetched plainly: written at once (the last plain chunk is left queued:
        # the eager step that follows writes it before any wait).
        if self._plain or pending >= MAX_BATCH:
            self._pending = 0
            return self._flush()
        self._pending = pending
        return None

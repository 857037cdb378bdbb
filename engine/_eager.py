"""Coalescing without delay: step an async iterator eagerly, act only if it must wait.

A stream relays chunks one by one, but a provider often has several ready at
once (one upstream read holds many events; the mock at interval 0 yields a
burst). Writing each alone costs a system call per event. :func:`next_ready`
lets the caller queue the frames of what was ready and write them all in one
go at the exact moment the iterator would suspend, so no event ever waits for
a later one (USERS-ASK 6) and bursts still cost one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["next_ready"]

T = TypeVar("T")


class _NextReady:
    """The awaitable :func:`next_ready` returns: one small object and one frame.

    While the step waits, it relays what the step yields to the task and what
    the task sends or throws back (a result, a cancellation) to the step,
    exactly as ``await`` would have from the start.
    """

    __slots__ = ("_before_wait", "_iterator")

    def __init__(
        self, iterator: AsyncIterator[Any], before_wait: Callable[[], Awaitable[None] | None]
    ):
        self._iterator = iterator
        self._before_wait = before_wait

    def __await__(self) -> Generator[Any, Any, Any]:
        step: Any = self._iterator.__anext__()
        before_wait = self._before_wait
        # An idle stream waits here for a long time: hold nothing it no longer needs
        # (this object, the bound ``send``: benchmarks/NOTES.md, Change 12).
        self._iterator = self._before_wait = None  # type: ignore[assignment]
        del self
        send = getattr(step, "send", None)
        if send is None:  # an awaitable that is not a coroutine: no eager step
            wait = before_wait()
            if wait is not None:
                yield from wait.__await__()
            return (yield from step.__await__())
        try:
            pending = send(None)
        except StopIteration as stop:
            return stop.value
        try:
            wait = before_wait()
            if wait is not None:
                yield from wait.__await__()
        except BaseException:
            # Closing the step would leave an async generator marked as running
            # (its aclose() would then fail); cancel it the way a task would.
            try:
                step.throw(asyncio.CancelledError())
            except BaseException:  # it ends, usually with that cancellation
                pass
            else:
                step.close()
            raise
        del before_wait, wait, send
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:
                try:
                    pending = step.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = step.send(sent)
                except StopIteration as stop:
                    return stop.value


def next_ready(
    iterator: AsyncIterator[T], before_wait: Callable[[], Awaitable[None] | None]
) -> Awaitable[T]:
    """``anext(iterator)``, calling ``before_wait()`` first if, and only if, it must wait.

    ``before_wait()`` returns an awaitable to wait for, or None when it did
    its work at once (``EventStream.flush_nowait``: the frames went to the socket).

    This is how already-produced events are coalesced without delaying any: a
    caller queues the frames of the items that were ready at once and writes
    them in ``before_wait``, the moment the iterator would suspend (for the
    upstream, a timer, or a yield to the loop). The iterator's step is run one
    step eagerly; when it suspends, ``before_wait()`` runs and the step is then
    awaited where it stopped.

    Awaiting it raises ``StopAsyncIteration`` at the end, what the iterator
    raises, and what ``before_wait()`` raises (the pending step then gets a
    cancellation, as if the task had been cancelled while awaiting it).
    """
    return _NextReady(iterator, before_wait)

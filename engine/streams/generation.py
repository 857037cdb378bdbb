"""Live generations by stream id, so one can be stopped on purpose: :class:`Generations`.

"Stop" is not "disconnect" (USERS-ASK 3, 12): the last reader that leaves
cancels its generation, as before (a stream with no resumed reader: its own
client; see :func:`outlive_client`); ``POST /v1/streams/{id}/stop`` ends it deliberately, and
its readers get the stream's normal end with ``finish_reason: "stopped"``, the
partial reply is stored with ``reason: "stopped"``. A :class:`Generation` is
the handle: its task (the one relaying) and an explicit state.

States (h11-style: a transition not in the table raises)::

    streaming --stop()--> stopping --ended("stopped")--> stopped
    streaming --ending()--> ending --ended(x)--> done | failed | interrupted
    streaming --ended(x)--> done | failed | interrupted
    stopping  --ended(x)--> x            (it ended another way first)

``ending``: the upstream's last chunk is in, and the relay stores the reply and
writes the final event. A Stop then has nothing left to stop: it waits for the
end and answers ``done``, rather than cancelling the store and the final event
half-way (which cut the body and stored the reply as an error).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..limits import Admission
    from .response import EventStream

__all__ = ["Generation", "Generations", "outlive_client", "watch_detached"]

#: Ended generations remembered, so a late Stop learns how the stream ended.
MAX_ENDED = 10_000

_ENDINGS = frozenset({"done", "stopped", "failed", "interrupted"})
_TRANSITIONS = {
    "streaming": {"stopping", "ending", *_ENDINGS},
    "stopping": set(_ENDINGS),
    "ending": set(_ENDINGS),
}


class Generation:
    """One relayed stream that can be stopped (see the module docstring)."""

    __slots__ = (
        "_ended",
        "_task",
        "alias",
        "done",
        "lease",
        "owner",
        "state",
        "stream",
        "stream_id",
    )

    def __init__(
        self,
        stream_id: str,
        task: asyncio.Task[Any],
        stream: EventStream | None = None,
        lease: Admission | None = None,
        owner: str | None = None,
        alias: str | None = None,
    ) -> None:
        self.stream_id = stream_id
        self._task = task
        #: The client key that started it (``None``: no keys); only it (or the admin) may stop it.
        self.owner = owner
        #: That key's alias, for the logs and metrics (never the key).
        self.alias = alias
        #: Its key's share of the limits, given back when it ends (however it ends).
        self.lease = lease
        #: The connection it writes to first (a resumed reader may make it outlive it).
        self.stream = stream
        self.state = "streaming"
        #: True once the stream ended (any way).
        self.done = False
        # Made when someone waits (a Stop): an Event per stream would cost every
        # idle stream a deque.
        self._ended: asyncio.Future[None] | None = None

    def _move(self, state: str) -> None:
        if state not in _TRANSITIONS.get(self.state, ()):
            raise RuntimeError(f"generation {self.stream_id}: {self.state} -> {state}")
        self.state = state

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called and the stream has not ended yet."""
        return self.state == "stopping"

    def stop(self) -> bool:
        """Ask the generation to stop; False if it is not streaming any more."""
        if self.state != "streaming":
            return False
        self._move("stopping")
        self._task.cancel()
        return True

    def ending(self) -> None:
        """The upstream is done: from now on a Stop waits for the end instead of cutting it."""
        if self.state == "streaming":
            self._move("ending")

    def set_task(self, task: asyncio.Task[Any]) -> None:
        """The task that relays it, when it is not the one that registered it (detach)."""
        self._task = task

    def abandon(self) -> None:
        """Cancel a detached generation nobody reads any more (it ends ``interrupted``)."""
        if self.state == "streaming":
            self._task.cancel()

    def ended(self, how: str, tokens: int | None = None) -> None:
        """Record how the stream ended (the relay calls it once, on its way out),
        and the ``tokens`` it used, for its key's limits."""
        self._move(how)
        self.done = True
        if self.lease is not None:
            lease, self.lease = self.lease, None
            lease.release(tokens)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def wait_ended(self) -> None:
        if self.done:
            return
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._ended)  # (shared: one waiter leaving must not cancel it)


class Generations:
    """The live generations of an engine by stream id, and how recent ones ended."""

    def __init__(self) -> None:
        self._live: dict[str, Generation] = {}
        # How each ended, and who started it.
        self._ended: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        #: Told of each generation that ends (the Redis stream log records its state).
        self.on_finish: Callable[[Generation], None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    def start(
        self,
        stream_id: str,
        stream: EventStream | None = None,
        lease: Admission | None = None,
        owner: str | None = None,
        alias: str | None = None,
    ) -> Generation:
        """Register the current task as generating ``stream_id`` (first to ``stream``)."""
        task = asyncio.current_task()
        assert task is not None
        generation = Generation(stream_id, task, stream, lease, owner, alias)
        self._live[stream_id] = generation
        return generation

    def finish(self, generation: Generation, how: str, tokens: int | None = None) -> None:
        generation.ended(how, tokens)
        self._live.pop(generation.stream_id, None)
        self._ended[generation.stream_id] = (generation.state, generation.owner)
        while len(self._ended) > MAX_ENDED:
            self._ended.popitem(last=False)
        if self.on_finish is not None:
            self.on_finish(generation)

    def get(self, stream_id: str) -> Generation | None:
        return self._live.get(stream_id)

    def detached(self) -> int:
        """How many live generations outlive their first client (read when metrics are scraped)."""
        return sum(1 for g in self._live.values() if g.stream is not None and g.stream.detached)

    def abandon_all(self) -> list[asyncio.Task[Any]]:
        """Cancel every live generation (the engine is closing); their tasks, to await."""
        live = list(self._live.values())
        for generation in live:
            generation.abandon()
        return [generation._task for generation in live]

    def ended_state(self, stream_id: str, owner: str | None = None) -> str | None:
        """How a recently ended stream ended, or None if unknown (or ``owner``'s it was not:
        ``owner`` ``None`` sees every stream)."""
        ended = self._ended.get(stream_id)
        if ended is None or (owner is not None and ended[1] != owner):
            return None
        return ended[0]


async def watch_detached(generation: Generation, readers: Callable[[], int], window: float) -> None:
    """Abandon ``generation`` once ``readers()`` has been 0 for ``window`` seconds.

    Started when the stream's own client is lost; a reader that comes back
    within the window (a resume) keeps it going, live.
    """
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    # (With no window, still a tick: a follower's leaving is noticed within it.)
    tick = min(1.0, window / 4) if window > 0 else 0.25
    while not generation.done:
        if readers():
            idle_since = loop.time()
        elif loop.time() - idle_since >= window:
            generation.abandon()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(tick):
                await generation.wait_ended()


def outlive_client(
    generation: Generation,
    readers: Callable[[], int],
    window: float,
    spawn: Callable[[Coroutine[Any, Any, None]], object],
) -> None:
    """Let ``generation`` outlive the client of its first connection.

    Once that client is lost, the generation goes on into the log while
    ``readers()`` is above 0, and ``window`` seconds more (``spawn`` runs the
    watch). Two callers: a request that asked to detach (its window), and a
    resume that follows a live stream (window 0: the last reader to leave ends
    the generation, whichever connection it was).
    """
    stream = generation.stream
    if stream is None or stream.is_detachable:
        return

    def on_detach() -> None:
        spawn(watch_detached(generation, readers, window))

    stream.detachable(on_detach)

"""The soak's clients: what each one does in its loop, and what it checks.

One client is one coroutine that picks an action (seeded, so a run can be
repeated), runs it against the gateway, and files its outcome. Every action
knows which outcomes are the expected ones; anything else is an error (an
unexpected status, an exception, a stream that ended the wrong way), and a
resumed or followed stream whose events do not continue the ones already seen
(a gap, a duplicate, a wrong end) is a resume mismatch. Actions:

* ``native_full``: ``POST /v1/chat/stream`` on the mock with a ``session`` (memory
  written: the user message and the reply), read to ``done``, ids 0..N+1 in order.
* ``native_leave``: the same, closed after 0..N-1 chunks (the partial reply is stored).
* ``native_detach_resume``: asks ``detach``, leaves, then ``GET /v1/streams/{id}``
  with ``Last-Event-ID``: the events after the last one seen, live, to ``done``.
* ``native_leave_resume``: no detach: leaves, resumes; the log goes on from the
  last id seen to ``done`` or to ``error`` ``interrupted`` (the generation ended with
  its last reader), never a gap.
* ``native_follow``: a second reader joins mid-stream with ``Last-Event-ID``; both read
  to the end; the follower's events are exactly the primary's after that id.
* ``native_stop``: ``POST /v1/streams/{id}/stop`` mid-stream; the stream ends with
  ``finish_reason: "stopped"`` (or normally, when it ended first: Stop says ``done``).
* ``relay_full``, ``relay_leave``, ``relay_stop``: ``/v1/chat/completions`` relayed
  from the fake OpenAI upstream: read to ``[DONE]`` with the whole scripted text,
  left early, or stopped by its ``X-Stream-Id``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine.sse import Decoder, ServerSentEvent

__all__ = ["ACTIONS", "EXPECTED", "PAUSE", "Load", "Mismatch", "Tally", "UnexpectedEnd"]

#: The fake upstream's reply: 40 chunks of 4 characters.
RELAY_TEXT = "".join(f"w{i:02d} " for i in range(40))
RELAY_MODEL = "openai/gpt-4o-mini"
#: Conversations the native streams write to (several clients share each, and
#: each fills up past the history window, so what goes upstream stops growing).
CONVERSATIONS = 50
#: Seconds a detached stream may go on without a reader (a resume comes within 0.5 s).
DETACH = 15
#: Seconds a client waits between two actions (uniform): with 300 clients the
#: gateway runs at about half its core, busy but not saturated.
PAUSE = (1.0, 3.0)
#: Chunks a native stream asks for, and the mock's milliseconds between them.
NATIVE_TOKENS = (20, 80)
NATIVE_INTERVALS_MS = (20, 30, 40, 50)
#: Longest an action may take before it counts as an error.
ACTION_TIMEOUT = 60.0

# (action, weight): about half native, a third relayed, a tenth stopped.
ACTIONS: tuple[tuple[str, int], ...] = (
    ("native_full", 24),
    ("native_leave", 10),
    ("native_detach_resume", 12),
    ("native_leave_resume", 8),
    ("native_follow", 8),
    ("native_stop", 7),
    ("relay_full", 18),
    ("relay_leave", 7),
    ("relay_stop", 6),
)
#: The outcomes each action may end with; any other is an error.
EXPECTED: dict[str, frozenset[str]] = {
    "native_full": frozenset({"done"}),
    "native_leave": frozenset({"left"}),
    # (resumed_204: the reader had seen the final event already, coalesced with the
    # chunk it left after; a resume from the final event must be told there is no more.)
    "native_detach_resume": frozenset({"resumed_done", "resumed_204"}),
    "native_leave_resume": frozenset({"resumed_done", "resumed_interrupted", "resumed_204"}),
    "native_follow": frozenset({"followed"}),
    "native_stop": frozenset({"stopped", "ended_before_stop"}),
    "relay_full": frozenset({"done"}),
    "relay_leave": frozenset({"left"}),
    "relay_stop": frozenset({"stopped", "ended_before_stop"}),
}


class UnexpectedEnd(Exception):
    """Raised when a stream or an answer is not what the action expects (an error)."""


class Mismatch(Exception):
    """Raised when resumed or followed events do not continue the ones seen before."""


@dataclass
class Tally:
    """What the clients did, read by the sampler while they run."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: int = 0
    mismatches: int = 0
    #: The first few of each, for the report (what broke, not just how often).
    error_examples: list[str] = field(default_factory=list)
    mismatch_examples: list[str] = field(default_factory=list)
    in_flight: int = 0
    #: Actions cut by the end of the run (neither good nor bad).
    cut: int = 0

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    def error(self, action: str, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 20:
            self.error_examples.append(f"{action}: {what}")

    def mismatch(self, action: str, what: str) -> None:
        self.mismatches += 1
        if len(self.mismatch_examples) < 20:
            self.mismatch_examples.append(f"{action}: {what}")


def _n(event: ServerSentEvent, sid: str) -> int:
    """The event number of one of ``sid``'s events (raises UnexpectedEnd for another id)."""
    prefix, _, n = event.id.rpartition(":")
    if prefix != sid or not n.isdigit():
        raise UnexpectedEnd(f"event id {event.id!r} is not one of stream {sid}")
    return int(n)


def _contiguous(events: list[ServerSentEvent], sid: str, first: int) -> None:
    """Raise Mismatch unless ``events`` are numbered first, first+1, ... with one end, last."""
    for k, event in enumerate(events):
        n = _n(event, sid)
        if n != first + k:
            what = "a duplicate" if n < first + k else "a gap"
            raise Mismatch(f"{sid}: event {n} where {first + k} was due ({what})")
        if event.event in ("done", "error") and k != len(events) - 1:
            raise Mismatch(f"{sid}: {event.event} at {n} is not the last event")


def _finish_reason(event: ServerSentEvent) -> str | None:
    reason = json.loads(event.data).get("finish_reason")
    return reason if isinstance(reason, str) else None


class _Reader:
    """The events of one open response, read as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.decoder = Decoder()
        self.events: list[ServerSentEvent] = []

    async def until(self, done: Callable[[list[ServerSentEvent]], bool]) -> None:
        """Read until ``done(events)`` or the end of the body."""
        while not done(self.events):
            data = await self.response.content.readany()
            if not data:
                self.events += self.decoder.flush()
                return
            self.events += self.decoder.feed(data)

    async def to_end(self) -> list[ServerSentEvent]:
        await self.until(lambda _: False)
        return self.events

    def chunks(self) -> int:
        return sum(1 for e in self.events if e.event == "message")


class Load:
    """The clients of one soak: ``await load.client(i, stop)`` for each."""

    def __init__(self, session: aiohttp.ClientSession, base: str, tally: Tally) -> None:
        self.session = session
        self.base = base
        self.tally = tally
        self._actions: dict[str, Callable[[random.Random, int], Awaitable[str]]] = {
            name: getattr(self, name) for name, _ in ACTIONS
        }

    async def client(self, i: int, seed: int, stop: asyncio.Event, ramp: float) -> None:
        """Run actions back to back, with a pause between, until ``stop`` is set."""
        rng = random.Random(seed * 100_003 + i)
        names = [name for name, _ in ACTIONS]
        weights = [weight for _, weight in ACTIONS]
        if await _wait(stop, rng.uniform(0, ramp)):
            return
        while not stop.is_set():
            action = rng.choices(names, weights)[0]
            self.tally.in_flight += 1
            try:
                async with asyncio.timeout(ACTION_TIMEOUT):
                    outcome = await self._actions[action](rng, i)
            except Mismatch as exc:
                self.tally.mismatch(action, str(exc))
            except asyncio.CancelledError:
                self.tally.cut += 1
                raise
            except TimeoutError:
                self.tally.error(action, f"no end within {ACTION_TIMEOUT:.0f} s")
            except (UnexpectedEnd, aiohttp.ClientError, OSError, ValueError) as exc:
                self.tally.error(action, f"{type(exc).__name__}: {exc}"[:300])
            else:
                if outcome in EXPECTED[action]:
                    self.tally.outcomes[(action, outcome)] += 1
                else:
                    self.tally.error(action, f"ended {outcome!r}")
            finally:
                self.tally.in_flight -= 1
            if await _wait(stop, rng.uniform(*PAUSE)):
                return

    # -- native streams (the mock, memory attached) ---------------------------------

    def _native_body(self, rng: random.Random, i: int, **options: Any) -> dict[str, Any]:
        tokens = rng.randint(*NATIVE_TOKENS)
        return {
            "messages": [{"role": "user", "content": f"soak client {i} says {rng.random():.6f}"}],
            "session": {"parent": "SoakChat", "id": f"conversation-{i % CONVERSATIONS}"},
            "options": {
                "max_tokens": tokens,
                "interval_ms": rng.choice(NATIVE_INTERVALS_MS),
                **options,
            },
        }

    async def _open_native(
        self, rng: random.Random, i: int, **options: Any
    ) -> tuple[_Reader, str, int]:
        """A native stream, its start read: (reader, stream id, chunks it will have)."""
        body = self._native_body(rng, i, **options)
        response = await self.session.post(f"{self.base}/v1/chat/stream", json=body)
        if response.status != 200:
            text = (await response.text())[:200]
            response.release()
            raise UnexpectedEnd(f"POST /v1/chat/stream answered {response.status}: {text}")
        reader = _Reader(response)
        try:
            await reader.until(lambda events: bool(events))
            if not reader.events or reader.events[0].event != "start":
                raise UnexpectedEnd(f"the stream began with {reader.events[:1]!r}, not start")
            sid = json.loads(reader.events[0].data)["stream_id"]
        except BaseException:
            response.close()
            raise
        return reader, sid, body["options"]["max_tokens"]

    def _check_whole(self, events: list[ServerSentEvent], sid: str) -> ServerSentEvent:
        """The final event of a whole native stream, once its ids are checked (0..N+1)."""
        if not events or events[-1].event not in ("done", "error"):
            raise UnexpectedEnd(f"{sid} ended after {events[-1:]!r}, with no done or error")
        try:
            _contiguous(events, sid, 0)
        except Mismatch as exc:  # the primary connection itself: an error, not a resume's
            raise UnexpectedEnd(str(exc)) from None
        return events[-1]

    async def native_full(self, rng: random.Random, i: int) -> str:
        reader, sid, tokens = await self._open_native(rng, i)
        async with reader.response:
            end = self._check_whole(await reader.to_end(), sid)
        if end.event != "done" or reader.chunks() != tokens:
            return f"{end.event} after {reader.chunks()}/{tokens} chunks"
        return "done"

    async def native_leave(self, rng: random.Random, i: int) -> str:
        reader, sid, tokens = await self._open_native(rng, i)
        leave_after = rng.randint(0, tokens - 1)
        async with reader.response:
            await reader.until(lambda _: reader.chunks() >= leave_after)
            reader.response.close()  # the connection goes: the gateway must notice, clean up
        return "left"

    async def _leave_and_resume(self, rng: random.Random, i: int, detach: bool) -> str:
        options = {"detach": DETACH} if detach else {}
        reader, sid, tokens = await self._open_native(rng, i, **options)
        leave_after = rng.randint(1, tokens - 1)
        async with reader.response:
            await reader.until(lambda _: reader.chunks() >= leave_after)
            reader.response.close()
        last = _n(reader.events[-1], sid)
        ended = reader.events[-1].event in ("done", "error")
        await asyncio.sleep(rng.uniform(0, 0.5))
        headers = {"Last-Event-ID": f"{sid}:{last}"}
        async with self.session.get(f"{self.base}/v1/streams/{sid}", headers=headers) as resp:
            if ended and resp.status == 204:
                return "resumed_204"
            if resp.status != 200 or ended:
                # 204/404/410 here would mean the log lost a stream that just ran.
                raise Mismatch(f"{sid}: resume from {last} answered {resp.status}")
            events = await _Reader(resp).to_end()
        if not events:
            raise Mismatch(f"{sid}: resume from {last} sent no event")
        _contiguous(events, sid, last + 1)
        end = events[-1]
        if end.event == "done":
            return "resumed_done"
        if end.event == "error" and json.loads(end.data).get("type") == "interrupted":
            return "resumed_interrupted"
        raise Mismatch(f"{sid}: resume from {last} ended with {end.event} {end.data[:120]}")

    async def native_detach_resume(self, rng: random.Random, i: int) -> str:
        return await self._leave_and_resume(rng, i, detach=True)

    async def native_leave_resume(self, rng: random.Random, i: int) -> str:
        return await self._leave_and_resume(rng, i, detach=False)

    async def native_follow(self, rng: random.Random, i: int) -> str:
        reader, sid, tokens = await self._open_native(rng, i)
        join_after = rng.randint(0, tokens - 1)
        async with reader.response:
            await reader.until(lambda _: reader.chunks() >= join_after)
            seen = len(reader.events)
            last = _n(reader.events[-1], sid)
            headers = {"Last-Event-ID": f"{sid}:{last}"}
            follower = await self.session.get(f"{self.base}/v1/streams/{sid}", headers=headers)
            async with follower:
                if follower.status == 204 and reader.events[-1].event in ("done", "error"):
                    return "followed"  # (joined at the very end: nothing to follow)
                if follower.status != 200:
                    raise Mismatch(f"{sid}: following from {last} answered {follower.status}")
                theirs, ours = await asyncio.gather(_Reader(follower).to_end(), reader.to_end())
        self._check_whole(ours, sid)
        expected = [(e.id, e.event, e.data) for e in ours[seen:]]
        got = [(e.id, e.event, e.data) for e in theirs]
        if got != expected:
            _contiguous(theirs, sid, last + 1)  # names the gap or duplicate, if that is it
            raise Mismatch(f"{sid}: the follower from {last} got other events than the primary")
        return "followed"

    async def native_stop(self, rng: random.Random, i: int) -> str:
        reader, sid, tokens = await self._open_native(rng, i)
        stop_after = rng.randint(1, tokens - 1)
        async with reader.response:
            await reader.until(lambda _: reader.chunks() >= stop_after)
            state = await self._stop(sid)
            end = self._check_whole(await reader.to_end(), sid)
        return _stopped(state, end.event == "done" and _finish_reason(end) == "stopped", end)

    async def _stop(self, sid: str) -> str:
        async with self.session.post(f"{self.base}/v1/streams/{sid}/stop") as resp:
            if resp.status != 200:
                raise UnexpectedEnd(f"stop {sid} answered {resp.status}")
            state = (await resp.json())["state"]
        return str(state)

    # -- relayed streams (/v1/chat/completions from the fake OpenAI upstream) ----------

    async def _open_relay(self, rng: random.Random, i: int) -> tuple[_Reader, str]:
        body = {
            "model": RELAY_MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": f"soak client {i} asks {rng.random():.6f}"}],
        }
        response = await self.session.post(f"{self.base}/v1/chat/completions", json=body)
        if response.status != 200:
            text = (await response.text())[:200]
            response.release()
            raise UnexpectedEnd(f"POST /v1/chat/completions answered {response.status}: {text}")
        return _Reader(response), response.headers.get("X-Stream-Id", "")

    async def relay_full(self, rng: random.Random, i: int) -> str:
        reader, _ = await self._open_relay(rng, i)
        async with reader.response:
            events = await reader.to_end()
        text, reason, done = _completion(events)
        if not done or reason != "stop" or text != RELAY_TEXT:
            return f"ended with finish {reason!r}, [DONE] {done}, {len(text)} characters"
        return "done"

    async def relay_leave(self, rng: random.Random, i: int) -> str:
        reader, _ = await self._open_relay(rng, i)
        leave_after = rng.randint(0, 30)
        async with reader.response:
            await reader.until(lambda _: reader.chunks() >= leave_after)
            reader.response.close()
        return "left"

    async def relay_stop(self, rng: random.Random, i: int) -> str:
        reader, sid = await self._open_relay(rng, i)
        stop_after = rng.randint(2, 30)
        async with reader.response:
            await reader.until(lambda _: reader.chunks() >= stop_after)
            state = await self._stop(sid)
            events = await reader.to_end()
        _, reason, done = _completion(events)
        if not done:
            raise UnexpectedEnd(f"{sid} ended with no [DONE] after stop ({state})")
        return _stopped(state, reason == "stopped", events[-1])


def _stopped(state: str, stopped: bool, end: ServerSentEvent) -> str:
    """The outcome of a Stop: what it answered and how the stream ended must agree."""
    if state == "stopped" and stopped:
        return "stopped"
    if state == "done" and not stopped:
        return "ended_before_stop"
    return f"stop answered {state!r}, the stream ended {end.event} {end.data[:80]}"


def _completion(events: list[ServerSentEvent]) -> tuple[str, str | None, bool]:
    """(the text, the last finish reason, whether [DONE] came last) of a completion stream."""
    text: list[str] = []
    reason = None
    for event in events:
        if event.data == "[DONE]":
            continue
        for choice in json.loads(event.data).get("choices", ()):
            text.append(choice.get("delta", {}).get("content") or "")
            reason = choice.get("finish_reason") or reason
    return "".join(text), reason, bool(events) and events[-1].data == "[DONE]"


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set; True if it was."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True

"""Stop and follow across boxes, over the Redis stream log's control channel.

One pub/sub channel (``<prefix>control``) for every worker of every box:

* ``stop <sid> <nonce> <owner>`` (owner empty: the admin, or an open
  gateway): any stream, logged or not (``/v1/chat/completions`` and
  ``/v1/messages`` streams have no log, so no ``<sid>:meta`` says who
  produces them). The worker that holds a live generation ``sid`` started by
  ``owner`` (any, for an empty one) stops it, as a local ``POST
  /v1/streams/{id}/stop`` would (its upstream closed at once), and answers in
  ``<sid>:stop:<nonce>``: ``stopping`` at once, then how it ended. A worker
  that holds no live one but remembers how ``owner``'s ``sid`` ended writes
  that. Everyone else stays silent, another key's stream included: the asker
  answers 404 after :data:`WINDOW` s with no answer, as for an unknown id, so
  the wait does not tell one from the other either.
* ``stop <sid>`` (the old form; still sent for a logged stream, which older
  boxes understand): the producer stops it, no questions asked (the asker
  checked the owner in ``<sid>:meta``), and its writer records how it ended
  there (``state``), which :func:`stop_elsewhere` waits for;
* ``follow <sid>``: a box now has readers following ``sid`` live; the producer
  lets the generation outlive its first client while they read (their box
  renews ``<sid>:followed`` each tick), as it does for a local resume.

Why a key per request (the nonce) rather than one per stream: two Stops of one
stream by two keys must not read each other's answer (another key's would
read ``stopped``), and nothing needs clearing before asking.

A message can be missed (a subscriber reconnecting after Redis came back), so
the asker publishes again: every :data:`REPUBLISH` s until an answer or its
meta hash appears, then (a logged stream) each second until it ended, its
producer's lease lapsed, or :data:`STOP_WAIT` passed. Nothing here runs per
chunk: a Stop costs a few commands a poll while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final

from ..errors import StreamLogUnavailable
from .generation import outlive_client
from .redis_follow import LAG, RETRY_AFTER, UNREACHABLE
from .redis_writer import ERRORS

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .generation import Generation
    from .redis_log import RedisRegistry

__all__ = ["REPUBLISH", "STOP_WAIT", "WINDOW", "cancel_all", "listen", "stop_elsewhere"]

log = logging.getLogger("engine.stream")

#: Seconds a Stop waits for the producing worker to record how its stream ended.
STOP_WAIT: Final = 5.0
#: Seconds between two looks at the stream's meta hash (or answer key) meanwhile.
POLL: Final = 0.02
#: Seconds a Stop of a stream with no meta hash waits for any worker to answer
#: before it is 404. A subscriber hears a message within a round trip; this is
#: as long as a just-started stream's first write may take to reach Redis
#: (redis_follow.LAG), so a logged one whose producer does not answer (an older
#: box) is still found by its meta hash, and an unknown stream's Stop and
#: resume wait alike.
WINDOW: Final = LAG
#: Seconds between two publications of that Stop until it is answered (a
#: subscriber that was reconnecting hears a later one).
REPUBLISH: Final = 0.25
#: Milliseconds an answer key lives: longer than any asker waits for it.
ANSWER_TTL_MS: Final = int((STOP_WAIT + WINDOW) * 2000)

# The ids this gateway makes (uuid hex, chatcmpl-, msg_, resp_, a -w<slot> tag):
# anything else is no stream, and would not survive a space-separated message.
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


async def listen(registry: RedisRegistry) -> None:
    """Hear Stops and follows of the streams this worker produces, until cancelled."""
    channel = registry.prefix + "control"
    answers: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                async with registry.follower.blocking.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=registry.tick
                        )
                        if message is None or message.get("type") != "message":
                            continue
                        work = handle(registry, message["data"])
                        if work is not None:
                            task = asyncio.get_running_loop().create_task(work)
                            answers.add(task)
                            task.add_done_callback(answers.discard)
            except ERRORS as exc:
                log.debug("stream log control channel lost (%s); subscribing again", exc)
                await asyncio.sleep(registry.tick)
    finally:
        await cancel_all(answers)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they ended, cancelling again any that goes on:
    redis-py (8.1) can swallow a cancellation that lands mid-command, the call
    then returning as if none came, and a loop around it would run forever."""
    tasks = list(tasks)
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=POLL)
    await asyncio.gather(*tasks, return_exceptions=True)  # (their errors, retrieved)


def handle(registry: RedisRegistry, data: bytes | str) -> Coroutine[Any, Any, None] | None:
    """Act on one control message (one for a stream produced elsewhere changes nothing);
    the answer to write, if any, to run in a task."""
    from .redis_log import RedisStreamLog

    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    kind, _, rest = text.partition(" ")
    stream_id, _, asked = rest.partition(" ")
    generations = registry.generations
    generation = generations.get(stream_id) if generations is not None else None
    if kind == "stop" and asked:
        return _stop(registry, stream_id, asked)
    stream_log = registry.get(stream_id)
    if kind == "stop" and generation is not None:
        log.info("stream %s stopped from another box", stream_id)
        generation.stop()
    elif kind == "follow" and isinstance(stream_log, RedisStreamLog) and not stream_log.ended:
        # A reader elsewhere: the generation outlives its client while it reads.
        stream_log.followed = stream_log.remote_readers = True
        registry.followed.add(stream_log)
        if generation is not None and registry.spawn is not None:
            outlive_client(generation, lambda: stream_log.readers, 0, registry.spawn)
    return None


def _stop(registry: RedisRegistry, stream_id: str, asked: str) -> Coroutine[Any, Any, None] | None:
    """``stop <sid> <nonce> <owner>``: stop ``owner``'s live generation here and answer, or
    answer how it ended; None (silence) if this worker knows no such stream of ``owner``."""
    nonce, _, owner = asked.partition(" ")
    generations = registry.generations
    if not nonce or generations is None:
        return None
    key = f"{registry.prefix}{stream_id}:stop:{nonce}"
    who = owner or None  # (empty: the admin, or an open gateway, who see every stream)
    generation = generations.get(stream_id)
    if generation is not None:
        if who is not None and generation.owner != who:
            return None  # another key's: silence, as for an unknown stream
        if generation.stop():
            log.info("stream %s stopped from another worker or box", stream_id)
        return _answer(registry.client, key, generation)
    state = generations.ended_state(stream_id, who)
    return None if state is None else _write(registry.client, key, state)


async def _answer(client: aioredis.Redis, key: str, generation: Generation) -> None:
    """Acknowledge a Stop at once, then write how the generation ended (within STOP_WAIT)."""
    with contextlib.suppress(*ERRORS):
        if not generation.done:
            # NX: a republished Stop must not turn an answer already given back.
            await client.set(key, b"stopping", px=ANSWER_TTL_MS, nx=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_WAIT):
                    await generation.wait_ended()
        await client.set(key, generation.state.encode(), px=ANSWER_TTL_MS)


async def _write(client: aioredis.Redis, key: str, state: str) -> None:
    with contextlib.suppress(*ERRORS):
        await client.set(key, state.encode(), px=ANSWER_TTL_MS)


async def stop_elsewhere(registry: RedisRegistry, stream_id: str, owner: str | None) -> str | None:
    """Stop a stream another worker produces: its state once it ended (``stopped``, or
    how it ended before; ``interrupted`` if its producer is gone), ``stopping`` if it
    did not end within :data:`STOP_WAIT` s, or None if unknown (or not ``owner``'s;
    ``None`` sees every stream). Raises :class:`StreamLogUnavailable` (503) while
    Redis cannot be reached."""
    if not _STREAM_ID.fullmatch(stream_id):
        return None
    meta_key = f"{registry.prefix}{stream_id}:meta"
    try:
        meta: dict[bytes, bytes] = await registry.client.hgetall(meta_key)  # type: ignore[assignment]
        if not meta.get(b"worker"):
            # No log (a completions or messages stream), or its first write is due.
            state, meta = await _ask(registry, stream_id, owner)
            if state is not None or not meta.get(b"worker"):
                return state
        return await _stop_logged(registry, stream_id, owner, meta)
    except ERRORS as exc:
        raise StreamLogUnavailable(UNREACHABLE, retry_after=RETRY_AFTER) from exc


async def _ask(
    registry: RedisRegistry, stream_id: str, owner: str | None
) -> tuple[str | None, dict[bytes, bytes]]:
    """Ask every worker to stop ``owner``'s ``stream_id`` (``stop <sid> <nonce> <owner>``):
    the state its holder answers (``stopping`` if it did not end within STOP_WAIT),
    or None, with the stream's meta hash if it appeared meanwhile (a logged stream)."""
    client, prefix = registry.client, registry.prefix
    nonce = secrets.token_hex(8)
    key, meta_key = f"{prefix}{stream_id}:stop:{nonce}", f"{prefix}{stream_id}:meta"
    message = f"stop {stream_id} {nonce} {owner or ''}"
    loop = asyncio.get_running_loop()
    started, asked = loop.time(), -REPUBLISH
    answer: str | None = None
    while True:
        now = loop.time()
        if answer is None and now - asked >= REPUBLISH:
            await client.publish(prefix + "control", message)
            asked = now
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.hgetall(meta_key)
            got, meta = await pipe.execute()
        if got is not None:
            answer = got.decode(errors="replace")
            if answer != "stopping":
                return answer, meta
        elif meta.get(b"worker"):
            return None, meta  # a logged stream: its meta hash says the rest
        elif now - started >= WINDOW:
            return None, meta  # nobody holds it (or not for this key)
        if now - started >= STOP_WAIT:
            return answer, meta
        await asyncio.sleep(POLL)


async def _stop_logged(
    registry: RedisRegistry, stream_id: str, owner: str | None, meta: dict[bytes, bytes]
) -> str | None:
    """Stop a logged stream through its meta hash (who produces it, whose it is, its state)."""
    client, prefix = registry.client, registry.prefix
    meta_key = f"{prefix}{stream_id}:meta"
    worker = meta[b"worker"].decode()
    if owner is not None and meta.get(b"owner", b"").decode() != owner:
        return None
    loop = asyncio.get_running_loop()
    started = loop.time()
    asked = -1.0
    while True:
        if b"state" in meta:
            return meta[b"state"].decode()
        now = loop.time()
        if b"final" in meta:
            if now - started >= 1.0:
                return "ended"  # (how it ended was never recorded)
        elif now - asked >= 1.0:
            if asked >= 0 and not await client.exists(f"{prefix}worker:{worker}"):
                return "interrupted"  # its producer is gone
            await client.publish(prefix + "control", f"stop {stream_id}")
            asked = now
        if now - started >= STOP_WAIT:
            return "stopping"
        await asyncio.sleep(POLL)
        meta = await client.hgetall(meta_key)  # type: ignore[assignment]

"""Stop and follow across boxes, over the Redis stream log's control channel.

One pub/sub channel (``<prefix>control``) for every worker of every box:

* ``stop <sid>``: the worker that produces ``sid`` stops its generation, as a
  local ``POST /v1/streams/{id}/stop`` would (its upstream closed at once), and
  its writer records how it ended in ``<sid>:meta`` (``state``), which
  :func:`stop_elsewhere`, on the box that was asked, waits for;
* ``follow <sid>``: a box now has readers following ``sid`` live; the producer
  lets the generation outlive its first client while they read (their box
  renews ``<sid>:followed`` each tick), as it does for a local resume.

A message can be missed (a subscriber reconnecting after Redis came back), so
:func:`stop_elsewhere` publishes again each second until the stream ended, its
producer's lease lapsed, or :data:`STOP_WAIT` passed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from ..errors import StreamLogUnavailable
from .generation import outlive_client
from .redis_follow import LAG, RETRY_AFTER, UNREACHABLE
from .redis_writer import ERRORS

if TYPE_CHECKING:
    from .redis_log import RedisRegistry

__all__ = ["STOP_WAIT", "listen", "stop_elsewhere"]

log = logging.getLogger("engine.stream")

#: Seconds a Stop waits for the producing worker to record how its stream ended.
STOP_WAIT: Final = 5.0
#: Seconds between two looks at the stream's meta hash meanwhile.
POLL: Final = 0.02


async def listen(registry: RedisRegistry) -> None:
    """Hear Stops and follows of the streams this worker produces, until cancelled."""
    channel = registry.prefix + "control"
    while True:
        try:
            async with registry.follower.blocking.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=registry.tick
                    )
                    if message is not None and message.get("type") == "message":
                        handle(registry, message["data"])
        except ERRORS as exc:
            log.debug("stream log control channel lost (%s); subscribing again", exc)
            await asyncio.sleep(registry.tick)


def handle(registry: RedisRegistry, data: bytes | str) -> None:
    """Act on one control message (one for a stream produced elsewhere changes nothing)."""
    from .redis_log import RedisStreamLog

    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    kind, _, stream_id = text.partition(" ")
    generations = registry.generations
    generation = generations.get(stream_id) if generations is not None else None
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


async def stop_elsewhere(registry: RedisRegistry, stream_id: str, owner: str | None) -> str | None:
    """Stop a stream another worker produces: its state once it ended (``stopped``, or
    how it ended before; ``interrupted`` if its producer is gone), ``stopping`` if it
    did not end within :data:`STOP_WAIT` s, or None if unknown (or not ``owner``'s;
    ``None`` sees every stream). Raises :class:`StreamLogUnavailable` (503) while
    Redis cannot be reached."""
    client, prefix = registry.client, registry.prefix
    meta_key = f"{prefix}{stream_id}:meta"
    loop = asyncio.get_running_loop()
    try:
        meta: dict[bytes, bytes] = await client.hgetall(meta_key)  # type: ignore[assignment]
        looked = loop.time()
        while not meta.get(b"worker") and loop.time() - looked < LAG:
            await asyncio.sleep(POLL)  # (just started: its first batch is due)
            meta = await client.hgetall(meta_key)  # type: ignore[assignment]
        worker = meta.get(b"worker", b"").decode()
        if not worker or (owner is not None and meta.get(b"owner", b"").decode() != owner):
            return None
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
    except ERRORS as exc:
        raise StreamLogUnavailable(UNREACHABLE, retry_after=RETRY_AFTER) from exc

"""Stream logs in Redis Streams, shared by every worker and box: :class:`RedisRegistry`.

``stream_log = "redis://host:port/db"`` (``--stream-log``, ``SSE_ENGINE_STREAM_LOG``)
keeps each native stream's log in Redis as well as in its worker's memory, so
a resume by ``Last-Event-ID`` or a Stop lands on any worker of any box
(DESIGN.md, "Redis Streams log"); a Stop does for unlogged streams too
(``/v1/chat/completions``, ``/v1/messages``: engine.streams.redis_control).
Needs the ``[redis]`` extra.

Layout, under :data:`KEY_PREFIX`::

    <sid>               a stream: event n > 0 is entry 0-n (field f, the final
                        one e), the start event 0 rides in entry 0-1 (field s);
                        XADD MAXLEN ~ stream_log_maxlen
    <sid>:meta          hash: owner (the client key's id, "" for none), worker
                        (who produces it), start (event 0), final (n, once
                        ended), state (how its generation ended), broken (1:
                        events were lost, Redis was slow or down)
    <sid>:followed      set (1 s) by a box that has readers following it live
    <sid>:stop:<nonce>  one Stop's answer, logged stream or not: "stopping", then
                        how it ended (seconds)
    worker:<id>         the producing worker's lease (:data:`LEASE` s, renewed each :data:`TICK`)
    control             pub/sub: "stop <sid> <nonce> <owner>" to whoever holds any
                        stream (completions too), "stop <sid>", "follow <sid>" to
                        the producing worker

Both keys of a stream expire ``resume_ttl`` after its end (a live one, a
minute at least after its latest write): a stream whose producer died stays
replayable until then.

Who does what, per worker: the relay appends to a :class:`RedisStreamLog`
as to any log (a list append per chunk), and each burst is handed to the one
:class:`~engine.streams.redis_writer.Writer` (no await); a tick renews this
worker's lease; a subscriber hears Stops and follows for the streams it
produces (engine.streams.redis_control); one
:class:`~engine.streams.redis_follow.Follower` serves every reader of streams
produced elsewhere over one blocking connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import InvalidFields
from ..memory.base import redact_url
from .log import Registry, StreamLog
from .redis_control import cancel_all, listen, stop_elsewhere
from .redis_follow import Follower
from .redis_writer import ERRORS, Writer

if TYPE_CHECKING:
    from .generation import Generation, Generations

__all__ = ["KEY_PREFIX", "LEASE", "TICK", "RedisRegistry", "RedisStreamLog", "check_url"]

log = logging.getLogger("engine.stream")

KEY_PREFIX: Final = "sse-engine:stream:"
#: Seconds a worker's lease lasts: a reader elsewhere learns that its producer
#: died within about this (plus a tick).
LEASE: Final = 3.0
#: Seconds between two renewals of the lease (and between a follower's checks).
TICK: Final = 1.0
#: Seconds a command may take before Redis counts as slow (the writer's batch too).
TIMEOUT: Final = 2.0
#: Seconds closing waits for pending writes (the final events of the last streams).
DRAIN: Final = 2.0


def check_url(url: str) -> str:
    """``url`` with its password hidden, once checked to be a Redis URL.

    Raises :class:`~engine.errors.InvalidFields`, a clear start-up error, for
    anything else (a missing host, a database that is not a number).
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    db = parts.path.lstrip("/") if parts is not None else ""
    if (
        parts is None
        or parts.scheme.lower() not in ("redis", "rediss")
        or not parts.hostname
        or (db and not db.isdigit())
        or (port is not None and not 0 < port < 65536)
    ):
        raise InvalidFields(
            f"stream_log must be redis://host:port/db (or rediss://...), not {shown!r}"
        )
    return shown


def connect(url: str, timeout: float, connections: int, name: str) -> aioredis.Redis:
    """A client with no retries: a stream log that fails says so at once (callers mark
    streams unlogged or answer 503; a retry would hold them). ``name`` shows in
    ``CLIENT LIST`` (which worker holds which connection)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        client_name=name,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)


class RedisStreamLog(StreamLog):
    """A log kept in memory, as any, with each burst also handed to the writer.

    ``readers`` counts this worker's readers and, while a box elsewhere says it
    follows the stream live (``<sid>:followed``), one more: a generation that
    outlives its client (``options.detach``, a follow) goes on while anyone,
    anywhere, reads it.
    """

    __slots__ = ("_local", "_writer", "followed", "remote_readers", "start_frame", "unlogged")

    def __init__(
        self,
        stream_id: str,
        max_bytes: int,
        registry: Registry,
        owner: str | None,
        writer: Writer,
    ) -> None:
        self._local = 0
        self._writer = writer
        #: True once another box asked to follow it (its ``followed`` key is then read).
        self.followed = False
        self.remote_readers = False
        #: Event 0's frame (it rides along in entry 0-1).
        self.start_frame: bytes | None = None
        #: True once events were lost on the way to Redis: no more writes.
        self.unlogged = False
        super().__init__(stream_id, max_bytes, registry, owner)

    @property
    def readers(self) -> int:
        return self._local + self.remote_readers

    @readers.setter
    def readers(self, value: int) -> None:
        self._local = value

    def append(self, frame: bytes) -> None:
        n0 = self.next
        StreamLog.append(self, frame)
        if not self.unlogged:
            if n0 == 0:
                self.start_frame = frame
            self._writer.add(self, n0, [frame], frame)

    def extend(self, frames: list[bytes], joined: bytes | None = None) -> None:
        n0 = self.next
        StreamLog.extend(self, frames, joined)
        if not self.unlogged:
            if n0 == 0:
                self.start_frame = frames[0]
            self._writer.add(self, n0, frames, b"".join(frames) if joined is None else joined)

    def end(self, frame: bytes) -> None:
        if self.final is not None:
            return
        StreamLog.end(self, frame)  # (through append: the frame is handed over)
        if not self.unlogged:
            self._writer.ended(self)


class RedisRegistry(Registry):
    """The logs of one worker's streams, each also in Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        max_bytes: int,
        total_bytes: int,
        ttl: float,
        maxlen: int = 20_000,
        generations: Generations | None = None,
        spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None,
        prefix: str = KEY_PREFIX,
        lease: float = LEASE,
        tick: float = TICK,
    ) -> None:
        super().__init__(max_bytes=max_bytes, total_bytes=total_bytes, ttl=ttl)
        self.url = check_url(url)
        self.prefix = prefix
        self.lease = lease
        self.tick = tick
        #: This worker's id in the log (``<sid>:meta`` worker, its lease key).
        self.worker = secrets.token_hex(8)
        self.client = connect(url, TIMEOUT, 8, f"sse-engine:{self.worker}")
        self.writer = Writer(
            self.client,
            prefix,
            worker=self.worker,
            ttl=ttl,
            maxlen=maxlen,
            on_unlogged=self._on_unlogged,
        )
        self.follower = Follower(self, url)
        self.unlogged = 0
        #: The engine's generations (a Stop or a follow from elsewhere finds them there).
        self.generations = generations
        #: Runs a watch in a task the engine owns (engine.gateway.Engine.spawn).
        self.spawn = spawn
        self._tasks: list[asyncio.Task[None]] = []
        #: Live logs that a box elsewhere follows (their ``followed`` key is read each tick).
        self.followed: set[RedisStreamLog] = set()
        if generations is not None:
            generations.on_finish = self._finished
        # From the start, not the first log: a Stop may name any stream this
        # worker runs, logged or not (redis_control). Made outside a running
        # loop (an embedder's web.run_app), the app's start-up calls start().
        with contextlib.suppress(RuntimeError):
            self.start()

    # -- producing -------------------------------------------------------------

    def open(self, stream_id: str, owner: str | None = None) -> RedisStreamLog:
        stream_log = RedisStreamLog(stream_id, self.max_bytes, self, owner, self.writer)
        self._logs[stream_id] = stream_log
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep())
        self.start()
        self.writer.opened(stream_log)
        return stream_log

    def start(self) -> None:
        """The writer, the lease and the control listener (once; needs a running loop)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        for work in (self.writer.run(), self._renew(), listen(self)):
            self._tasks.append(loop.create_task(work))

    def _on_unlogged(self, stream_log: StreamLog) -> None:
        self.unlogged += 1
        log.warning("stream %s is no longer resumable on other boxes", stream_log.stream_id)

    def _finished(self, generation: Generation) -> None:
        if isinstance(self._logs.get(generation.stream_id), RedisStreamLog):
            self.writer.state(generation.stream_id, generation.state)

    async def _renew(self) -> None:
        """Renew this worker's lease; read whether streams followed elsewhere still are."""
        lease_key, lease_ms = f"{self.prefix}worker:{self.worker}", int(self.lease * 1000)
        failing = False
        while True:
            followed = [stream_log for stream_log in self.followed if not stream_log.ended]
            self.followed = set(followed)
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.set(lease_key, b"1", px=lease_ms)
                    for stream_log in followed:
                        pipe.exists(f"{self.prefix}{stream_log.stream_id}:followed")
                    replies = await pipe.execute()
            except ERRORS as exc:
                if not failing:
                    log.warning("could not renew the stream log lease: %s", exc)
                failing = True
            else:
                failing = False
                for stream_log, seen in zip(followed, replies[1:], strict=True):
                    stream_log.remote_readers = bool(seen)
            await asyncio.sleep(self.tick)

    # -- reading and stopping elsewhere ----------------------------------------

    async def fetch(self, stream_id: str) -> StreamLog | None:
        return await self.follower.fetch(stream_id)

    async def stop(self, stream_id: str, owner: str | None) -> str | None:
        return await stop_elsewhere(self, stream_id, owner)

    async def aclose(self) -> None:
        await self.writer.drain(DRAIN)
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        if tasks:
            with contextlib.suppress(*ERRORS):
                await self.client.delete(f"{self.prefix}worker:{self.worker}")
        await self.follower.aclose()
        with contextlib.suppress(*ERRORS):
            await self.client.aclose()
        await super().aclose()

"""Reading streams produced elsewhere from the Redis stream log: :class:`Follower`.

A resume that lands on a worker that does not produce the stream gets a
:class:`Mirror`: an in-memory log like the producer's, filled from Redis
(``XRANGE`` of what the stream holds, then ``XREAD BLOCK`` for the rest), so
the resume route serves it with the code it serves local logs with: a byte
copy of what was missed, then the live rest. Every reader of the same stream
on this worker shares one mirror, and one task with one connection reads for
every mirror (a thousand followers, one blocking ``XREAD`` naming their
streams): followers cost Redis nothing per reader.

On a tick (:data:`~engine.streams.redis_log.TICK`) the task also checks what
a blocking read cannot tell: the producing worker's lease (lapsed: the
mirror ends with ``event: error`` type ``producer_lost`` after one last read,
and a later resume gets the same), a stream marked ``broken`` or deleted (an
error event, never a hang), and it renews ``<sid>:followed`` for streams
read here, so their producer keeps them going. Mirrors nobody reads are
dropped within two ticks.

Stops and follows travel on the control channel (engine.streams.redis_control).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from ..errors import EngineError, ProducerLost, ResumeGap, StreamLogUnavailable
from ..sse import encode_json
from ..wire import ErrorEvent
from .log import StreamLog
from .redis_writer import ERRORS

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .redis_log import RedisRegistry

__all__ = ["BLOCK", "LAG", "RETRY_AFTER", "UNREACHABLE", "Follower", "Mirror"]

log = logging.getLogger("engine.stream")

#: Seconds one blocking read waits (a mirror added meanwhile waits at most this).
BLOCK: Final = 0.25
#: Entries one read returns at most, all streams together.
COUNT: Final = 1024
#: Seconds a client is told to wait (Retry-After) while the stream log cannot answer.
RETRY_AFTER: Final = 2.0

#: Streams one pipeline reads at most (resumes that arrive together).
LOAD_BATCH: Final = 256
#: Seconds a resume or Stop waits for a stream it does not find: one started
#: elsewhere a moment ago is in Redis one batch later (BATCH_DELAY and a round
#: trip; under a producer's full load, a few hundred ms: benchmarks/NOTES.md),
#: so an unknown stream's 404 comes this late.
LAG: Final = 1.0
#: Seconds between two looks meanwhile.
LAG_STEP: Final = 0.02
LAG_TRIES: Final = int(LAG / LAG_STEP)

UNREACHABLE = "the stream log (Redis) cannot be reached: try again in a moment"


class Mirror(StreamLog):
    """This worker's copy of a log produced elsewhere (see the module docstring)."""

    remote = True

    __slots__ = ("idle", "key", "worker")

    def __init__(self, stream_id: str, max_bytes: int, owner: str | None, key: bytes) -> None:
        super().__init__(stream_id, max_bytes, None, owner)
        self.key = key
        self.worker = ""
        self.idle = 0  # ticks in a row with no reader


def _number(entry_id: bytes | str) -> int | None:
    """``n`` of an entry id ``0-n`` of ours; None for any other."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(seq) if ms == "0" and seq.isdigit() else None


class Follower:
    """One worker's reader of streams produced elsewhere (see the module docstring)."""

    def __init__(self, registry: RedisRegistry, url: str) -> None:
        from .redis_log import TIMEOUT, connect

        self._registry = registry
        #: For the blocking read and the control subscription (not the writer's pool).
        self.blocking: aioredis.Redis = connect(
            url, BLOCK + TIMEOUT, 4, f"sse-engine:{registry.worker}:follow"
        )
        self._mirrors: dict[str, Mirror] = {}
        self._live: dict[bytes, Mirror] = {}  # the mirrors not ended yet, by stream key
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Resumes waiting for a stream to be read, and the task that reads them.
        self._loading: dict[str, asyncio.Future[Mirror | None]] = {}
        self._wanted: list[str] = []
        self._loader: asyncio.Task[None] | None = None
        self._announcing: list[str] = []  # mirrors made live: their producers are told

    def __len__(self) -> int:
        return len(self._mirrors)

    # -- a resume --------------------------------------------------------------

    async def fetch(self, stream_id: str) -> Mirror | None:
        """The mirror of ``stream_id``, or None if the log has no such stream.

        Resumes arriving together are read together (:meth:`_load_all`: one
        pipeline for them all). Raises :class:`StreamLogUnavailable` (503) when
        Redis cannot be reached, or when the stream lost events on their way to
        Redis.
        """
        mirror = self._mirrors.get(stream_id)
        if mirror is not None:
            return mirror
        waiter = self._loading.get(stream_id)
        if waiter is None:
            waiter = self._loading[stream_id] = asyncio.get_running_loop().create_future()
            self._wanted.append(stream_id)
            if self._loader is None:
                self._loader = asyncio.get_running_loop().create_task(self._load_all())
        # Shielded: shared by every resume of the stream, and one leaving must not cancel it.
        return await asyncio.shield(waiter)

    async def _load_all(self) -> None:
        """Read what the resumes waiting for want, a pipeline per :data:`LOAD_BATCH` streams."""
        tries: dict[str, int] = {}
        try:
            while self._wanted:
                await asyncio.sleep(0)  # (the resumes of this loop step join)
                wanted, self._wanted = self._wanted[:LOAD_BATCH], self._wanted[LOAD_BATCH:]
                try:
                    found = await self._read_logs(wanted)
                except ERRORS as exc:
                    for stream_id in wanted:
                        error = StreamLogUnavailable(UNREACHABLE, retry_after=RETRY_AFTER)
                        error.__cause__ = exc
                        self._settle(stream_id, error)
                    continue
                later = []
                for stream_id, (meta, entries, alive) in zip(wanted, found, strict=True):
                    if not meta.get(b"worker") and tries.get(stream_id, 0) < LAG_TRIES:
                        tries[stream_id] = tries.get(stream_id, 0) + 1
                        later.append(stream_id)  # (just started: its first batch is due)
                        continue
                    try:
                        self._settle(stream_id, self._mirror(stream_id, meta, entries, alive))
                    except StreamLogUnavailable as exc:
                        self._settle(stream_id, exc)
                await self._announce()
                if later:
                    await asyncio.sleep(LAG_STEP)
                    self._wanted += later
        finally:
            self._loader = None
            for stream_id in list(self._loading):  # (cancelled: the engine is closing)
                self._settle(stream_id, StreamLogUnavailable(UNREACHABLE))

    async def _read_logs(self, wanted: list[str]) -> list[tuple[dict[bytes, bytes], Any, bool]]:
        """Each stream's meta hash, entries, and whether its producer's lease holds."""
        registry = self._registry
        prefix = registry.prefix
        async with registry.client.pipeline(transaction=False) as pipe:
            for stream_id in wanted:
                pipe.hgetall(f"{prefix}{stream_id}:meta")
                pipe.xrange(prefix + stream_id, "-", "+")
            replies = await pipe.execute()
        metas, entries = replies[0::2], replies[1::2]
        workers = sorted(
            {m[b"worker"].decode() for m in metas if m.get(b"worker") and b"final" not in m}
        )
        alive: dict[str, bool] = {}
        if workers:
            async with registry.client.pipeline(transaction=False) as pipe:
                for worker in workers:
                    pipe.exists(f"{prefix}worker:{worker}")
                alive = dict(zip(workers, map(bool, await pipe.execute()), strict=True))
        return [
            (meta, held, alive.get(meta.get(b"worker", b"").decode(), True))
            for meta, held in zip(metas, entries, strict=True)
        ]

    def _settle(self, stream_id: str, result: Mirror | None | BaseException) -> None:
        waiter = self._loading.pop(stream_id, None)
        if waiter is None or waiter.done():
            return
        if isinstance(result, BaseException):
            waiter.set_exception(result)
            waiter.exception()  # (retrieved: a resume that left must not log it)
        else:
            waiter.set_result(result)

    def _mirror(
        self, stream_id: str, meta: dict[bytes, bytes], entries: Any, alive: bool
    ) -> Mirror | None:
        mirror = self._mirrors.get(stream_id)
        if mirror is not None:
            return mirror
        worker = meta.get(b"worker", b"").decode()
        if not worker:
            return None  # unknown, expired, or not one of ours
        if meta.get(b"broken"):
            raise StreamLogUnavailable(
                f"events of the stream {stream_id} were not logged while Redis was slow "
                "or unreachable: only the box that produces it can resume it",
                retry_after=RETRY_AFTER,
            )
        owner = meta.get(b"owner", b"").decode() or None
        mirror = Mirror(
            stream_id, self._registry.max_bytes, owner, (self._registry.prefix + stream_id).encode()
        )
        mirror.worker = worker
        self._load(mirror, meta.get(b"start"), entries)
        self._mirrors[stream_id] = mirror
        if not mirror.ended:
            if alive:
                self._live[mirror.key] = mirror
                self._announcing.append(stream_id)
            else:
                self._lost(mirror)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._changed.set()
        return mirror

    async def _announce(self) -> None:
        """Tell the producers that readers here follow them (they then outlive their clients)."""
        announcing, self._announcing = self._announcing, []
        if not announcing:
            return
        registry = self._registry
        with contextlib.suppress(*ERRORS):
            async with registry.client.pipeline(transaction=False) as pipe:
                for stream_id in announcing:
                    pipe.set(
                        f"{registry.prefix}{stream_id}:followed",
                        b"1",
                        px=int(registry.lease * 1000),
                    )
                    pipe.publish(registry.prefix + "control", f"follow {stream_id}")
                await pipe.execute()

    def _load(self, mirror: Mirror, start: bytes | None, entries: Iterable[Any]) -> None:
        """Fill ``mirror`` with the newest unbroken run of ``entries`` (and event 0 if held)."""
        parsed: list[tuple[int, dict[bytes, bytes]]] = []
        for entry_id, fields in entries:
            n = _number(entry_id)
            if n is None or n == 0:
                log.warning("stream %s: entry %r is not ours, skipped", mirror.stream_id, entry_id)
                continue
            parsed.append((n, fields))
        first = len(parsed) - 1
        while first > 0 and parsed[first - 1][0] == parsed[first][0] - 1:
            first -= 1
        run = parsed[max(first, 0) :]
        if not run or run[0][0] == 1:
            held = run[0][1].get(b"s") if run else None
            if held or start:
                mirror.append(held or start or b"")
            else:
                mirror.first = run[0][0] if run else 0
        else:
            mirror.first = run[0][0]  # older ones were trimmed (MAXLEN): a resume there is 410
        for n, fields in run:
            self._feed(mirror, n, fields)

    # -- following -------------------------------------------------------------

    def _feed(self, mirror: Mirror, n: int, fields: dict[bytes, bytes]) -> None:
        if mirror.ended or n < mirror.next:
            return  # (already held)
        if n == 1 and mirror.next == 0 and b"s" in fields:
            mirror.append(fields[b"s"])
        if n != mirror.next:
            self._end(mirror, ResumeGap(f"the stream log lost events of {mirror.stream_id}"))
            return
        frame = fields.get(b"f")
        if frame is not None:
            mirror.append(frame)
            return
        final = fields.get(b"e")
        if final is None:
            self._end(
                mirror, StreamLogUnavailable(f"entry 0-{n} of {mirror.stream_id} is not ours")
            )
            return
        mirror.end(final)
        self._live.pop(mirror.key, None)

    def _end(self, mirror: Mirror, exc: EngineError) -> None:
        """End ``mirror`` with an error event of its own (the producer's never came)."""
        if not mirror.ended:
            body = ErrorEvent(message=exc.message, code=exc.status, type=exc.type)
            mirror.end(encode_json(body, event="error", id=f"{mirror.stream_id}:{mirror.next}"))
        self._live.pop(mirror.key, None)

    def _lost(self, mirror: Mirror) -> None:
        log.warning("stream %s: its producer's lease lapsed before its end", mirror.stream_id)
        self._end(
            mirror,
            ProducerLost(
                "the worker producing this stream stopped before its end "
                "(the events before this one are what it produced)"
            ),
        )

    async def _run(self) -> None:
        """Read for every live mirror, and check them each tick, while any mirror is held."""
        loop = asyncio.get_running_loop()
        registry = self._registry
        check_at = loop.time() + registry.tick
        down_since: float | None = None
        try:
            while self._mirrors:
                live = self._live
                if live:
                    streams: dict[Any, Any] = {
                        key: f"0-{max(m.next - 1, 0)}" for key, m in live.items()
                    }
                    try:
                        reply = await self.blocking.xread(
                            streams, count=COUNT, block=int(BLOCK * 1000)
                        )
                    except ERRORS as exc:
                        now = loop.time()
                        down_since = down_since or now
                        if now - down_since >= registry.lease:
                            log.warning("stream log unreachable (%s): ending its followers", exc)
                            for mirror in list(live.values()):
                                self._end(mirror, StreamLogUnavailable(UNREACHABLE))
                        await asyncio.sleep(BLOCK)
                        continue
                    down_since = None
                    self._read(reply)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(registry.tick):
                            await self._changed.wait()
                self._changed.clear()
                if loop.time() >= check_at:
                    await self._check()
                    check_at = loop.time() + registry.tick
        finally:
            self._task = None

    def _read(self, reply: Any) -> None:
        items = reply.items() if isinstance(reply, dict) else (reply or ())
        for key, entries in items:
            mirror = self._live.get(key)
            if mirror is None:
                continue
            if isinstance(entries, list) and entries and isinstance(entries[0], list):
                entries = entries[0]  # (RESP3 nests them once more)
            for entry_id, fields in entries:
                n = _number(entry_id)
                if n is not None:
                    self._feed(mirror, n, fields)

    async def _check(self) -> None:
        for stream_id, mirror in list(self._mirrors.items()):
            mirror.idle = 0 if mirror.readers else mirror.idle + 1
            if mirror.idle >= 2:
                del self._mirrors[stream_id]
                self._live.pop(mirror.key, None)
        live = list(self._live.values())
        if not live:
            return
        registry = self._registry
        prefix, lease_ms = registry.prefix, int(registry.lease * 1000)
        workers = sorted({mirror.worker for mirror in live})
        try:
            async with registry.client.pipeline(transaction=False) as pipe:
                for mirror in live:
                    pipe.hmget(mirror.key + b":meta", "worker", "broken")
                for worker in workers:
                    pipe.exists(f"{prefix}worker:{worker}")
                for mirror in live:
                    if mirror.readers:
                        pipe.set(mirror.key + b":followed", b"1", px=lease_ms)
                replies = await pipe.execute()
        except ERRORS:
            return  # (the blocking read notices an outage, and ends them if it lasts)
        alive = dict(zip(workers, replies[len(live) : len(live) + len(workers)], strict=True))
        lost = []
        for mirror, (worker, broken) in zip(live, replies[: len(live)], strict=True):
            if worker is None:
                self._end(mirror, StreamLogUnavailable("the stream's log was deleted"))
            elif broken:
                self._end(
                    mirror,
                    StreamLogUnavailable("the stream log lost the rest of this stream"),
                )
            elif not alive[mirror.worker]:
                lost.append(mirror)
        for mirror in lost:
            await self._last_read(mirror)
            if not mirror.ended:
                self._lost(mirror)

    async def _last_read(self, mirror: Mirror) -> None:
        """What a producer wrote just before it died (its final event, perhaps)."""
        with contextlib.suppress(*ERRORS):
            entries: Any = await self._registry.client.xrange(
                mirror.key, f"(0-{mirror.next - 1}", "+"
            )
            for entry_id, fields in entries or ():
                n = _number(entry_id)
                if n is not None:
                    self._feed(mirror, n, fields)

    async def aclose(self) -> None:
        for task in (self._task, self._loader):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._mirrors.clear()
        self._live.clear()
        with contextlib.suppress(*ERRORS):
            await self.blocking.aclose()

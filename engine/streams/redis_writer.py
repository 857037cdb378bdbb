"""The Redis stream log's writes: :class:`Writer`, one per worker, never awaited by the relay.

The relay hands each burst's frames to the log it already appends to
(:class:`~engine.streams.redis_log.RedisStreamLog`), which hands them here
with a dict lookup and two list appends: nothing awaits Redis on the hot
path (DESIGN.md). One task per worker then sends everything pending as one
``EVALSHA`` of :data:`_APPEND`, whatever the number of streams: the bursts of
:data:`BATCH_DELAY` seconds, and of the time the previous call took, in two
arguments (a header line per stream, and the frames back to back), so the
busier the worker, the more entries a command carries
(benchmarks/RESULTS.md: commands per chunk).

Redis slow or down never stalls a stream: a batch that fails, or pending
writes past :data:`MAX_PENDING_BYTES`, mark their streams *unlogged* (logged
once, counted in ``sse_engine_stream_log_unlogged``); an unlogged stream goes
on at full speed with no more writes, and its resume on another box answers
503 (its own worker still serves it from memory). While Redis is down every
new burst does the same, and a ping every :data:`PROBE` seconds looks for its
return; then the streams it missed are marked ``broken`` in their meta hash,
so a box that reads them learns why they stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from redis.exceptions import RedisError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .redis_log import RedisStreamLog

__all__ = ["BATCH_DELAY", "ERRORS", "MAX_PENDING_BYTES", "PROBE", "Writer"]

log = logging.getLogger("engine.stream")

#: What a Redis call raises when the server is unreachable, slow or refuses.
ERRORS: Final = (RedisError, OSError, TimeoutError)
#: Bytes of frames waiting for Redis before the streams they belong to are
#: marked unlogged (a Redis that cannot keep up must not hold the gateway's memory).
MAX_PENDING_BYTES: Final = 32 * 1024 * 1024
#: Most frames one ``EVALSHA`` carries (with MAX_SCRIPT_BYTES: how long one script holds Redis).
MAX_SCRIPT_FRAMES: Final = 4096
#: Seconds between pings while Redis is down.
PROBE: Final = 1.0
#: Streams remembered to be marked ``broken`` once Redis is back (the oldest go past it).
MAX_MARKS: Final = 100_000

#: Seconds the writer waits after the first burst of a batch for the next ones:
#: a command carries a worker's bursts of that long, not of one loop step (what a
#: shared log lags behind the live stream, and what a command per chunk costs).
BATCH_DELAY: Final = 0.005
#: Bytes one ``EVALSHA`` carries at most (bounds how long one script holds Redis).
MAX_SCRIPT_BYTES: Final = 1024 * 1024

# ARGV: prefix, final ttl ms, live ttl ms, maxlen, worker, header, data.
# The header has a line per stream: "<sid> <n0> <flags> <start> <owner> <state>
# <len>..." (flags: 1 final, 2 owner known, 4 broken; then byte lengths), and data
# those strings back to back: start, owner, state, then each frame. One blob
# rather than an argument per frame: redis-py packs each argument in Python.
# Event n > 0 is entry 0-n (field f; e for the final one); event 0, the start,
# is the meta hash's `start` and rides along in entry 0-1 (field s), so a
# follower reading the stream alone sees it. An XADD refused (an id not above
# the stream's last: a retry, or an entry that is not ours) is skipped; the
# reader notices the hole. A key of another type marks the stream broken.
# (Keys are named here, not in KEYS: one script spans streams; no Redis Cluster.)
_APPEND = """
local prefix, final_ttl, live_ttl, maxlen, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local data, pos = ARGV[7], 1
local function take(len)
  local piece = string.sub(data, pos, pos + len - 1)
  pos = pos + len
  return piece
end
for line in string.gmatch(ARGV[6], '[^\\n]+') do
  local f = {}
  for word in string.gmatch(line, '%S+') do f[#f + 1] = word end
  local s = prefix .. f[1]
  local m = s .. ':meta'
  local n0, flags = tonumber(f[2]), tonumber(f[3])
  local start, owner, state = take(tonumber(f[4])), take(tonumber(f[5])), take(tonumber(f[6]))
  local final = flags % 2 == 1
  local broken = math.floor(flags / 4) % 2 == 1
  if broken or math.floor(flags / 2) % 2 == 1 then
    redis.call('HSET', m, 'owner', owner, 'worker', worker)
  end
  if broken then redis.call('HSET', m, 'broken', '1') end
  local k = #f - 6
  for j = 0, k - 1 do
    local n, frame = n0 + j, take(tonumber(f[7 + j]))
    if n == 0 then
      redis.call('HSET', m, 'start', frame)
    else
      local field = 'f'
      if final and j == k - 1 then field = 'e' end
      local ok
      if n == 1 and start ~= '' then
        ok = redis.pcall('XADD', s, 'MAXLEN', '~', maxlen, '0-1', 's', start, field, frame)
      else
        ok = redis.pcall('XADD', s, 'MAXLEN', '~', maxlen, '0-' .. n, field, frame)
      end
      if type(ok) == 'table' and ok.err and string.find(ok.err, 'WRONGTYPE') then
        redis.call('HSET', m, 'broken', '1')
      end
    end
  end
  if final then redis.call('HSET', m, 'final', n0 + k - 1) end
  if state ~= '' then redis.call('HSET', m, 'state', state) end
  local ttl = live_ttl
  if final then ttl = final_ttl end
  redis.call('PEXPIRE', s, ttl)
  redis.call('PEXPIRE', m, ttl)
end
return 1
"""


class _Record:
    """What one stream has pending for the next batch."""

    __slots__ = ("broken", "final", "lens", "log", "n0", "owner", "parts", "state")

    def __init__(self, n0: int, owner: str | None, log: RedisStreamLog | None = None) -> None:
        self.log = log
        self.n0 = n0  # the number of the first frame
        self.parts: list[bytes] = []  # the frames, joined as they were written
        self.lens: list[int] = []  # each frame's length
        self.final = False
        self.broken = False
        self.owner = owner
        self.state = ""


class Writer:
    """The one writer of a worker's stream logs (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        worker: str,
        ttl: float,
        maxlen: int,
        on_unlogged: Callable[[RedisStreamLog], None],
        max_pending: int = MAX_PENDING_BYTES,
    ) -> None:
        self._client = client
        self._script = client.register_script(_APPEND)
        self._prefix = prefix
        self._head = (
            prefix,
            str(max(1, int(ttl * 1000))),
            # A live stream is kept at least a minute past its latest write.
            str(max(60_000, int(ttl * 1000))),
            str(maxlen),
            worker,
        )
        self._on_unlogged = on_unlogged
        self.max_pending = max_pending
        self._batch: dict[str, _Record] = {}
        self._pending = 0  # bytes of frames in _batch
        self._wake = asyncio.Event()
        self._scheduled = False
        self._busy = False  # a batch is under way
        self._marks: dict[str, str | None] = {}  # stream id -> owner: to mark broken
        #: False while Redis is unreachable (bursts are then not kept).
        self.up = True
        #: Set while ``up`` (what waits for Redis to be back waits on it).
        self.reachable = asyncio.Event()
        self.reachable.set()
        #: Commands sent (one a batch, or a few for a large one) and entries they carried.
        self.commands = 0
        self.entries = 0

    # -- the hot path: no await, no Redis ------------------------------------

    def opened(self, stream_log: RedisStreamLog) -> None:
        """A new stream: its owner and worker go with its first frames."""
        if not self.up:
            self._unlog(stream_log)
            return
        self._record(stream_log)  # (its meta is written even before any frame)

    def add(self, stream_log: RedisStreamLog, n0: int, frames: list[bytes], joined: bytes) -> None:
        """Frames ``n0``.. of ``stream_log`` (a burst), and ``joined``, them back to back."""
        if not self.up:
            self._unlog(stream_log)
            return
        record = self._batch.get(stream_log.stream_id)
        if record is None or record.log is None:
            record = self._adopt(record, stream_log, n0)
        record.parts.append(joined)
        if len(frames) == 1:
            record.lens.append(len(joined))
        else:
            record.lens += map(len, frames)
        self._pending += len(joined)
        if self._pending > self.max_pending:
            self._overflow()
        elif not self._scheduled:
            self._scheduled = True
            self._wake.set()

    def ended(self, stream_log: RedisStreamLog) -> None:
        """The frame just added was the stream's final one."""
        record = self._batch.get(stream_log.stream_id)
        if record is not None and record.lens:
            record.final = True

    def state(self, stream_id: str, state: str) -> None:
        """How the stream's generation ended (for a Stop from another box)."""
        if self.up:
            record = self._batch.get(stream_id)
            if record is None:
                record = self._batch[stream_id] = _Record(0, None)
            record.state = state
            self._schedule()

    def _record(self, stream_log: RedisStreamLog) -> _Record:
        record = self._batch.get(stream_log.stream_id)
        if record is None or record.log is None:
            record = self._adopt(record, stream_log, stream_log.next)
        self._schedule()
        return record

    def _adopt(self, record: _Record | None, stream_log: RedisStreamLog, n0: int) -> _Record:
        """The stream's record, made (or, a state noted first, given its log and place)."""
        if record is None:
            record = self._batch[stream_log.stream_id] = _Record(n0, stream_log.owner)
        record.log, record.n0, record.owner = stream_log, n0, stream_log.owner
        return record

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._wake.set()

    def _unlog(self, stream_log: RedisStreamLog | None) -> None:
        if stream_log is None or stream_log.unlogged:
            return
        stream_log.unlogged = True
        if len(self._marks) >= MAX_MARKS:
            del self._marks[next(iter(self._marks))]
        self._marks[stream_log.stream_id] = stream_log.owner
        self._on_unlogged(stream_log)

    def _overflow(self) -> None:
        batch, self._batch, self._pending = self._batch, {}, 0
        log.warning(
            "the Redis stream log is %d bytes behind: %d streams are no longer resumable "
            "on other boxes",
            self.max_pending,
            len(batch),
        )
        for record in batch.values():
            self._unlog(record.log)
        self._schedule()  # (their broken marks)

    # -- the writer task -------------------------------------------------------

    async def run(self) -> None:
        """Send what is pending, batch after batch, until cancelled."""
        while True:
            await self._wake.wait()
            if not self.up:
                self._wake.clear()
                await self._probe()
                continue
            await asyncio.sleep(BATCH_DELAY)  # (the bursts of the next few ms join it)
            self._wake.clear()
            batch, self._batch, self._pending = self._batch, {}, 0
            self._scheduled = False
            for stream_id, owner in self._marks.items():
                record = batch.get(stream_id)
                if record is None:
                    record = batch[stream_id] = _Record(0, owner)
                record.broken = True
            self._marks.clear()
            if not batch:
                continue
            self._busy = True
            try:
                await self._send(batch)
            except ERRORS as exc:
                log.warning(
                    "the Redis stream log failed (%s): %d streams are no longer resumable "
                    "on other boxes until their end",
                    exc,
                    len(batch),
                )
                self.up = False
                self.reachable.clear()
                for stream_id, record in batch.items():
                    if record.log is not None:
                        self._unlog(record.log)
                    elif record.broken:
                        self._marks[stream_id] = record.owner
                self._wake.set()
            finally:
                self._busy = False

    async def _probe(self) -> None:
        while not self.up:
            await asyncio.sleep(PROBE)
            try:
                await self._client.ping()
            except ERRORS:
                continue
            log.info("the Redis stream log is back (%d streams marked broken)", len(self._marks))
            self.up = True
            self.reachable.set()
            self._schedule()

    async def _send(self, batch: dict[str, _Record]) -> None:
        lines: list[str] = []
        blobs: list[bytes] = []
        frames = size = 0
        for stream_id, record in batch.items():
            stream_log = record.log
            if stream_log is not None and stream_log.unlogged and not record.broken:
                continue  # marked while pending (an overflow): its mark goes instead
            # (2: the owner is known, so owner and worker are written again: a Redis
            # that restarted empty learns them with the next batch.)
            flags = record.final | (stream_log is not None or record.broken) << 1
            flags |= record.broken << 2
            start = b""
            if stream_log is not None and record.n0 <= 1 < record.n0 + len(record.lens):
                start = stream_log.start_frame or b""  # event 0 rides in entry 0-1
            owner = (record.owner or "").encode()
            state = record.state.encode()
            lens = " ".join(map(str, record.lens))
            lines.append(
                f"{stream_id} {record.n0} {flags} {len(start)} {len(owner)} {len(state)} {lens}"
            )
            blobs += (start, owner, state)
            blobs += record.parts
            frames += len(record.lens)
            size += len(start) + sum(record.lens)
            if frames >= MAX_SCRIPT_FRAMES or size >= MAX_SCRIPT_BYTES:
                await self._call(lines, blobs, frames)
                lines, blobs, frames, size = [], [], 0, 0
        if lines:
            await self._call(lines, blobs, frames)

    async def _call(self, lines: list[str], blobs: list[bytes], frames: int) -> None:
        await self._script(args=[*self._head, "\n".join(lines), b"".join(blobs)])
        self.commands += 1
        self.entries += frames

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline API
        """Wait up to ``timeout`` s for what is pending to be written (closing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._batch or self._busy or self._marks) and self.up:
            if loop.time() >= deadline:
                log.warning("closing with %d streams' writes not in Redis", len(self._batch))
                return
            await asyncio.sleep(0.01)

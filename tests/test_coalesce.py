"""The relay's write policy on its own: which chunks share a write, and when it stops looking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.streams.coalesce import LONE_RUN, MAX_BATCH, PLAIN_RUN, Coalescer


class Queue:
    """A stream's queue as the policy sees it; ``writes`` is what reached the socket."""

    def __init__(self, *, slow: bool = False) -> None:
        self.frames: list[bytes] = []
        self.writes: list[bytes] = []
        self.slow = slow
        self.drains = 0

    def queued_frames(self) -> list[bytes]:
        return self.frames

    def flush_nowait(self):
        if not self.frames:
            return None
        self.writes.append(b"".join(self.frames))
        self.frames.clear()
        if self.slow:
            return self._drain()
        return None

    async def _drain(self) -> None:
        self.drains += 1


async def bursts(sizes: list[int]) -> AsyncIterator[bytes]:
    """Chunks in bursts: those of one burst are ready together, then a real wait."""
    n = 0
    for size in sizes:
        await asyncio.sleep(0)  # the upstream read: the relay must wait here
        for _ in range(size):
            n += 1
            yield b"%d," % n


async def relay(queue: Queue, chunks: AsyncIterator[bytes], policy: Coalescer) -> list[bool]:
    """The relay loop's use of the policy; returns, per chunk, whether it was fetched eagerly."""
    eager = []
    while True:
        eager.append(policy.eager)
        try:
            chunk = await policy.next(chunks)
        except StopAsyncIteration:
            break
        wait = policy.add(chunk)
        if wait is not None:
            await wait
    wait = queue.flush_nowait()
    if wait is not None:
        await wait
    return eager[:-1]


async def test_a_burst_goes_out_in_one_write_before_the_wait():
    queue = Queue()
    await relay(queue, bursts([5, 3]), Coalescer(queue))
    assert queue.writes == [b"1,2,3,4,5,", b"6,7,8,"]


async def test_a_long_burst_is_cut_at_max_batch():
    queue = Queue()
    await relay(queue, bursts([MAX_BATCH * 2 + 5]), Coalescer(queue))
    assert [w.count(b",") for w in queue.writes] == [MAX_BATCH, MAX_BATCH, 5]
    assert b"".join(queue.writes) == b"".join(b"%d," % i for i in range(1, MAX_BATCH * 2 + 6))


async def test_lone_chunks_stop_the_eager_step_for_a_plain_run_then_it_looks_again():
    queue = Queue()
    total = LONE_RUN + 1 + PLAIN_RUN + LONE_RUN + 10
    eager = await relay(queue, bursts([1] * total), Coalescer(queue))
    # Every chunk went out alone, at once.
    assert queue.writes == [b"%d," % i for i in range(1, total + 1)]
    # Eager until LONE_RUN bursts of one were seen, then PLAIN_RUN plain fetches, then eager.
    first_plain = eager.index(False)
    assert first_plain == LONE_RUN + 1
    assert eager[first_plain : first_plain + PLAIN_RUN] == [False] * PLAIN_RUN
    # Then it looks again: eager until another run of lone bursts, and so on.
    rest = eager[first_plain + PLAIN_RUN :]
    assert rest[:LONE_RUN] == [True] * LONE_RUN
    assert rest[LONE_RUN:] == [False] * (len(rest) - LONE_RUN)


async def test_bursts_keep_the_eager_step():
    queue = Queue()
    eager = await relay(queue, bursts([2] * 40), Coalescer(queue))
    assert all(eager)
    assert len(queue.writes) == 40


async def test_a_slow_reader_makes_add_return_the_wait():
    queue = Queue(slow=True)
    await relay(queue, bursts([MAX_BATCH + 1, 1]), Coalescer(queue))
    # Each write waited for the reader: the full batch, the rest of the burst
    # before the wait for the next, and the last chunk at the end.
    assert [w.count(b",") for w in queue.writes] == [MAX_BATCH, 1, 1]
    assert queue.drains == 3

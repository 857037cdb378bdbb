"""The load generator: one uvloop process (pinned to CPU 1 by the harness) that counts events.

It never parses events: it counts frame ends (``\\n\\n``) per connection, which
is enough to check totals, time arrivals and measure throughput. Every
connection is a raw asyncio Protocol speaking HTTP/1.1 with ``Connection:
close``, so a stream ends when the server closes it.

    python -m benchmarks._loadgen '{"mode": "throughput", ...}'

Modes (the argument is JSON; the result is one JSON line on stdout):

* ``throughput``: ``clients`` connections, each requesting streams of
  ``events`` frames back to back; frames counted over ``window`` seconds after
  ``warmup``; the server's CPU time (``/proc/<pid>/stat``) read at the same
  instants.
* ``paced``: ``clients`` streams at once (``interval_ms`` > 0); per frame the
  lateness past the interval, and whether every stream completed.
* ``idle``: open ``clients`` streams that go quiet, print ``ready``, wait for a
  line on stdin, report heartbeats seen, close.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


_DATA_LINE = b"\ndata:"


class Conn(asyncio.Protocol):
    on_started: Any = None  # called once the stream sent its first chunk (2 events)

    def __init__(self, counter: list[int], times: bool) -> None:
        self.frames = 0  # events with data seen (a data line each)
        self.tail = b""  # the end of the last read, for a data line cut between reads
        self.received = 0  # bytes, heartbeats included
        self.ok: bool | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.counter = counter
        self.times: list[tuple[float, int]] | None = [] if times else None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.ok is None:
            self.ok = data.startswith(b"HTTP/1.1 200")
        # Events are counted by their data line (every server's events have one,
        # each after a newline), not by blank lines: where `retry:` and comments
        # go differs between servers (ours put them in no block of their own).
        self.received += len(data)
        n = (self.tail + data).count(_DATA_LINE)
        self.tail = data[-(len(_DATA_LINE) - 1) :]
        if n:
            if self.frames < 2 <= self.frames + n and self.on_started is not None:
                self.on_started()
            self.frames += n
            self.counter[0] += n
            if self.times is not None:
                self.times.append((time.perf_counter(), n))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def open_stream(port: int, target: str, counter: list[int], times: bool = False) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(counter, times), "127.0.0.1", port)
    assert conn.transport is not None
    conn.transport.write(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
    )
    return conn


async def throughput(a: dict[str, Any]) -> dict[str, Any]:
    port, target, expected = a["port"], a["target"], a["expected"]
    counter = [0]
    stop = False
    completed = bad = 0
    conns: set[Conn] = set()

    async def client() -> None:
        nonlocal completed, bad
        while not stop:
            conn = await open_stream(port, target, counter)
            conns.add(conn)
            try:
                await conn.done
            finally:
                conns.discard(conn)
            if stop:
                return
            if conn.ok and conn.frames == expected:
                completed += 1
            else:
                bad += 1
                if bad <= 3:
                    print(
                        f"bad stream: ok={conn.ok} frames={conn.frames}/{expected}", file=sys.stderr
                    )

    tasks = [asyncio.ensure_future(client()) for _ in range(a["clients"])]
    try:
        await asyncio.sleep(a["warmup"])
        c0, t0, s0 = counter[0], time.perf_counter(), cpu_seconds(a["pid"])
        p0 = time.process_time()
        await asyncio.sleep(a["window"])
        c1, t1, s1 = counter[0], time.perf_counter(), cpu_seconds(a["pid"])
        p1 = time.process_time()
    finally:
        stop = True
        for conn in list(conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    events = c1 - c0
    return {
        "events": events,
        "seconds": t1 - t0,
        "events_per_s": events / (t1 - t0),
        "server_cpu_s": s1 - s0,
        "cpu_us_per_event": (s1 - s0) * 1e6 / events if events else None,
        "client_cpu_s": p1 - p0,
        "streams_completed": completed,
        "streams_bad": bad,
    }


async def paced(a: dict[str, Any]) -> dict[str, Any]:
    port, target, expected = a["port"], a["target"], a["expected"]
    interval = a["interval_ms"] / 1000
    counter = [0]
    sem = asyncio.Semaphore(a.get("connect_batch", 256))
    conns: list[Conn] = []
    connect_errors = 0

    all_open = asyncio.Event()
    first_done = asyncio.Event()
    streaming = [0]

    def started(k: int = 1) -> None:
        streaming[0] += k
        if streaming[0] + connect_errors >= a["clients"]:
            all_open.set()

    async def one() -> None:
        nonlocal connect_errors
        async with sem:
            try:
                conn = await open_stream(port, target, counter, times=True)
            except OSError:
                connect_errors += 1
                conn = None
        if conn is not None:
            conns.append(conn)
            conn.on_started = started
        elif len(conns) + connect_errors == a["clients"]:
            started(0)
        if conn is not None:
            await conn.done
            first_done.set()

    # Server CPU over the steady part: from the moment every stream has sent its
    # first chunk (the server is done setting them up) to the moment the first
    # one ends (all of them streaming at once).
    steady: list[tuple[float, float]] = []

    async def watch() -> None:
        await all_open.wait()
        steady.append((cpu_seconds(a["pid"]), time.perf_counter()))
        await first_done.wait()
        steady.append((cpu_seconds(a["pid"]), time.perf_counter()))

    watcher = asyncio.ensure_future(watch())
    s0, t0 = cpu_seconds(a["pid"]), time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(a["clients"])]
    done, pending = await asyncio.wait(tasks, timeout=a["timeout"])
    s1, t1 = cpu_seconds(a["pid"]), time.perf_counter()
    watcher.cancel()
    if len(steady) == 2 and steady[1][1] - steady[0][1] >= 0.3:
        (s0, t0), (s1, t1) = steady
    for conn in conns:
        if not conn.done.done() and conn.transport is not None:
            conn.transport.abort()
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Lateness of each chunk past the interval since the previous frame. Frames
    # 0-2 (retry, start, first chunk) come at once, as does the last (done).
    # Per stream, the mean gap between its first and last chunk: a server that
    # is overloaded slows every stream (the mock sleeps after each write), which
    # per-chunk lateness alone would not show.
    delays: list[float] = []
    gaps: list[float] = []
    for conn in conns:
        assert conn.times is not None
        seen = 0
        prev = first = last = 0.0
        for t, n in conn.times:
            for _ in range(n):
                if 3 <= seen <= expected - 2:
                    delays.append(max(0.0, t - prev - interval))
                if seen == 2:
                    first = t
                elif seen == expected - 2:
                    last = t
                prev = t
                seen += 1
        if seen >= expected - 1 and expected > 4:
            gaps.append((last - first) / (expected - 4))
    complete = sum(1 for c in conns if c.ok and c.frames == expected)
    return {
        "clients": a["clients"],
        "complete": complete,
        "connect_errors": connect_errors,
        "timed_out": len(pending),
        "server_cpu_share": (s1 - s0) / (t1 - t0),
        "steady_s": t1 - t0,
        "delays_ms": [round(d * 1000, 3) for d in delays],
        "mean_gap_ms": [round(g * 1000, 3) for g in gaps],
    }


async def idle(a: dict[str, Any]) -> dict[str, Any]:
    port, target = a["port"], a["target"]
    counter = [0]
    sem = asyncio.Semaphore(a.get("connect_batch", 256))
    conns: list[Conn] = []
    connect_errors = 0

    async def one() -> None:
        nonlocal connect_errors
        async with sem:
            try:
                conns.append(await open_stream(port, target, counter))
            except OSError:
                connect_errors += 1

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(a["clients"]))), a["timeout"])
    # Wait (bounded) until every stream sent its first frames and went quiet.
    deadline = time.perf_counter() + a["timeout"]
    while time.perf_counter() < deadline:
        if all(c.frames >= a["first_frames"] for c in conns):
            break
        await asyncio.sleep(0.05)
    ready = sum(1 for c in conns if c.frames >= a["first_frames"])
    open_at_ready = sum(1 for c in conns if not c.done.done())
    base = [c.received for c in conns]
    print(json.dumps({"ready": ready, "connect_s": time.perf_counter() - t0}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    beats = sum(1 for c, b in zip(conns, base, strict=True) if c.received > b)
    still_open = sum(1 for c in conns if not c.done.done())
    for c in conns:
        if c.transport is not None:
            c.transport.abort()
    return {
        "clients": a["clients"],
        "ready": ready,
        "open_at_ready": open_at_ready,
        "still_open": still_open,
        "got_heartbeat": beats,
        "connect_errors": connect_errors,
    }


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args = json.loads(sys.argv[1])
    import uvloop

    mode = {"throughput": throughput, "paced": paced, "idle": idle}[args["mode"]]
    result = uvloop.run(mode(args))
    if args.get("out"):
        # Large results (per-chunk delays) go through a file, not a pipe.
        with open(args["out"], "w") as f:
            json.dump(result, f)
    else:
        os.set_blocking(sys.stdout.fileno(), True)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

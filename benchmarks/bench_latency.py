"""Latency the gateway adds per chunk: gateway path vs a direct connection to the upstream.

A fake OpenAI upstream (``benchmarks/servers/fake_stamp.py --stamp N``: the
bytes of ``python -m engine.testing openai --stamp N`` from a raw asyncio
Protocol on uvloop with one timer for all streams, cheap enough to offer 1,000
streams x 50 chunks/s from one core) sends a chunk every 20 ms whose text is its
send time (``time.time_ns()``, taken at write); chunk ``k`` of a stream is due
at its start + ``k`` x 20 ms. Before it starts, :func:`fake_stamp.check
<benchmarks.servers.fake_stamp.check>` compares its reply with
``engine.testing``'s, byte for byte up to the stamps, and stops the bench if
they differ. ``BENCH_FAKE=aiohttp`` runs ``engine.testing``'s fake instead (an
aiohttp handler per stream; it cannot offer 1,000 streams at 20 ms from a
shared core). The client reads the same kind of stream two ways:

* direct: ``POST /v1/chat/completions`` on the fake (the floor);
* gateway: ``POST /v1/chat/stream`` on ``sse-engine serve --provider openai``
  with ``OPENAI_BASE_URL`` at the fake;

and records, per chunk, receipt time minus stamp. Layout (``_harness``): the
gateway is a subprocess pinned to CPU 0; the fake (a subprocess) and the client
(this process, pinned for the measurement) share CPU 1, so the fake never
steals the gateway's core. Everything runs on uvloop.

Stream ``i`` of ``N`` starts at ``i * 20 ms / N`` (one cadence period), so
streams do not send in lockstep; the first chunks of every stream are a
warm-up and are not counted. Levels 1, 100 and 1,000 streams; each round
measures direct then gateway at every level, and rounds are interleaved;
``added`` = gateway - direct percentile by percentile within a round, reported
as the median over rounds with min-max.

Time to first byte (one stream, the fake with no first-token delay): from
writing the request on an open connection to receiving the first content
chunk, gateway vs direct, alternating, median with min-max; added TTFB is the
difference of the medians.

    python -m benchmarks.bench_latency [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from ._harness import LOADGEN_CPU, Server, log, percentile, raise_nofile, summary
from ._loadgen import cpu_seconds

INTERVAL_MS = 20
LEVELS = (1, 100, 1000)
#: Chunks per stream (quick, full) and rounds; the first WARM chunks of each stream are dropped.
CHUNKS = (40, 100)
ROUNDS = (3, 3)
WARM = {1: 5, 100: 10, 1000: 25}
TTFB_REQUESTS = (20, 30)
LEVEL_TIMEOUT = 60.0
_STAMP = re.compile(rb'"content":"(\d{19})"')
T = TypeVar("T")


# -- the processes -----------------------------------------------------------------


class Fake(Server):
    """The stamp upstream, moved to CPU 1 once up: ``benchmarks.servers.fake_stamp``, or
    ``python -m engine.testing openai --stamp N`` on uvloop with ``BENCH_FAKE=aiohttp``.

    The first start in a process runs ``fake_stamp.check()`` (same bytes as
    ``engine.testing``'s fake) and fails if it fails.
    """

    checked = False

    def __init__(self, chunks: int, kind: str | None = None) -> None:
        super().__init__("fake-openai")
        self.chunks = chunks
        self.fake = kind or os.environ.get("BENCH_FAKE", "stamp")
        if self.fake not in ("stamp", "aiohttp"):
            raise ValueError(f"BENCH_FAKE must be stamp or aiohttp, not {self.fake!r}")

    def command(self) -> list[str]:
        args = [
            "--stamp",
            str(self.chunks),
            "--interval-ms",
            str(INTERVAL_MS),
            "--first-ms",
            "0",
            "--port",
            "0",
        ]
        if self.fake == "stamp":
            return [sys.executable, "-m", "benchmarks.servers.fake_stamp", *args]
        code = (
            "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
            "from engine.testing.__main__ import main; sys.exit(main(sys.argv[1:]))"
        )
        return [sys.executable, "-c", code, "openai", *args]

    def start(self, timeout: float = 20.0) -> Fake:
        if self.fake == "stamp" and not Fake.checked:
            from .servers.fake_stamp import check

            check()  # raises if the bytes differ from engine.testing's fake
            Fake.checked = True
            log("fake_stamp self-check: same bytes as engine.testing's fake (stamps aside)")
        super().start(timeout)
        if LOADGEN_CPU < (os.cpu_count() or 1):
            os.sched_setaffinity(self.pid, {LOADGEN_CPU})
        return self


def fake_markdown(banner: str | None) -> str:
    """How RESULTS.md names the fake upstream a run used (from its banner)."""
    if banner and "stamp upstream" in banner:
        return (
            "the fake OpenAI upstream `benchmarks/servers/fake_stamp.py` (a raw asyncio "
            "Protocol on uvloop sending the bytes of `python -m engine.testing openai --stamp`, "
            "checked against it at start; one timer for all streams, chunk k of a stream due "
            "at its start + k periods)"
        )
    return "the fake OpenAI upstream `python -m engine.testing openai --stamp` (aiohttp)"


class Gateway(Server):
    """``sse-engine serve --provider openai`` (the harness's native command), CPU 0."""

    def __init__(self, upstream: str) -> None:
        super().__init__("native")
        self.upstream = upstream

    def command(self) -> list[str]:
        return [*super().command(), "--provider", "openai"]

    def start(self, timeout: float = 20.0) -> Gateway:
        env = {"OPENAI_BASE_URL": f"{self.upstream}/v1", "OPENAI_API_KEY": "bench-key"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            super().start(timeout)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    saved = os.sched_getaffinity(0)
    if cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


# -- the client --------------------------------------------------------------------


def _request(gateway: bool, headers: dict[str, str] | None = None) -> bytes:
    if gateway:
        path = "/v1/chat/stream"
        body = b'{"messages":[{"role":"user","content":"stamp"}],"provider":"openai"}'
    else:
        path = "/v1/chat/completions"
        body = b'{"model":"m","messages":[{"role":"user","content":"stamp"}],"stream":true}'
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


class _StampConn(asyncio.Protocol):
    """One stream: per content chunk, receipt (``time_ns`` at read) minus its stamp.

    Also the stamps of the first and last counted chunks, for the fake's own pace.
    """

    def __init__(self, out: list[float] | None, skip: int) -> None:
        loop = asyncio.get_running_loop()
        self.out = out
        self.skip = skip
        self.buf = b""
        self.n = 0
        self.ok: bool | None = None
        self.first_ns = 0
        self.stamps = [0, 0]
        self.first: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.ok is None:
            self.ok = data.startswith(b"HTTP/1.1 200")
        buf = self.buf + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        for m in _STAMP.finditer(buf, 0, end):
            self.n += 1
            if self.n == 1:
                self.first_ns = now
                if not self.first.done():
                    self.first.set_result(None)
            if self.out is not None and self.n > self.skip:
                stamp = int(m.group(1))
                self.out.append((now - stamp) / 1e6)
                if self.n == self.skip + 1:
                    self.stamps[0] = stamp
                self.stamps[1] = stamp
        self.buf = buf[end + 2 :]

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.first, self.done):
            if not fut.done():
                fut.set_result(None)


async def _open(port: int, out: list[float] | None, skip: int) -> _StampConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _StampConn(out, skip), "127.0.0.1", port)
    return conn


async def measure(
    port: int,
    *,
    gateway: bool,
    streams: int,
    chunks: int,
    warm: int | None = None,
    cpu: dict[str, int] | None = None,
    cdf: int = 0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``streams`` streams started over one cadence period; percentiles (ms) after warm-up.

    ``warm``: chunks per stream not counted (default: ``WARM`` by level). ``cpu``:
    processes (name: pid) whose CPU share is read over the counted part of the streams,
    reported with this process's (``client``) as ``cpu_share``. ``cdf``: also return about
    that many evenly spaced sorted delays (``cdf_ms``). ``headers``: sent with each
    request (a client key). ``pace_p50``/``pace_max``: the
    fake's own mean interval per stream between counted stamps, over the streams (it
    stamps at write, so a fake short of CPU shows here, not in the delays). A stream that
    cannot connect (``errors``), fails or is still running at the deadline
    (``timed_out``) counts as incomplete.
    """
    loop = asyncio.get_running_loop()
    skip = WARM.get(streams, 10) if warm is None else warm
    request = _request(gateway, headers)
    latencies: list[float] = []
    conns: list[_StampConn] = []
    step = INTERVAL_MS / 1000 / streams
    t0 = loop.time() + 0.05
    shares: dict[str, float] = {}

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i * step - loop.time()))
        conn = await _open(port, latencies, skip)
        conns.append(conn)
        assert conn.transport is not None
        conn.transport.write(request)
        await conn.done

    async def watch(pids: dict[str, int]) -> None:
        # The counted chunks are sent from about t0 + skip to t0 + chunks - 1 periods.
        def read() -> tuple[float, dict[str, float]]:
            used = {name: cpu_seconds(pid) for name, pid in pids.items()}
            used["client"] = time.process_time()
            return loop.time(), used

        await asyncio.sleep(max(0.0, t0 + skip * INTERVAL_MS / 1000 - loop.time()))
        a, before = read()
        await asyncio.sleep(max(0.0, t0 + (chunks - 1) * INTERVAL_MS / 1000 - loop.time()))
        b, after = read()
        shares.update({name: (after[name] - before[name]) / (b - a) for name in after})

    watcher = asyncio.ensure_future(watch(cpu)) if cpu is not None and chunks > skip + 1 else None
    tasks = [asyncio.ensure_future(one(i)) for i in range(streams)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=LEVEL_TIMEOUT + chunks * INTERVAL_MS / 1000)
    finally:
        for t in tasks:
            t.cancel()
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        if watcher is not None:
            watcher.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = sum(1 for t in tasks if not t.cancelled() and t.exception() is not None)
    incomplete = sum(1 for c in conns if not c.ok or c.n != chunks) + (streams - len(conns))
    latencies.sort()
    # The fake's pace: per stream, the mean interval between its counted chunks' stamps.
    # Stamps are taken at write, so a fake starved of CPU sends late without showing it in
    # the delays; it offers less load instead, which this shows.
    pace = sorted(
        (c.stamps[1] - c.stamps[0]) / 1e6 / (c.n - skip - 1) for c in conns if c.n - skip > 1
    )
    out: dict[str, Any] = {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": latencies[-1] if latencies else float("nan"),
        "chunks": len(latencies),
        "incomplete": incomplete,
        "errors": errors,
        "timed_out": len(pending),
        "pace_p50": percentile(pace, 50),
        "pace_max": pace[-1] if pace else float("nan"),
    }
    if cpu is not None:
        out["cpu_share"] = shares
    if cdf:
        out["cdf_ms"] = latencies[:: max(1, len(latencies) // cdf)]
    return out


async def ttfb_once(port: int, gateway: bool) -> float:
    """ms from writing the request (connection already open) to the first content chunk."""
    conn = await _open(port, None, 0)
    assert conn.transport is not None
    try:
        sent = time.time_ns()
        conn.transport.write(_request(gateway))
        await asyncio.wait_for(conn.first, 10)
        if not conn.first_ns:
            raise RuntimeError("stream ended before its first chunk")
        return (conn.first_ns - sent) / 1e6
    finally:
        conn.transport.abort()


async def _run_all(
    fake_port: int, gateway_port: int, chunks: int, rounds: int, n_ttfb: int
) -> dict[str, Any]:
    ports = {"direct": fake_port, "gateway": gateway_port}
    # Warm-up: connections, imports, the provider's first requests.
    for path, port in ports.items():
        await measure(port, gateway=path == "gateway", streams=10, chunks=chunks)
    per_round: dict[int, list[dict[str, Any]]] = {n: [] for n in LEVELS}
    for r in range(rounds):
        for streams in LEVELS:
            row: dict[str, Any] = {}
            for path, port in ports.items():
                row[path] = await measure(
                    port, gateway=path == "gateway", streams=streams, chunks=chunks
                )
                await asyncio.sleep(0.3)  # let the gateway close the upstream streams
            log(
                f"latency round {r + 1}/{rounds}, {streams} streams: p99 direct "
                f"{row['direct']['p99']:.3f} gateway {row['gateway']['p99']:.3f} ms"
            )
            per_round[streams].append(row)
    ttfb: dict[str, list[float]] = {"direct": [], "gateway": []}
    for path, port in ports.items():  # warm-up, not counted
        await ttfb_once(port, path == "gateway")
    for _ in range(n_ttfb):
        for path, port in ports.items():
            ttfb[path].append(await ttfb_once(port, path == "gateway"))
            await asyncio.sleep(0.05)
    results: dict[str, Any] = {}
    for streams, rows in per_round.items():
        level: dict[str, Any] = {"rounds": rows}
        for path in ("direct", "gateway"):
            level[path] = {
                q: summary([row[path][q] for row in rows]) for q in ("p50", "p99", "max")
            }
            level[path]["incomplete"] = sum(row[path]["incomplete"] for row in rows)
            level[path]["pace_p50"] = summary([row[path].get("pace_p50") for row in rows])
        for q in ("p50", "p99", "max"):
            level[f"added_{q}"] = summary([row["gateway"][q] - row["direct"][q] for row in rows])
        results[str(streams)] = level
    results["ttfb"] = {
        "direct": summary(ttfb["direct"]),
        "gateway": summary(ttfb["gateway"]),
        "added": statistics.median(ttfb["gateway"]) - statistics.median(ttfb["direct"]),
    }
    return results


def run_client(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` as the client: on uvloop, this process pinned to CPU 1 meanwhile."""
    import uvloop

    with on_cpu(LOADGEN_CPU), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; ``{"1"|"100"|"1000": {...}, "ttfb": {...}, "meta": {...}}`` (ms)."""
    raise_nofile()
    chunks = CHUNKS[0] if quick else CHUNKS[1]
    rounds = ROUNDS[0] if quick else ROUNDS[1]
    n_ttfb = TTFB_REQUESTS[0] if quick else TTFB_REQUESTS[1]
    started = time.monotonic()
    with Fake(chunks) as fake, Gateway(f"http://127.0.0.1:{fake.port}") as gateway:
        results = run_client(_run_all(fake.port, gateway.port, chunks, rounds, n_ttfb))
        banner, fake_banner = gateway.banner, fake.banner
    results["meta"] = {
        "interval_ms": INTERVAL_MS,
        "chunks_per_stream": chunks,
        "warm_chunks": {str(k): v for k, v in WARM.items()},
        "rounds": rounds,
        "ttfb_requests": n_ttfb,
        "gateway": banner,
        "fake": fake_banner,
        "seconds": round(time.monotonic() - started, 1),
    }
    _print_table(results)
    return results


def _r(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "n/a"
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def _pace(r: dict[str, Any]) -> str:
    pace = r.get("pace_p50")
    return f"{pace['median']:.1f}" if pace and pace.get("n") else "n/a"


def _offered(streams: int, r: dict[str, Any]) -> str:
    pace = r.get("pace_p50")
    if not pace or not pace.get("n") or not pace["median"] > 0:
        return "n/a"
    return f"{streams * 1000 / max(pace['median'], INTERVAL_MS):,.0f}"


def _print_table(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print(
        f"per-chunk latency, receipt - upstream send stamp (ms), median (min-max) of "
        f"{meta['rounds']} rounds; {meta['chunks_per_stream']} chunks/stream every "
        f"{meta['interval_ms']} ms, starts staggered over one period, first "
        f"{meta['warm_chunks']} chunks per stream not counted"
    )
    print(f"gateway: {meta['gateway']}")
    print(f"fake: {meta.get('fake')}")
    print(
        f"{'streams':>7}  {'path':<8} {'p50':>26} {'p99':>26} {'max':>26}  incomplete  fake pace ms"
    )
    for streams in LEVELS:
        row = results[str(streams)]
        for path in ("direct", "gateway"):
            r = row[path]
            print(
                f"{streams:>7}  {path:<8} {_r(r['p50']):>26} {_r(r['p99']):>26} "
                f"{_r(r['max']):>26}  {r['incomplete']:>10}  {_pace(r)}"
            )
        print(
            f"{streams:>7}  {'added':<8} {_r(row['added_p50']):>26} {_r(row['added_p99']):>26} "
            f"{_r(row['added_max']):>26}"
        )
    t = results["ttfb"]
    print(
        f"time to first chunk, one stream, {meta['ttfb_requests']} requests each (ms): "
        f"direct {_r(t['direct'])}, gateway {_r(t['gateway'])}, added {t['added']:.3f}"
    )
    print(f"({meta['seconds']} s)")


def markdown(results: dict[str, Any]) -> str:
    """The section for RESULTS.md: ms, median (min-max) over rounds."""
    meta = results["meta"]
    lines = [
        f"Per-chunk latency, receipt minus the fake's send stamp, ms, median (min-max) over "
        f"{meta['rounds']} interleaved rounds; {meta['chunks_per_stream']} chunks per stream every "
        f"{meta['interval_ms']} ms, stream starts staggered over one period, the first "
        f"{meta['warm_chunks']} chunks of each stream not counted. Gateway (`sse-engine serve "
        f"--provider openai`) on CPU 0; {fake_markdown(meta.get('fake'))} and the client on "
        "CPU 1; uvloop. "
        "`added` = gateway - direct, percentile by percentile within a round. `fake pace`: the "
        "median over streams of the mean interval between the fake's stamps; above 20 ms, CPU 1 "
        "(the fake and the client) could not offer the full load, and the level ran at about "
        "streams x 1000 / pace chunks/s instead of streams x 50.",
        "",
        "| streams | path | p50 | p99 | max | incomplete | fake pace ms | chunks/s offered |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for streams in LEVELS:
        row = results.get(str(streams))
        if not row:
            continue
        for path in ("direct", "gateway"):
            r = row[path]
            lines.append(
                f"| {streams} | {path} | {_r(r['p50'])} | {_r(r['p99'])} | {_r(r['max'])} "
                f"| {r['incomplete']} | {_pace(r)} | {_offered(streams, r)} |"
            )
        lines.append(
            f"| {streams} | **added** | {_r(row['added_p50'])} | {_r(row['added_p99'])} "
            f"| {_r(row['added_max'])} | | | |"
        )
    t = results["ttfb"]
    lines += [
        "",
        f"Time to first chunk at one stream (request written on an open connection to the first "
        f"content chunk; fake with no first-token delay), {meta['ttfb_requests']} requests per "
        f"path, alternating, ms: direct {_r(t['direct'])}, gateway {_r(t['gateway'])}; "
        f"added (difference of medians) **{t['added']:.3f}**.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args()
    out = main(quick=args.quick)
    if args.json:
        json.dump(out, sys.stdout)
        print()

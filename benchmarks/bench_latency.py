"""Latency the gateway adds per chunk: gateway path vs a direct connection to the upstream.

A fake OpenAI upstream (:mod:`engine.testing`, stamp mode) sends a chunk every
20 ms whose text is its send time (``time.time_ns()``). The client reads the
same kind of stream two ways, in the same run:

* direct: ``POST /v1/chat/completions`` on the fake;
* gateway: ``POST /v1/chat/stream`` on ``create_app()`` with the openai provider
  pointed at the fake (served by ``web.AppRunner`` on 127.0.0.1);

and records, per chunk, receipt time minus stamp. The fake, the gateway and the
client each run in their own process (one event loop each), so the gateway's
number is not inflated by sharing a loop with the load. Added latency is
gateway minus direct, at p50 and p99, for 1 and 100 concurrent streams.

    python -m benchmarks.bench_latency [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from engine.sse import Decoder

INTERVAL_MS = 20
CONCURRENCY = (1, 100)
#: Chunks per stream (quick, full): bounded so the run takes well under 60 s.
CHUNKS = (25, 100)
READY_TIMEOUT = 20.0


# -- the two servers, each in its own process -------------------------------------


def _run_fake(port_queue: Any, chunks: int) -> None:
    from engine.testing import FakeOpenAI, Script, serve

    async def run() -> None:
        fake = FakeOpenAI(Script(stamp=True, stamp_count=chunks, interval_ms=INTERVAL_MS))
        async with serve(fake.app()) as url:
            port_queue.put(url)
            await asyncio.Event().wait()

    asyncio.run(run())


def build_gateway(upstream_url: str) -> web.Application:
    """The gateway under test: ``create_app`` with openai pointed at ``upstream_url``."""
    from engine import create_app
    from engine.config import Config

    config = Config.load(
        environ={},
        provider="openai",
        memory_url="memory://",
        providers={"openai": {"api_key": "bench-key", "base_url": f"{upstream_url}/v1"}},
    )
    return create_app(config)


def _run_gateway(port_queue: Any, upstream_url: str) -> None:
    async def run() -> None:
        runner = web.AppRunner(build_gateway(upstream_url), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_queue.put(f"http://127.0.0.1:{runner.addresses[0][1]}")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())


def _start(target: Callable[..., None], *args: Any) -> tuple[mp.process.BaseProcess, str]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args), daemon=True)
    proc.start()
    return proc, queue.get(timeout=READY_TIMEOUT)


# -- the client ---------------------------------------------------------------------


def _stamp_direct(data: str) -> str | None:
    if data == "[DONE]":
        return None
    choices = json.loads(data).get("choices") or []
    return (choices[0].get("delta") or {}).get("content") if choices else None


def _stamp_gateway(data: str) -> str | None:
    obj = json.loads(data)
    return obj.get("content") if "role" in obj else None


async def _one_stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], gateway: bool, out: list[float]
) -> int:
    decoder = Decoder()
    stamp_of = _stamp_gateway if gateway else _stamp_direct
    count = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for data in resp.content.iter_any():
            now = time.time_ns()
            for event in decoder.feed(data):
                if event.event != "message":
                    continue
                text = stamp_of(event.data)
                if text:
                    out.append((now - int(text)) / 1e6)
                    count += 1
    return count


async def measure(url: str, *, gateway: bool, streams: int, chunks: int) -> dict[str, float]:
    """Run ``streams`` concurrent streams; per-chunk latency percentiles in ms."""
    messages = [{"role": "user", "content": "stamp"}]
    if gateway:
        target, body = f"{url}/v1/chat/stream", {"messages": messages, "provider": "openai"}
    else:
        target = f"{url}/v1/chat/completions"
        body = {"model": "m", "messages": messages, "stream": True}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        counts = await asyncio.gather(
            *(_one_stream(session, target, body, gateway, latencies) for _ in range(streams))
        )
    if any(c != chunks for c in counts):
        raise RuntimeError(f"incomplete streams: expected {chunks} chunks each, got {counts}")
    latencies.sort()
    return {
        "p50": _pct(latencies, 0.50),
        "p99": _pct(latencies, 0.99),
        "max": latencies[-1],
        "chunks": float(len(latencies)),
    }


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


async def _run_all(fake_url: str, gateway_url: str, chunks: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # Warm up both paths (connections, imports, the provider's first request).
    await measure(fake_url, gateway=False, streams=2, chunks=chunks)
    await measure(gateway_url, gateway=True, streams=2, chunks=chunks)
    for streams in CONCURRENCY:
        direct = await measure(fake_url, gateway=False, streams=streams, chunks=chunks)
        via = await measure(gateway_url, gateway=True, streams=streams, chunks=chunks)
        results[str(streams)] = {
            "direct": direct,
            "gateway": via,
            "added_p50": via["p50"] - direct["p50"],
            "added_p99": via["p99"] - direct["p99"],
        }
    return results


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; return ``{"1": {...}, "100": {...}, ...}`` (ms) and print a table."""
    chunks = CHUNKS[0] if quick else CHUNKS[1]
    started = time.monotonic()
    fake, fake_url = _start(_run_fake, chunks)
    gateway = None
    try:
        gateway, gateway_url = _start(_run_gateway, fake_url)
        results = asyncio.run(_run_all(fake_url, gateway_url, chunks))
    finally:
        for proc in (gateway, fake):
            if proc is not None:
                proc.terminate()
                proc.join(5)
    results["meta"] = {
        "interval_ms": INTERVAL_MS,
        "chunks_per_stream": chunks,
        "seconds": round(time.monotonic() - started, 1),
    }
    _print_table(results)
    return results


def _print_table(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print(
        f"per-chunk latency, receipt - upstream send stamp (ms); "
        f"{meta['chunks_per_stream']} chunks/stream every {meta['interval_ms']} ms"
    )
    print(f"{'streams':>7}  {'path':<8} {'p50':>8} {'p99':>8} {'max':>8}")
    for streams in CONCURRENCY:
        row = results[str(streams)]
        for path in ("direct", "gateway"):
            r = row[path]
            print(f"{streams:>7}  {path:<8} {r['p50']:8.3f} {r['p99']:8.3f} {r['max']:8.3f}")
        print(f"{streams:>7}  {'added':<8} {row['added_p50']:8.3f} {row['added_p99']:8.3f}")
    print(f"({meta['seconds']} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args()
    out = main(quick=args.quick)
    if args.json:
        json.dump(out, sys.stdout)
        print()

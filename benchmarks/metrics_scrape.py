"""What a ``GET /metrics`` costs with 1,000 open streams and every model label in use.

    python -m benchmarks.metrics_scrape [--streams 1000] [--scrapes 30]

The gateway (this tree, ``serve`` on the mock) runs pinned to CPU 0, the
client on CPU 1. First :data:`engine.metrics.MAX_MODELS` distinct models each
stream once (every labelled series exists: the largest exposition the label cap
allows); then ``--streams`` streams stay open, a chunk a second each, and a
probe stream sends a chunk every 5 ms. Scrapes are timed at the client, and the
probe's gaps between chunks show whether a scrape holds the streams up (the
rendering runs on the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from typing import Any

import aiohttp

from engine.metrics import MAX_MODELS

from ._harness import LOADGEN_CPU, ROOT, SERVER_CPU, raise_nofile
from .ab import _start

PROBE_MS = 5


async def _stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body) as resp:
        async for _ in resp.content.iter_any():
            pass


async def _probe(session: aiohttp.ClientSession, url: str, gaps: list[float]) -> None:
    body = {
        "messages": [{"role": "user", "content": "probe"}],
        "options": {"max_tokens": 1_000_000, "interval_ms": PROBE_MS},
    }
    async with session.post(url, json=body) as resp:
        last = time.perf_counter()
        async for _ in resp.content.iter_any():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now


async def run(port: int, streams: int, scrapes: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(MAX_MODELS):
            body = {"model": f"mock/model-{i}", "messages": [{"role": "user", "content": "hi"}]}
            body["stream"] = True
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                await resp.read()
        url = f"{base}/v1/chat/stream"
        idle = {
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"max_tokens": 100_000, "interval_ms": 1000},
        }
        tasks = [asyncio.create_task(_stream(session, url, idle)) for _ in range(streams)]
        gaps: list[float] = []
        probe = asyncio.create_task(_probe(session, url, gaps))
        while True:  # every stream open
            async with session.get(f"{base}/healthz") as resp:
                if (await resp.json())["streams"] >= streams + 1:
                    break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        baseline = len(gaps)
        await asyncio.sleep(3)
        quiet = sorted(gaps[baseline:])
        times, size, during = [], 0, []
        for _ in range(scrapes):
            mark = len(gaps)
            started = time.perf_counter()
            async with session.get(f"{base}/metrics") as resp:
                text = await resp.read()
            times.append(time.perf_counter() - started)
            size = len(text)
            await asyncio.sleep(0.1)
            during.extend(gaps[mark:])
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        open_line = next(
            line for line in text.splitlines() if line.startswith(b"sse_engine_open_streams ")
        )
        probe.cancel()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(probe, *tasks, return_exceptions=True)
    during.sort()
    return {
        "scrape_p50_ms": statistics.median(times) * 1e3,
        "scrape_max_ms": max(times) * 1e3,
        "bytes": size,
        "series": series,
        "open_streams": float(open_line.split()[1]),
        "probe_gap_p99_quiet_ms": quiet[int(len(quiet) * 0.99)] * 1e3,
        "probe_gap_max_quiet_ms": quiet[-1] * 1e3,
        "probe_gap_p99_scraping_ms": during[int(len(during) * 0.99)] * 1e3,
        "probe_gap_max_scraping_ms": during[-1] * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=30)
    args = parser.parse_args(argv)
    raise_nofile()
    os.sched_setaffinity(0, {LOADGEN_CPU})
    command = [sys.executable, "-m", "engine", "serve", "--port", "0"]
    command += ["--memory", "memory://", "--log-level", "warning"]
    proc, port = _start(command, SERVER_CPU, ROOT, {})
    try:
        result = asyncio.run(run(port, args.streams, args.scrapes))
    finally:
        proc.kill()
    for key, value in result.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

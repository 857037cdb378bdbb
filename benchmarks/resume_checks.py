"""Resume checks on a real `sse-engine serve` (loopback, bounded): idle memory with the log on and
off, replay throughput, and 1,000 live streams each resumed once.

    python -m benchmarks.resume_checks

Server pinned to CPU 0, the client to CPU 1; prints one line per check (numbers for NOTES.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time

import aiohttp

from ._harness import LOADGEN_CPU, ROOT, SERVER_CPU

IDLE_STREAMS = 2000
LIVE_STREAMS = 1000


def _serve(*flags: str) -> tuple[subprocess.Popen[str], str]:
    command = ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "engine", "serve"]
    command += ["--port", "0", "--memory", "memory://", "--log-level", "warning", *flags]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(re.search(r":(\d+) ", proc.stdout.readline()).group(1))  # type: ignore[union-attr]
    proc.stdout.readline()
    return proc, f"http://127.0.0.1:{port}"


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


async def idle(flag: str) -> float:
    """KiB of server RSS per idle native stream (first chunk sent, then a 60 s wait)."""
    proc, base = _serve("--resume", flag)
    url = f"{base}/v1/chat/stream"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for _ in range(50):  # warm
                params = {"q": "hi", "max_tokens": "2", "interval_ms": "0"}
                async with session.get(url, params=params) as resp:
                    await resp.read()
            before = _rss_kib(proc.pid)
            streams = []
            for _ in range(IDLE_STREAMS):
                params = {"q": "hi", "max_tokens": "3", "interval_ms": "60000"}
                resp = await session.get(url, params=params)
                await resp.content.readuntil(b"finish_reason")
                streams.append(resp)
            await asyncio.sleep(1)
            held = _rss_kib(proc.pid)
            for resp in streams:
                resp.close()
        return (held - before) / IDLE_STREAMS
    finally:
        proc.terminate()
        proc.wait()


async def replay() -> str:
    proc, base = _serve()
    try:
        async with aiohttp.ClientSession() as session:
            body = {
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"max_tokens": 2000, "token_size": 64, "interval_ms": 0},
            }
            async with session.post(f"{base}/v1/chat/stream", json=body) as resp:
                raw = await resp.read()
            sid = json.loads(raw.split(b"data: ", 1)[1].split(b"\n", 1)[0])["stream_id"]
            total, rounds = 0, 200
            started = time.perf_counter()
            for _ in range(rounds):
                async with session.get(f"{base}/v1/streams/{sid}") as resp:
                    total += len(await resp.read())
            elapsed = time.perf_counter() - started
        return (
            f"{rounds} replays of a 2,000-event stream ({total // rounds:,} bytes each): "
            f"{total / elapsed / 1e6:.0f} MB/s, {elapsed / rounds * 1000:.2f} ms each"
        )
    finally:
        proc.terminate()
        proc.wait()


async def _live_one(session: aiohttp.ClientSession, base: str, i: int) -> bool:
    body = {
        "messages": [{"role": "user", "content": f"hi {i}"}],
        "options": {"max_tokens": 50, "interval_ms": 20},
    }
    resp = await session.post(f"{base}/v1/chat/stream", json=body)
    first = await resp.content.readuntil(b"\n\n")  # retry: and the start event
    sid = json.loads(first.split(b"data: ", 1)[1].split(b"\n", 1)[0])["stream_id"]
    follower = await session.get(f"{base}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:0"})
    primary = first + await resp.read()
    followed = await follower.read()
    ours = [b for b in primary.split(b"\n\n") if b and b"event: start" not in b]
    theirs = [b for b in followed.split(b"\n\n") if b]
    theirs = [b.split(b"\n", 1)[1] if b.startswith(b"retry:") else b for b in theirs]
    return ours == theirs and len(theirs) == 51


async def live() -> str:
    proc, base = _serve()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            started = time.perf_counter()
            results = await asyncio.gather(
                *(_live_one(session, base, i) for i in range(LIVE_STREAMS))
            )
            elapsed = time.perf_counter() - started
        return (
            f"{LIVE_STREAMS} live streams (50 chunks at 20 ms) each resumed once from :0 while "
            f"live: {sum(results)}/{LIVE_STREAMS} followers got exactly the primary's events, "
            f"in {elapsed:.1f} s"
        )
    finally:
        proc.terminate()
        proc.wait()


async def main() -> None:
    off, on = [], []
    for _ in range(2):  # alternating
        off.append(await idle("off"))
        on.append(await idle("on"))
    print(
        f"idle native stream, server RSS per stream at {IDLE_STREAMS}: resume off "
        f"{', '.join(f'{v:.2f}' for v in off)} KiB, on {', '.join(f'{v:.2f}' for v in on)} KiB"
    )
    print(await replay())
    print(await live())


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)
    os.sched_setaffinity(0, {LOADGEN_CPU})
    asyncio.run(main())

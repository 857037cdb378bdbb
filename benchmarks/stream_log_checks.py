"""The Redis stream log at load: two real `sse-engine serve` boxes sharing one Redis.

    python -m benchmarks.stream_log_checks [--redis redis://127.0.0.1:6379/0] [--streams 1000]

Box A relays ``--streams`` streams from the mock (50 chunks at 20 ms), each
followed live from ``:0`` by a reader on box B (what a resume elsewhere does);
then every stream is resumed again on B, from its start, once it ended. It
prints (numbers for NOTES.md and RESULTS.md): followers that got exactly the
primary's events, replays that matched, the Redis commands the gateways sent
per chunk (``INFO commandstats``: calls of EVALSHA, the writer's, against the
XADDs its scripts made), and the Redis connections each box held while B
served every follower (``CLIENT LIST`` by name). Box A is pinned to CPU 0, box
B and the load to CPU 1 (Redis is not pinned): a 2-core machine, so this checks
correctness and counts at scale, not speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from ._harness import LOADGEN_CPU, ROOT, SERVER_CPU

CHUNKS = 50


def _serve(redis_url: str, cpu: int = SERVER_CPU) -> tuple[subprocess.Popen[str], str]:
    command = ["taskset", "-c", str(cpu), sys.executable, "-m", "engine", "serve"]
    command += ["--port", "0", "--memory", "memory://", "--log-level", "warning"]
    command += ["--stream-log", redis_url]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(re.search(r":(\d+) ", proc.stdout.readline()).group(1))  # type: ignore[union-attr]
    proc.stdout.readline()
    return proc, f"http://127.0.0.1:{port}"


def _blocks(raw: bytes) -> list[bytes]:
    blocks = [b for b in raw.split(b"\n\n") if b]
    return [b.split(b"\n", 1)[1] if b.startswith(b"retry:") else b for b in blocks]


async def _one(
    session: aiohttp.ClientSession, a: str, b: str, i: int, sids: list[str]
) -> tuple[bool, bytes]:
    body = {
        "messages": [{"role": "user", "content": f"hi {i}"}],
        "options": {"max_tokens": CHUNKS, "interval_ms": 20},
    }
    resp = await session.post(f"{a}/v1/chat/stream", json=body)
    first = await resp.content.readuntil(b"\n\n")
    first += await resp.content.readuntil(b"\n\n")  # retry:, then the start event
    sid = json.loads(first.split(b"data: ", 1)[1].split(b"\n", 1)[0])["stream_id"]
    sids.append(sid)
    follower = await session.get(f"{b}/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:0"})
    primary = first + await resp.read()
    followed = await follower.read()
    ours = _blocks(primary)[1:]  # (the start event: the follower saw it as :0)
    ok = _blocks(followed) == ours and len(ours) == CHUNKS + 1
    if not ok:
        print(f"follower of {sid}: {follower.status} {followed[-300:]!r}", file=sys.stderr)
    return ok, primary


async def _commandstats(client: aioredis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


async def _connections(client: aioredis.Redis) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in await client.client_list():
        name = entry.get("name", "")
        if name.startswith("sse-engine:"):
            kind = "follow" if name.endswith(":follow") else "main"
            key = f"{name.split(':')[1]}:{kind}"
            counts[key] = counts.get(key, 0) + 1
    return counts


async def main(redis_url: str, streams: int) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    a_proc, a = _serve(redis_url)
    b_proc, b = _serve(redis_url, LOADGEN_CPU)
    try:
        before = await _commandstats(client)
        sids: list[str] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            started = time.perf_counter()
            task = asyncio.gather(*(_one(session, a, b, i, sids) for i in range(streams)))
            await asyncio.sleep(1.0 + streams / 1000)  # (all followers are reading by then)
            connections = await _connections(client)
            results = await task
            elapsed = time.perf_counter() - started
            after = await _commandstats(client)
            replayed = 0
            for sid, (_, primary) in zip(sids, results, strict=False):
                async with session.get(f"{b}/v1/streams/{sid}") as resp:
                    replayed += _blocks(await resp.read()) == _blocks(primary)
        followed = sum(ok for ok, _ in results)
        chunks = streams * CHUNKS
        evalsha = after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0)
        xadd = after.get("cmdstat_xadd", 0) - before.get("cmdstat_xadd", 0)
        xread = after.get("cmdstat_xread", 0) - before.get("cmdstat_xread", 0)
        print(
            f"{streams} streams relayed on box A ({CHUNKS} chunks at 20 ms), each followed live "
            f"from :0 on box B: {followed}/{streams} followers got exactly the primary's events "
            f"({elapsed:.1f} s); {replayed}/{streams} replayed whole on B after their end"
        )
        print(
            f"Redis commands for {chunks:,} chunks: {evalsha} EVALSHA (the writer's batches) = "
            f"{evalsha / chunks:.4f} a chunk, carrying {xadd:,} XADD; B's followers: {xread} "
            f"XREAD (blocking, multiplexed)"
        )
        print(f"Redis connections by worker while B served every follower: {connections}")
    finally:
        for proc in (a_proc, b_proc):
            proc.terminate()
            proc.wait()
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)
    os.sched_setaffinity(0, {LOADGEN_CPU})
    asyncio.run(main(args.redis, args.streams))

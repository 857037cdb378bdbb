"""Conversation memory rates per driver: add_message and get_messages.

Drivers: ``memory://``, SQLite (a file in a temporary directory), and Redis and
PostgreSQL when ENGINE_TEST_REDIS_URL / ENGINE_TEST_POSTGRES_URL name a server
(``.ci/run`` starts both under CI). Operations, each timed over a fixed slice of
wall time and repeated, the table showing the median rate with the min-max range:

- ``add``: ``add_user_message`` one after another, each awaited (the latency a
  request pays to store its message);
- ``add x50``: 50 tasks adding at once to 50 conversations (throughput under
  concurrent requests, what a pooled driver is for);
- ``get 20/100``: ``get_messages(limit=20)`` on a 100-message conversation (a
  request loading its trimmed history);
- ``get all 100``: ``get_messages()`` of the same conversation.

Every rate is operations per second. Time-bounded: about 20 s with all four
drivers, under 10 s with ``--quick``. Run it as ``python -m benchmarks.bench_memory``.
The data is written under a fresh parent class and cleared afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from engine.memory import MemoryStore, open_store

CONCURRENCY = 50
HISTORY = 100
LIMIT = 20
CONTENT = "How do I stream server-sent events from aiohttp? " * 4  # ~200 chars, a short turn

OPS = [
    ("add", "add"),
    ("add_concurrent", f"add x{CONCURRENCY}"),
    ("get_limit", f"get {LIMIT}/{HISTORY}"),
    ("get_all", f"get all {HISTORY}"),
]


async def _rate(op: Callable[[], Awaitable[int]], seconds: float) -> float:
    """Run ``op`` (which returns how many operations it did) until ``seconds`` pass."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        count += await op()
    return count / (time.perf_counter() - start)


def _summary(rates: list[float]) -> dict[str, float]:
    rates = sorted(rates)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1]}


async def _bench_store(store: MemoryStore, repeats: int, seconds: float) -> dict[str, Any]:
    parent = f"Bench-{uuid.uuid4().hex[:12]}"
    used: list[str] = []

    def chat(parent_id: str) -> Any:
        used.append(parent_id)
        return store.for_parent(parent, parent_id)

    single = chat("single")
    many = [chat(f"c{i}") for i in range(CONCURRENCY)]
    history = chat("history")
    for i in range(HISTORY):
        role = "user" if i % 2 == 0 else "assistant"
        await history.add_message(role, f"{i}: {CONTENT}")

    async def add() -> int:
        await single.add_user_message(CONTENT)
        return 1

    async def add_concurrent() -> int:
        await asyncio.gather(*(c.add_user_message(CONTENT) for c in many))
        return CONCURRENCY

    async def get_limit() -> int:
        assert len(await history.get_messages(limit=LIMIT)) == LIMIT
        return 1

    async def get_all() -> int:
        assert len(await history.get_messages()) == HISTORY
        return 1

    ops = {
        "add": add,
        "add_concurrent": add_concurrent,
        "get_limit": get_limit,
        "get_all": get_all,
    }
    results: dict[str, Any] = {}
    try:
        for name, op in ops.items():
            await _rate(op, seconds / 4)  # warm-up: connections, statement caches
            results[name] = _summary([await _rate(op, seconds) for _ in range(repeats)])
    finally:
        for parent_id in used:
            await store.for_parent(parent, parent_id).clear()
    return results


async def _run(quick: bool) -> dict[str, Any]:
    repeats = 3 if quick else 5
    seconds = 0.15 if quick else 0.4
    results: dict[str, Any] = {"repeats": repeats, "seconds_per_repeat": seconds, "drivers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp}/bench.db"}
        for name, var in [
            ("redis", "ENGINE_TEST_REDIS_URL"),
            ("postgres", "ENGINE_TEST_POSTGRES_URL"),
        ]:
            if os.environ.get(var):
                urls[name] = os.environ[var]
        for name, url in urls.items():
            async with await open_store(url) as store:
                results["drivers"][name] = await _bench_store(store, repeats, seconds)
    return results


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print a table, and return the numbers (operations per second)."""
    results = asyncio.run(_run(quick))
    skipped = [d for d in ("redis", "postgres") if d not in results["drivers"]]
    print(
        f"Conversation memory, {results['repeats']} runs of {results['seconds_per_repeat']} s"
        " per cell (ops/s, median and min-max)"
    )
    print(f"{'driver':<10}" + "".join(f"{label:>26}" for _, label in OPS))
    for driver, ops in results["drivers"].items():
        cells = "".join(
            f"{ops[key]['median']:>10,.0f} ({ops[key]['min']:,.0f}-{ops[key]['max']:,.0f})".rjust(
                26
            )
            for key, _ in OPS
        )
        print(f"{driver:<10}{cells}")
    if skipped:
        print(f"skipped (no ENGINE_TEST_*_URL): {', '.join(skipped)}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    main(quick=parser.parse_args().quick)

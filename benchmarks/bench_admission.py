"""Admission latency: a request's key checked and its limits taken, with the SQLite key store.

    python -m benchmarks.bench_admission [--keys N] [--requests N]

The gateway never waits for the key store on a request (the keys are held in
memory and re-read in the background), so this measures what every request
pays: reading the credential, one SHA-256, the key ring lookup, and the
limiter's check-and-take and release, with every limit of the key set. The
store is a real SQLite file holding ``--keys`` keys made through the admin
path. Prints p50, p99 and max in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time

from engine.auth import Gatekeeper
from engine.config import Config
from engine.keys import KeyPolicy
from engine.keystore import SQLiteKeys


async def measure(keys: int, requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        store = await SQLiteKeys.open(f"{folder}/keys.db")
        gate = Gatekeeper(Config.load(environ={}, admin_key="a" * 32))
        await gate.open(store)
        policy = KeyPolicy(rpm=10**9, tpm=10**12, max_streams=10**6, budget_tokens=10**12)
        secrets = [(await gate.create(f"k{i}", policy))[1] for i in range(keys)]
        timings = []
        clock = time.perf_counter_ns
        for i in range(requests):
            headers = {"Authorization": f"Bearer {secrets[i % keys]}"}
            started = clock()
            who = gate.authenticate(headers, {}, query_token=False)
            admission = await gate.admit(who, "mock/mock-1", 120, 0)
            elapsed = clock() - started
            assert admission is not None
            admission.release(100)
            timings.append(elapsed / 1000)
        await gate.aclose()
    timings.sort()
    return {
        "p50_us": statistics.median(timings),
        "p99_us": timings[int(len(timings) * 0.99)],
        "max_us": timings[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.keys, args.requests))
    print(
        f"admission with {args.keys} stored keys, {args.requests} requests: "
        f"p50 {result['p50_us']:.1f} us, p99 {result['p99_us']:.1f} us, "
        f"max {result['max_us']:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

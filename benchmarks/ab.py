"""A/B two revisions of the gateway in one run: CPU per stream set-up and per chunk.

    python -m benchmarks.ab OLD [NEW] [--rounds N] [--old-flags "..."] [--new-flags "..."]

``OLD`` and ``NEW`` are git revisions (``NEW`` defaults to the working tree;
``.`` names the working tree on either side); the flags go to each side's
``serve`` (``. --old-flags "--metrics off"``, the working tree against itself,
measures a feature's cost).
Each is exported (``git archive``) to a temporary folder and served by its own
``python -m engine serve`` pinned to CPU 0, both at once; the load and a fake
OpenAI upstream (this tree's ``engine.testing``) run on CPU 1. Rounds alternate
the order of the two, and each case reports the gateway's CPU (``/proc``
utime + stime, 10 ms ticks, so each case does enough work to make them
small) per request or per chunk: medians, min-max, and the ratio of medians.
A shared, noisy machine moves both sides of one round together; that is the
point of measuring them side by side.

Every request carries ``Authorization: Bearer`` :data:`BENCH_KEY` (an open
gateway ignores it), so ``--new-flags "--config benchmarks/keyed.toml"``
measures client keys and limits on against off.

Cases:
* ``setup``: ``POST /v1/chat/stream`` on the mock, one chunk: everything a
  stream pays once (middleware, parsing, memory glue, headers, supervisor).
* ``mock``: 500 chunks at interval 0: the relay loop and encoder per chunk.
* ``relay``: 200 concurrent streams relayed from the fake OpenAI upstream at
  20 ms per chunk (50 chunks each): the hot path users run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from ._harness import LOADGEN_CPU, ROOT, SERVER_CPU, raise_nofile

_TICK = os.sysconf("SC_CLK_TCK")
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
RELAY_STREAMS = 200
RELAY_CHUNKS = 50
MOCK_CHUNKS = 500
#: The key benchmarks/keyed.toml accepts (with limits far above any load here).
BENCH_KEY = "sk-sse-benchmark-key-0123456789abcdefghijklmnopqrstu"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@contextlib.contextmanager
def _tree(rev: str | None) -> Iterator[Path]:
    """The source of ``rev`` in a folder (the working tree itself for ``None`` or ``.``)."""
    if rev is None or rev == ".":
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="sse-ab-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "engine"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def _start(command: list[str], cpu: int, cwd: Path, env: dict[str, str]) -> tuple[Any, int]:
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), *command],
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": str(cwd)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = _URL.search(line)
        if match:
            return proc, int(match.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{command} did not start")


async def _streams(port: int, body: dict[str, Any], count: int, concurrency: int) -> int:
    """``count`` streams, ``concurrency`` at a time; returns the data events received."""
    url = f"http://127.0.0.1:{port}/v1/chat/stream"
    events = 0
    left = count
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal left, events
            while left > 0:
                left -= 1
                async with session.post(url, json=body) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status}: {await resp.text()}")
                    body_bytes = await resp.read()  # (not in the +=: it would load events first)
                    events += body_bytes.count(b"\ndata: ") - 2  # less start and done

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return events


CASES: dict[str, tuple[dict[str, Any], int, int, str]] = {
    # name: (body, streams, concurrency, unit)
    "setup": (
        {"messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 1}},
        6000,
        20,
        "request",
    ),
    "mock": (
        {
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"max_tokens": MOCK_CHUNKS, "interval_ms": 0},
        },
        300,
        20,
        "chunk",
    ),
    "relay": (
        {"messages": [{"role": "user", "content": "hi"}], "provider": "openai"},
        2 * RELAY_STREAMS,
        RELAY_STREAMS,
        "chunk",
    ),
}


def _measure(proc: Any, port: int, case: str) -> float:
    body, count, concurrency, unit = CASES[case]
    asyncio.run(_streams(port, body, min(count, 200), concurrency))  # warm
    before = _cpu(proc.pid)
    events = asyncio.run(_streams(port, body, count, concurrency))
    spent = _cpu(proc.pid) - before
    return spent / (count if unit == "request" else max(1, events)) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", help="default: the working tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--old-flags", default="", help="extra `serve` flags for OLD")
    parser.add_argument("--new-flags", default="", help="extra `serve` flags for NEW")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    raise_nofile()
    os.sched_setaffinity(0, {LOADGEN_CPU})
    labels = {
        "old": f"{args.old} {args.old_flags}".strip(),
        "new": f"{args.new or 'working tree'} {args.new_flags}".strip(),
    }
    flags = {"old": args.old_flags.split(), "new": args.new_flags.split()}
    python = sys.executable
    with contextlib.ExitStack() as stack:
        fake, fake_port = _start(
            [
                python,
                *("-m", "engine.testing", "openai", "--interval-ms", "20", "--token-size", "4"),
                *("--text", "abcd" * RELAY_CHUNKS),
            ],
            LOADGEN_CPU,
            ROOT,
            {},
        )
        stack.callback(fake.kill)
        gateways = {}
        for side, rev in (("old", args.old), ("new", args.new)):
            tree = stack.enter_context(_tree(rev))
            env = {
                "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
                "OPENAI_API_KEY": "x",
            }
            command = [python, "-m", "engine", "serve", "--port", "0"]
            command += ["--memory", "memory://", "--log-level", "warning", *flags[side]]
            proc, port = _start(command, SERVER_CPU, tree, env)
            stack.callback(proc.kill)
            gateways[side] = (proc, port)
        results: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for case in cases:
                order = ("old", "new") if rnd % 2 == 0 else ("new", "old")
                for side in order:
                    value = _measure(*gateways[side], case)
                    results.setdefault((case, side), []).append(value)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"| case | {labels['old']} | {labels['new']} | new/old |")
    print("|---|---|---|---|")
    for case in cases:
        unit = CASES[case][3]
        old, new = results[(case, "old")], results[(case, "new")]
        m_old, m_new = statistics.median(old), statistics.median(new)
        print(
            f"| {case} (us/{unit}) | {m_old:.1f} ({min(old):.1f}-{max(old):.1f}) "
            f"| {m_new:.1f} ({min(new):.1f}-{max(new):.1f}) | {m_new / m_old:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

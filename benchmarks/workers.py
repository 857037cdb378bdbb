"""events/s of ``serve --workers 1`` against ``--workers 2`` on this machine, and the cores used.

    python -m benchmarks.workers [--reps 3] [--window 3]

The mock at interval 0 (2,000 chunks of 16 bytes a stream, 50 clients at once,
``benchmarks._loadgen``'s throughput mode: a raw asyncio client on uvloop that
counts data lines). Three layouts, because the machine has two cores and the
load generator needs one of them:

* ``1 worker, pinned``: the gateway on CPU 0, the load on CPU 1 (the layout of
  every other benchmark here);
* ``1 worker, shared``: the gateway and the load free to use both cores;
* ``2 workers, shared``: the parent and its two workers and the load, all free
  to use both cores.

``server cores`` is the CPU time of the gateway's workers (all of them) over
the measured window: how much of the machine the gateway got; ``us/event``
that CPU time per event. A
second worker helps only as far as the load generator leaves a core free;
on a box whose clients are elsewhere each worker has a core of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._harness import ROOT, _env, log, raise_nofile

CLIENTS = 50
MAX_TOKENS = 2000
TOKEN_SIZE = 16
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
_STARTED = re.compile(r"worker \d+ started \(pid (\d+)\)")
# benchmarks._loadgen's throughput mode, on uvloop when installed (the bench
# extra), else on asyncio: the load generator is then slower, not the gateway.
_LOADGEN = """
import asyncio, json, pathlib, sys
from benchmarks import _loadgen
from benchmarks._harness import raise_nofile
args = json.loads(sys.argv[1])
one = _loadgen.cpu_seconds  # (the window's server CPU: every worker's, summed)
_loadgen.cpu_seconds = lambda pid: sum(one(p) for p in args["pids"])
try:
    import uvloop
    run = uvloop.run
except ImportError:
    run = asyncio.run
raise_nofile()
pathlib.Path(sys.argv[2]).write_text(json.dumps(run(_loadgen.throughput(args))))
"""
LAYOUTS: dict[str, tuple[int, str, str]] = {
    # name: (workers, gateway CPUs, load CPUs)
    "1 worker, pinned": (1, "0", "1"),
    "1 worker, shared": (1, "0,1", "0,1"),
    "2 workers, shared": (2, "0,1", "0,1"),
}


def _start(workers: int, cpus: str, log_file: Path) -> tuple[subprocess.Popen[str], int, list[int]]:
    with log_file.open("w") as err:
        proc = subprocess.Popen(
            [
                *("taskset", "-c", cpus, sys.executable, "-m", "engine", "serve"),
                *("--port", "0", "--workers", str(workers), "--memory", "memory://"),
                *("--log-level", "info"),
            ],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = _URL.search(line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"serve did not start: {line!r} {log_file.read_text()[-2000:]}")
    pids = [int(pid) for pid in _STARTED.findall(log_file.read_text())] or [proc.pid]
    return proc, int(match.group(1)), pids


def _load(port: int, pids: list[int], cpus: str, window: float) -> dict[str, Any]:
    args = {
        "mode": "throughput",
        "port": port,
        "pid": pids[0],
        "pids": pids,
        "target": f"/v1/chat/stream?q=b&max_tokens={MAX_TOKENS}&token_size={TOKEN_SIZE}"
        "&interval_ms=0",
        "expected": MAX_TOKENS + 2,
        "clients": CLIENTS,
        "warmup": 0.7,
        "window": window,
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run(
            [*("taskset", "-c", cpus, sys.executable, "-c", _LOADGEN), json.dumps(args), str(out)],
            cwd=ROOT,
            env=_env(),
            check=True,
            timeout=window + 60,
            capture_output=True,
        )
        return dict(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    args = parser.parse_args(argv)
    raise_nofile()
    results: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for rep in range(args.reps):
            for name, (workers, gateway_cpus, load_cpus) in LAYOUTS.items():
                proc, port, pids = _start(workers, gateway_cpus, Path(tmp) / "serve.log")
                try:
                    result = _load(port, pids, load_cpus, args.window)
                    cores = result["server_cpu_s"] / result["seconds"]
                finally:
                    proc.terminate()
                    proc.wait(30)
                per_event = result["cpu_us_per_event"] or 0.0
                results[name].append(
                    (result["events_per_s"], cores, per_event, result["streams_bad"])
                )
                log(
                    f"{rep + 1}/{args.reps} {name:>18}: {result['events_per_s']:>9,.0f} ev/s, "
                    f"server cores {cores:.2f}, {per_event:.2f} us/event, "
                    f"{result['streams_bad']} bad streams"
                )
    print("| layout | events/s (median, min-max) | server cores | us/event | bad streams |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        rates = [r[0] for r in runs]
        print(
            f"| {name} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {statistics.median(r[1] for r in runs):.2f} "
            f"| {statistics.median(r[2] for r in runs):.2f} | {sum(r[3] for r in runs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

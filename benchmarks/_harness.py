"""Shared benchmark plumbing: pinned subprocesses, /proc readings, statistics, progress.

The machine has two cores: the server under test runs on CPU 0 and the load
generator on CPU 1 (``sched_setaffinity`` in the child before exec), both with
the open-file limit raised to the hard limit. Everything listens on 127.0.0.1.
Every child is killed on the way out, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
SERVER_CPU = 0
LOADGEN_CPU = 1

SERVERS = ("native", "sse-starlette", "aiohttp-sse", "aiohttp-plain", "raw")
LABELS = {
    "native": "sse-engine (ours)",
    "sse-starlette": "sse-starlette + uvicorn",
    "aiohttp-sse": "aiohttp-sse + aiohttp",
    "aiohttp-plain": "plain aiohttp StreamResponse + msgspec (reference)",
    "raw": "raw asyncio Protocol (ceiling)",
}
_MODULES = {
    "sse-starlette": "benchmarks.servers.starlette_sse",
    "aiohttp-sse": "benchmarks.servers.aiohttp_sse_server",
    "aiohttp-plain": "benchmarks.servers.aiohttp_plain",
    "raw": "benchmarks.servers.raw",
}
_URL = re.compile(rb"http://127\.0\.0\.1:(\d+)")


def log(msg: str) -> None:
    """Progress, on stderr, with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pinned(cpu: int) -> Any:
    def setup() -> None:
        if cpu < (os.cpu_count() or 1):
            os.sched_setaffinity(0, {cpu})
        raise_nofile()

    return setup


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Server:
    """One server under test, pinned to CPU 0; ``port`` and ``pid`` once started."""

    def __init__(self, kind: str, *, heartbeat: float = 15.0) -> None:
        self.kind = kind
        self.heartbeat = heartbeat
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.banner = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.kind == "native":
            from .servers.native import command

            return command(self.heartbeat)
        return [sys.executable, "-m", _MODULES[self.kind]]

    def start(self, timeout: float = 20.0) -> Server:
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=_env(BENCH_HEARTBEAT=str(self.heartbeat), PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pinned(SERVER_CPU),
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 4096)
                buf += data
                m = _URL.search(buf)
                if m:
                    self.port = int(m.group(1))
                    self.banner = buf.split(b"\n", 1)[0].decode(errors="replace")
                    return self
        self.stop()
        raise RuntimeError(f"{self.kind} server did not start within {timeout} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def servers(kinds: Sequence[str], *, heartbeat: float = 15.0) -> Iterator[dict[str, Server]]:
    """Start several servers at once (all pinned to CPU 0; idle ones cost nothing)."""
    started: dict[str, Server] = {}
    try:
        for kind in kinds:
            started[kind] = Server(kind, heartbeat=heartbeat).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def loadgen(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the load generator once, pinned to CPU 1; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        _run_loadgen({**args, "out": str(out)}, timeout)
        return dict(json.loads(out.read_text()))


def _run_loadgen(args: dict[str, Any], timeout: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._loadgen", json.dumps(args)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=_pinned(LOADGEN_CPU),
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise RuntimeError(f"load generator timed out after {timeout} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-2000:]}")


class Interactive:
    """A load generator that reports ``ready`` and waits for a line on stdin (idle mode)."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._loadgen", json.dumps(args)],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            preexec_fn=_pinned(LOADGEN_CPU),
        )

    def read_json(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    break
                line += data
        if not line.endswith(b"\n"):
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() else ""
            raise RuntimeError(f"load generator gave no answer in {timeout} s {err[-1500:]}")
        return dict(json.loads(line))

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median with min and max."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def fmt_range(s: dict[str, float], spec: str = ",.0f") -> str:
    if not s.get("n"):
        return "n/a"
    return f"{format(s['median'], spec)} ({format(s['min'], spec)}-{format(s['max'], spec)})"


def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "sse-engine",
        "aiohttp",
        "msgspec",
        "anyio",
        "uvloop",
        "sse-starlette",
        "starlette",
        "uvicorn",
        "httptools",
        "aiohttp-sse",
        "matplotlib",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        # Others work in the same tree: say which engine files differed from the commit.
        git["dirty"] = subprocess.run(
            ["git", "status", "--porcelain", "--", "engine"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        git["dirty"] = [line[3:] for line in git["dirty"] if line.strip()]
    return {
        "git": git,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "versions": versions,
    }

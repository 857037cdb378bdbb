"""A bounded soak: hundreds of clients opening, reading, leaving, resuming and stopping streams.

    python -m benchmarks.soak [--minutes 10] [--clients 300] [--sample-seconds 15]
                              [--seconds S] [--no-record] [--json PATH]

(``make soak``; ``make soak ARGS='--minutes 2'`` for a shorter one.)

One ``python -m engine serve`` (this tree) on 127.0.0.1, pinned to CPU 0, with
memory in a SQLite file in a temporary folder and resume on; the clients
(benchmarks._soak_clients: the mix of actions and what each checks) and a fake
OpenAI upstream (``python -m engine.testing openai``, its own process) on CPU 1.
Every ``--sample-seconds`` the gateway's RSS, open file descriptors and threads
are read from ``/proc/<pid>``, its asyncio tasks, open streams, generations and
resume logs from ``GET /metrics`` (gauges read at scrape time), and the
clients' finished streams, errors and resume mismatches from their tally. At
the end each series' slope after warm-up is fitted (benchmarks._soak_report)
and printed as a Markdown table, which replaces the "Soak" section of
benchmarks/RESULTS.md (``--no-record``: print only).

Finished streams are kept for resume ``--resume-ttl`` seconds: a tenth of the
run, 2 to 60 (600 by default in ``serve``). With ``serve``'s default the logs
alone would grow for the first ten minutes by design (bounded by
``resume_total_bytes``), and a 10-minute soak could not tell that from a leak;
expiring within the warm-up, they reach their steady state before the slopes
are fitted.

Bounded: everything talks to 127.0.0.1, the clients stop at the deadline, a
hard timeout (SIGALRM) kills the children and exits, and every child is killed
in ``finally``. A gateway that does not start (the shared tree may be mid-edit)
is retried after a minute, ``--start-retries`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp

from ._harness import LOADGEN_CPU, ROOT, SERVER_CPU, log, machine, raise_nofile
from ._soak_clients import (
    ACTIONS,
    CONVERSATIONS,
    DETACH,
    NATIVE_INTERVALS_MS,
    NATIVE_TOKENS,
    PAUSE,
    RELAY_TEXT,
    Load,
    Tally,
)
from ._soak_report import SECTION, WARMUP, analyse, replace_section, table

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
_TICK = os.sysconf("SC_CLK_TCK")
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
#: Seconds the clients get, once the deadline passed, to finish what they started.
FINISH_GRACE = 20.0
#: Seconds to wait for the gateway to go idle after the load.
DRAIN_WAIT = 30.0


class Child:
    """A pinned subprocess whose output is drained by a thread (a full pipe would stall it)."""

    def __init__(self, name: str, command: list[str], cpu: int, env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=100)
        self.warnings = 0  # lines at WARNING or worse, and tracebacks
        self.port = 0
        self._started = threading.Event()
        threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            if not self.port and (match := _URL.search(line)):
                self.port = int(match.group(1))
                self._started.set()
            elif re.search(r"WARNING|ERROR|CRITICAL|Traceback", line):
                self.warnings += 1
        self._started.set()  # (it exited)

    def wait_started(self, timeout: float) -> int:
        """Its port, once its banner named one; raises RuntimeError if it did not."""
        self._started.wait(timeout)
        if not self.port:
            self.kill()
            tail = "\n".join(list(self.tail)[-30:])
            raise RuntimeError(f"{self.name} did not start within {timeout} s:\n{tail}")
        return self.port

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _env(**extra: str) -> dict[str, str]:
    """The environment without the operator's engine settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "SSE_ENGINE_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _proc_status(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            found[name] = int(rest.split()[0])
    return found


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text exposition -> {name: {labels: value}} (labels as written, "" for none)."""
    found: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            found[match.group(1)][match.group(2) or ""] = float(match.group(3))
    return found


def _by_label(series: dict[str, float], label: str) -> dict[str, float]:
    out = {}
    for labels, value in series.items():
        match = re.search(rf'{label}="([^"]*)"', labels)
        if match and value:
            out[match.group(1)] = value
    return out


class Sampler:
    """Reads the gateway (``/proc`` and ``/metrics``) and the clients' tally, now and then."""

    def __init__(
        self, gateway: Child, others: list[Child], session: aiohttp.ClientSession, base: str
    ) -> None:
        self.gateway = gateway
        self.others = others
        self.session = session
        self.base = base
        self.samples: list[dict[str, Any]] = []
        self.scrape_failures = 0
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._cpu: tuple[float, float, float, float] | None = None

    async def take(self, t0: float, tally: Tally) -> dict[str, Any]:
        now = time.monotonic()
        pid = self.gateway.pid
        status = _proc_status(pid)
        sample: dict[str, Any] = {
            "t": round(now - t0, 2),
            "rss_kib": status["VmRSS"],
            # (Which memory: the heap, or files and shared memory mapped, as SQLite's WAL index.)
            "rss_anon_kib": status.get("RssAnon"),
            "rss_file_kib": status.get("RssFile"),
            "rss_shmem_kib": status.get("RssShmem"),
            "threads": status["Threads"],
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "finished": tally.finished,
            "errors": tally.errors,
            "mismatches": tally.mismatches,
            "in_flight": tally.in_flight,
        }
        cpu = (
            now,
            _cpu_seconds(pid),
            time.process_time(),
            sum(_cpu_seconds(c.pid) for c in self.others),
        )
        if self._cpu is not None:
            span = cpu[0] - self._cpu[0]
            sample["gateway_cpu"] = round((cpu[1] - self._cpu[1]) / span, 3)
            sample["load_cpu"] = round((cpu[2] - self._cpu[2]) / span, 3)
            sample["upstream_cpu"] = round((cpu[3] - self._cpu[3]) / span, 3)
        self._cpu = cpu
        try:
            async with asyncio.timeout(10):
                async with self.session.get(f"{self.base}/metrics") as resp:
                    text = await resp.text()
            metrics = self.last_metrics = parse_metrics(text)
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.scrape_failures += 1
            metrics = {}

        def gauge(name: str) -> float | None:
            return metrics.get(name, {}).get("")

        sample["tasks"] = gauge("sse_engine_asyncio_tasks")
        sample["open_streams"] = gauge("sse_engine_open_streams")
        sample["generations"] = gauge("sse_engine_generations")
        sample["detached"] = gauge("sse_engine_detached_generations")
        sample["resume_logs"] = gauge("sse_engine_resume_logs")
        log_bytes = gauge("sse_engine_resume_log_bytes")
        sample["resume_log_kib"] = None if log_bytes is None else round(log_bytes / 1024, 1)
        self.samples.append(sample)
        return sample


def _start_gateway(tmp: Path, upstream: int, args: argparse.Namespace) -> Child:
    runner = "benchmarks._soak_traced" if args.tracemalloc else "engine"
    command = [sys.executable, "-m", runner, "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--memory", f"sqlite:///{tmp}/soak-memory.db", "--resume", "on"]
    command += ["--resume-ttl", str(args.resume_ttl), "--log-level", "warning"]
    env = _env(OPENAI_BASE_URL=f"http://127.0.0.1:{upstream}/v1", OPENAI_API_KEY="sk-soak")
    env["SOAK_TRACE_DIR"] = str(tmp)
    for attempt in range(args.start_retries + 1):
        gateway = Child("gateway", command, SERVER_CPU, env)
        try:
            gateway.wait_started(30)
            return gateway
        except RuntimeError as exc:
            if attempt == args.start_retries:
                raise
            # Others edit engine/ in this tree: a half-written file is fixed within a minute.
            log(f"{exc}\n... retrying in 60 s ({attempt + 1}/{args.start_retries})")
            time.sleep(60)
    raise AssertionError("unreachable")


def _fd_kinds(pid: int) -> dict[str, int]:
    """The gateway's open descriptors by what they are (sockets, pipes, the SQLite files...)."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[re.sub(r"\[\d+\]$", "", target).rsplit("/", 1)[-1]] += 1
    return dict(kinds)


async def _idle(sampler: Sampler, t0: float, tally: Tally) -> dict[str, Any]:
    """A sample once the gateway holds no stream and no generation (bounded wait)."""
    deadline = time.monotonic() + DRAIN_WAIT
    while True:
        sample = await sampler.take(t0, tally)
        sampler.samples.pop()  # (not a point of the load's series)
        if (not sample["open_streams"] and not sample["generations"]) or (
            time.monotonic() > deadline
        ):
            sample["fd_kinds"] = _fd_kinds(sampler.gateway.pid)
            return sample
        await asyncio.sleep(1)


async def _snapshot(gateway: Child, tmp: Path, n: int) -> None:
    """Have the traced gateway write snapshot ``n`` (benchmarks._soak_traced); bounded wait."""
    os.kill(gateway.pid, signal.SIGUSR1)
    for _ in range(240):  # (another process's file: nothing to await but time)
        if (tmp / f"done-{n}").exists():
            return
        await asyncio.sleep(0.5)


def trace_diff(tmp: Path, top: int = 15) -> dict[str, Any]:
    """What grew between the traced gateway's two snapshots: by line, by traceback, by type."""
    first = tracemalloc.Snapshot.load(str(tmp / "snap-1.pickle"))
    last = tracemalloc.Snapshot.load(str(tmp / "snap-2.pickle"))
    by_line = last.compare_to(first, "lineno")
    by_trace = last.compare_to(first, "traceback")
    types = [json.loads((tmp / f"types-{n}.json").read_text()) for n in (1, 2)]
    grown = sorted(
        ((t, types[1].get(t, 0) - types[0].get(t, 0)) for t in set(types[0]) | set(types[1])),
        key=lambda item: -item[1],
    )
    return {
        "total_kib": (
            sum(s.size for s in last.statistics("filename"))
            - sum(s.size for s in first.statistics("filename"))
        )
        / 1024,
        "by_line": [
            {"where": str(s.traceback), "kib": s.size_diff / 1024, "count": s.count_diff}
            for s in by_line[:top]
        ],
        "by_traceback": [
            {"kib": s.size_diff / 1024, "count": s.count_diff, "traceback": s.traceback.format()}
            for s in by_trace[:5]
        ],
        "types": [{"type": t, "grew": n} for t, n in grown[:top]],
    }


async def soak(
    gateway: Child, others: list[Child], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{gateway.port}"
    tally = Tally()
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
    # force_close: every stream on a connection of its own, as many as the gateway can churn.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        aiohttp.ClientSession(timeout=timeout) as probe,
    ):
        sampler = Sampler(gateway, others, probe, base)
        t0 = time.monotonic()
        await sampler.take(t0, tally)  # (primes the CPU counters)
        sampler.samples.clear()
        await asyncio.sleep(1)
        before = await _idle(sampler, t0, tally)
        load = Load(session, base, tally)
        t0 = time.monotonic()
        ramp = min(10.0, args.seconds / 10)
        clients = [
            asyncio.create_task(load.client(i, args.seed, stop, ramp)) for i in range(args.clients)
        ]
        sampler._cpu = None
        await sampler.take(t0, tally)
        deadline = t0 + args.seconds
        snapshots = 0
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(args.sample_seconds, left))
            s = await sampler.take(t0, tally)
            if args.tracemalloc and not snapshots and s["t"] >= WARMUP * args.seconds:
                snapshots = 1
                await _snapshot(gateway, tmp, 1)
            log(
                f"t={s['t']:.0f}s rss={s['rss_kib'] / 1024:.1f} MiB fds={s['fds']} "
                f"tasks={s['tasks']} open={s['open_streams']} gens={s['generations']} "
                f"logs={s['resume_logs']} finished={s['finished']} errors={s['errors']} "
                f"mismatches={s['mismatches']} cpu={s.get('gateway_cpu')}"
            )
        if args.tracemalloc:
            await _snapshot(gateway, tmp, 2)  # (under load, like the first)
        stop.set()
        _, pending = await asyncio.wait(clients, timeout=FINISH_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        drained = await _idle(sampler, t0, tally)
        metrics = sampler.last_metrics
    samples = sampler.samples
    return {
        "seconds": args.seconds,
        "samples": samples,
        "before": before,
        "drained": drained,
        "rows": analyse(samples, args.seconds),
        "outcomes": {f"{a}:{o}": n for (a, o), n in sorted(tally.outcomes.items())},
        "finished": tally.finished,
        "errors": tally.errors,
        "error_examples": tally.error_examples,
        "mismatches": tally.mismatches,
        "mismatch_examples": tally.mismatch_examples,
        "cut": tally.cut,
        "scrape_failures": sampler.scrape_failures,
        "gateway_ended": _by_label(metrics.get("sse_engine_streams_ended_total", {}), "reason"),
        "gateway_resumes": _by_label(metrics.get("sse_engine_resumes_total", {}), "outcome"),
    }


def _mean(samples: list[dict[str, Any]], key: str) -> float:
    values = [s[key] for s in samples if s.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


def render(result: dict[str, Any]) -> str:
    """The soak's RESULTS.md section."""
    opts, m = result["options"], result["machine"]
    samples, rows = result["samples"], result["rows"]
    git = m.get("git", {})
    dirty = git.get("dirty") or []
    grown = [row["label"] for row in rows if row["kind"] == "gauge" and not row["flat"]]
    length = f"{opts['seconds'] / 60:g} min" if opts["seconds"] >= 120 else f"{opts['seconds']:g} s"
    outcomes = ", ".join(f"{k} {v:,}" for k, v in result["outcomes"].items())
    ended = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(result["gateway_ended"].items()))
    resumes = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(result["gateway_resumes"].items()))
    lines = [
        SECTION,
        "",
        f"`{result['command']}` ({result['date']}; commit {git.get('commit', '?')}"
        + (f"; engine files with others' uncommitted work: {', '.join(dirty)}" if dirty else "")
        + f"). {opts['clients']} clients for {length} against one `sse-engine serve` "
        f"on CPU 0 ({result['loop']} loop), memory in a SQLite file, resume on "
        f"(`--resume-ttl {opts['resume_ttl']:g}`); the clients ({result['load_loop']} loop) and "
        "a fake OpenAI upstream on CPU 1. Mix (weights): "
        + ", ".join(f"{name} {weight}" for name, weight in ACTIONS)
        + f"; native streams of {NATIVE_TOKENS[0]}-{NATIVE_TOKENS[1]} chunks at "
        f"{min(NATIVE_INTERVALS_MS)}-{max(NATIVE_INTERVALS_MS)} ms into {CONVERSATIONS} "
        f"conversations, relayed ones of {len(RELAY_TEXT) // 4} chunks at 20 ms, "
        f"{PAUSE[0]:g}-{PAUSE[1]:g} s between actions, "
        f"detach {DETACH} s. Sampled every {opts['sample_seconds']:g} s; slopes by least "
        f"squares over the samples after the first {WARMUP:.0%} of the run. **The machine is "
        "shared and noisy**: the absolute numbers move between runs.",
        "",
        table(rows, result["before"], result["drained"]),
        "",
        f"**Flat after warm-up: {'yes' if not grown else 'no (' + ', '.join(grown) + ')'}.** "
        f"Streams: {result['finished']:,} finished ({outcomes}); errors {result['errors']}, "
        f"resume mismatches {result['mismatches']}, {result['cut']} cut by the end of the run.",
        "",
        f"Gateway, by its own counters: streams ended {ended}; resumes {resumes}. "
        f"CPU (mean share of a core): gateway {_mean(samples, 'gateway_cpu'):.0%}, "
        f"clients {_mean(samples, 'load_cpu'):.0%}, fake upstream "
        f"{_mean(samples, 'upstream_cpu'):.0%}; gateway log lines at WARNING or worse: "
        f"{result['gateway_warnings']}.",
    ]
    for what, examples in (("Errors", "error_examples"), ("Mismatches", "mismatch_examples")):
        if result[examples]:
            lines += ["", f"{what} (first {len(result[examples])}):", ""]
            lines += [f"- `{e}`" for e in result[examples]]
    return "\n".join(lines) + "\n"


def render_trace(diff: dict[str, Any]) -> str:
    """The traced run's growth between its snapshots, as Markdown."""
    lines = [
        f"### tracemalloc: {diff['total_kib']:+,.0f} KiB traced between the snapshots",
        "",
        "| where | KiB | blocks |",
        "|---|---|---|",
    ]
    lines += [f"| `{s['where']}` | {s['kib']:+,.1f} | {s['count']:+,} |" for s in diff["by_line"]]
    lines += ["", "| type (gc-tracked objects) | grew by |", "|---|---|"]
    lines += [f"| `{t['type']}` | {t['grew']:+,} |" for t in diff["types"]]
    for stat in diff["by_traceback"][:3]:
        lines += ["", f"{stat['kib']:+,.1f} KiB in {stat['count']:+,} blocks from:", "```"]
        lines += [*stat["traceback"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="the run's length in seconds (overrides)")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--sample-seconds", type=float, default=15.0)
    parser.add_argument(
        "--resume-ttl",
        type=float,
        help="seconds finished streams stay resumable (default: a tenth of the run, 2-60)",
    )
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--start-retries", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the gateway's allocations and print what grew (implies --no-record)",
    )
    parser.add_argument("--json", type=Path, help="write the whole result here")
    parser.add_argument(
        "--from-json", type=Path, help="no run: render (and record) a result --json wrote"
    )
    args = parser.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else args.minutes * 60
    args.no_record = args.no_record or args.tracemalloc  # (tracing changes what is measured)
    if args.resume_ttl is None:
        # Expired within the warm-up (a fifth of the run), so the logs reach their steady state.
        args.resume_ttl = min(60.0, max(2.0, args.seconds / 10))
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        result["rows"] = analyse(result["samples"], result["seconds"])
        return _report(result, args)
    raise_nofile()
    if LOADGEN_CPU < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {LOADGEN_CPU})
    children: list[Child] = []

    def hard_stop(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(OSError):
                child.proc.kill()
        raise SystemExit(f"soak: hard timeout, children killed ({signum})")

    signal.signal(signal.SIGALRM, hard_stop)
    try:
        with tempfile.TemporaryDirectory(prefix="sse-soak-") as tmp:
            fake = Child(
                "fake-openai",
                [sys.executable, "-m", "engine.testing", "openai", "--interval-ms", "20"]
                + ["--token-size", "4", "--text", RELAY_TEXT],
                LOADGEN_CPU,
                _env(),
            )
            children.append(fake)
            upstream = fake.wait_started(30)
            gateway = _start_gateway(Path(tmp), upstream, args)
            children.append(gateway)
            banner = next((line for line in gateway.tail if "http://" in line), "")
            log(f"{banner}; {args.clients} clients for {args.seconds:g} s")
            signal.alarm(int(args.seconds + FINISH_GRACE + DRAIN_WAIT + 90))
            try:
                import uvloop

                load_loop = "uvloop"
                result = uvloop.run(soak(gateway, [fake], args, Path(tmp)))
            except ImportError:
                load_loop = "asyncio"
                result = asyncio.run(soak(gateway, [fake], args, Path(tmp)))
            signal.alarm(0)
            if args.tracemalloc:
                result["tracemalloc"] = trace_diff(Path(tmp))
            gateway_warnings = gateway.warnings
            gateway_tail = list(gateway.tail)[-20:]
    finally:
        signal.alarm(0)
        for child in reversed(children):
            child.kill()
    loop = re.search(r"(\w+) loop\)", banner)
    command = "python -m benchmarks.soak" + (f" {' '.join(argv)}" if argv else "")
    if argv is None and sys.argv[1:]:
        command = "python -m benchmarks.soak " + " ".join(sys.argv[1:])
    result.update(
        command=command,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        options=vars(args) | {"json": str(args.json) if args.json else None},
        machine=machine(),
        loop=loop.group(1) if loop else "?",
        load_loop=load_loop,
        gateway_warnings=gateway_warnings,
        gateway_tail=gateway_tail,
    )
    return _report(result, args)


def _report(result: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the result's section, write its JSON, and record it in RESULTS.md (flags)."""
    section = render(result)
    print(section)
    if "tracemalloc" in result:
        print(render_trace(result["tracemalloc"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    if not args.no_record:
        RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), section))
        log(f"wrote the {SECTION!r} section of {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

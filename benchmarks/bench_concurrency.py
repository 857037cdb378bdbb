"""Concurrency: idle streams held with heartbeats, and the most relayed streams that stay stable.

Idle: a fresh server (CPU 0, heartbeat 5 s) gets 1k, 5k and 10k streams that
send their first chunk and then go quiet (the mock at ``interval_ms=60000``;
sse-engine with the stream log and metrics on, its defaults, named on the
command line; ``--quick``: 1k, sse-engine, plain aiohttp and raw only);
two more sse-engine rows at 1k and 10k (1k in ``--quick``): the same with
both off, and the same streams asking for ``max_tokens=1000000`` (the mock's
memory must not grow with it: all held, KiB per stream as with 3);
the load generator (CPU 1) checks each stream got its first frames, that every
one then received a heartbeat, and that none was dropped. Server RSS
(``VmRSS``) before the connections and after a heartbeat period gives KiB per
connection.

Relayed (the headline): the gateway (``sse-engine serve --provider openai``,
CPU 0) relays N streams at once from the fake OpenAI upstream of
``bench_latency`` (``benchmarks/servers/fake_stamp.py``: the bytes of
``python -m engine.testing openai --stamp`` from a raw asyncio Protocol on
uvloop with one timer for all streams, a chunk every 20 ms per stream whose
text is its send time, chunk ``k`` due at the stream's start + ``k`` x 20 ms;
``BENCH_FAKE=aiohttp`` for ``engine.testing``'s own fake; the fake and the
client share CPU 1), N stepping 250, 500, 750, ... up to a bound, stopping
after the first unstable level. The client is ``bench_latency.measure``: stream starts
staggered over one 20 ms period, the first ``RELAY_WARM`` chunks of every
stream not counted, delay = receipt - stamp. Stable = every stream completes
and the p99 delay is <= 50 ms (the issue's rule): the fake keeps its own pace,
so a saturated gateway falls further behind with every chunk and the p99
shows it. At each level the same N streams are first read straight from the
fake (the direct floor); when the direct path fails the same rule, CPU 1 (the
fake and the client), not the gateway, is the limit, and the table says so.
The fake stamps at write, so a fake short of CPU sends late without raising
the delays: it offers less load instead. Its pace (per stream, the mean
interval between counted stamps) must stay within 10% of 20 ms for a level to
count as stable; relayed streams that keep the rule while it fell behind are
"not measurable", and ones that break the rule while the direct ones keep it
are the gateway's. The gateway's CPU share (and its CPU per relayed chunk) and
CPU 1's (fake + client, and the fake's CPU per chunk it sent on the direct
path) over the counted chunks are reported, not judged.

Relays compared (issue 17): at every level, right after the gateway's native
route, three more relays of the same fake, each judged by the same rule
against the same direct floor and climbing until its own first unstable level
(bounded by the same last level): the gateway on ``POST
/v1/chat/completions`` (OpenAI chunks in and out; the client reads the stamp
from either dialect); ``benchmarks/servers/aiohttp_relay.py``, the minimal
aiohttp passthrough (one shared ``ClientSession``, every read of the upstream
body written to the client unchanged), the issue's yardstick and the
completions route's like-for-like peer; and the relay floor,
``benchmarks/servers/raw_relay.py`` (a raw asyncio Protocol on uvloop that
relays the same fake with no framework, no JSON parsing and no stream state).
Each is started like the gateway (CPU 0, ``OPENAI_BASE_URL`` at the fake), so
the table shows the largest stable level and the CPU per relayed chunk of the
gateway next to what an aiohttp relay and any Python relay pay on this
machine, with the ratios to the aiohttp relay. The gateway runs with
``serve``'s defaults (stream log and metrics on, no client keys);
``bench_features`` holds one level with each feature on and off.

Paced mock, not relayed (secondary; the peers cannot relay): every server
under test streams its own mock at ``interval_ms=20`` to 1,000 streams at once
(500 with ``--quick``), for the per-server delay CDF. A chunk's delay there is how
late it arrived past 20 ms after the previous frame of its stream. The mock
sleeps after each write, so a saturated server slows every stream a little
rather than making single chunks late; its "holds the cadence" verdict also
needs the CPU the server would use at the full cadence (its CPU share while
all streams were open, times the streams' mean gap / 20 ms) to be <= 90%.

    python -m benchmarks --only concurrency
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from ._harness import (
    LABELS,
    SERVERS,
    Interactive,
    Server,
    fmt_range,
    loadgen,
    log,
    percentile,
    summary,
)
from .bench_latency import INTERVAL_MS as RELAY_INTERVAL_MS
from .bench_latency import Fake, Gateway, fake_markdown, measure, run_client

HEARTBEAT = 5.0
IDLE_TARGET = "/v1/chat/stream?q=idle&max_tokens=3&token_size=16&interval_ms=60000"
IDLE_FIRST_FRAMES = 2  # start, the first chunk; then a minute of silence
#: The same idle stream asking for a million chunks (the most Options allows): the
#: mock makes its text lazily, so what a stream holds must not grow with it.
IDLE_TARGET_LONG = IDLE_TARGET.replace("max_tokens=3&", "max_tokens=1000000&")
_FEATURES_ON = ("--resume", "on", "--metrics", "on")
#: The gateway's idle variants: kind: (extra ``serve`` flags, target). ``native`` names
#: the stream log (in-memory resume) and metrics explicitly: they are the defaults,
#: and the issue's memory target holds with both on.
IDLE_NATIVE: dict[str, tuple[tuple[str, ...], str]] = {
    "native": (_FEATURES_ON, IDLE_TARGET),
    "native-1m": (_FEATURES_ON, IDLE_TARGET_LONG),
    "native-bare": (("--resume", "off", "--metrics", "off"), IDLE_TARGET),
}
IDLE_LABELS = {
    **LABELS,
    "native": "sse-engine (ours), log and metrics on",
    "native-1m": "sse-engine, log and metrics on, max_tokens=1,000,000",
    "native-bare": "sse-engine, log and metrics off",
}
INTERVAL_MS = 20  # the paced mock's
STABLE_P99_MS = 50.0
#: Relay ladder levels (full, quick), chunks per stream (quick, full), warm-up chunks.
RELAY_LADDER = tuple(range(250, 3001, 250))
RELAY_LADDER_QUICK = (250, 500, 1000)
RELAY_CHUNKS = (75, 150)
RELAY_WARM = 25
#: The fake holds its cadence when every stream's mean stamp interval is within 10% of it.
PACE_SLACK = 1.1
# The paced mock sleeps after each write, so a saturated server slows every
# stream a little instead of making single chunks late (a relay of an
# independent upstream falls further behind with every chunk instead). In the
# mock table a server holds the cadence only while it would have CPU to spare
# at the full cadence.
MAX_CPU_SHARE = 0.9


def _warm(server: Server) -> None:
    """One short stream first, so RSS counts connections, not lazy imports."""
    loadgen(
        {
            "mode": "throughput",
            "port": server.port,
            "pid": server.pid,
            "target": "/v1/chat/stream?q=warm&max_tokens=50&token_size=16&interval_ms=0",
            "expected": 52,  # start, 50 chunks, done
            "clients": 20,
            "warmup": 0.3,
            "window": 0.3,
        },
        timeout=30,
    )


class Native(Server):
    """The gateway (the harness's native command) with extra ``serve`` flags."""

    def __init__(self, flags: tuple[str, ...], *, heartbeat: float) -> None:
        super().__init__("native", heartbeat=heartbeat)
        self.flags = flags

    def command(self) -> list[str]:
        return [*super().command(), *self.flags]


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def idle(kind: str, clients: int) -> dict[str, Any]:
    flags, target = IDLE_NATIVE.get(kind, ((), IDLE_TARGET))
    server = (
        Native(flags, heartbeat=HEARTBEAT)
        if kind in IDLE_NATIVE
        else Server(kind, heartbeat=HEARTBEAT)
    )
    checked: dict[str, int] = {}
    with server:
        if kind in IDLE_NATIVE:
            # What the flags say: /metrics answers 200 with metrics on, 404 off.
            checked["metrics_status"] = _status(server.port, "/metrics")
        _warm(server)
        time.sleep(0.5)
        before = server.rss_kib()
        gen = Interactive(
            {
                "mode": "idle",
                "port": server.port,
                "target": target,
                "clients": clients,
                "first_frames": IDLE_FIRST_FRAMES,
                "timeout": 50,
            }
        )
        try:
            ready = gen.read_json(timeout=110)
            held = server.rss_kib()
            time.sleep(HEARTBEAT + 2.0)  # every stream is due a heartbeat by now
            after = server.rss_kib()
            gen.release()
            result = gen.read_json(timeout=30)
        finally:
            gen.close()
    peak = max(held, after)
    n = max(1, result["ready"])
    return {
        "clients": clients,
        "rss_before_kib": before,
        "rss_after_kib": peak,
        "kib_per_conn": (peak - before) / n,
        "connect_s": ready["connect_s"],
        **checked,
        **result,
    }


def paced(server: Server, clients: int, chunks: int) -> dict[str, Any]:
    r = loadgen(
        {
            "mode": "paced",
            "port": server.port,
            "target": (
                f"/v1/chat/stream?q=paced&max_tokens={chunks}&token_size=16"
                f"&interval_ms={INTERVAL_MS}"
            ),
            "expected": chunks + 2,  # start, chunks, done
            "clients": clients,
            "interval_ms": INTERVAL_MS,
            "pid": server.pid,
            "timeout": chunks * INTERVAL_MS / 1000 * 4 + 30,
        },
        timeout=chunks * INTERVAL_MS / 1000 * 4 + 90,
    )
    delays = sorted(r.pop("delays_ms"))
    r["p50_ms"] = percentile(delays, 50)
    r["p99_ms"] = percentile(delays, 99)
    r["max_ms"] = delays[-1] if delays else float("nan")
    r["samples"] = len(delays)
    gaps = sorted(r.pop("mean_gap_ms"))
    r["gap_p50_ms"] = percentile(gaps, 50)
    r["gap_p99_ms"] = percentile(gaps, 99)
    # The CPU the server would need to hold the full cadence: what it used while
    # all streams were open, scaled by how much it slowed them down.
    r["cpu_at_cadence"] = r["server_cpu_share"] * max(1.0, r["gap_p50_ms"] / INTERVAL_MS)
    r["holds_cadence"] = (
        r["complete"] == clients
        and not r["connect_errors"]
        and not r["timed_out"]
        and r["p99_ms"] <= STABLE_P99_MS
        and r["cpu_at_cadence"] <= MAX_CPU_SHARE
    )
    # Keep a thinned CDF for the plot (every k-th sorted delay).
    step = max(1, len(delays) // 400)
    r["cdf_ms"] = delays[::step]
    return r


def _stable(m: dict[str, Any]) -> bool:
    """The issue's rule: every stream complete, p99 delay <= 50 ms (NaN fails)."""
    return m["incomplete"] == 0 and m["p99"] <= STABLE_P99_MS


def _paced(m: dict[str, Any]) -> bool:
    """The fake kept its cadence, so the level offered the load it names (NaN fails)."""
    return m["pace_max"] <= RELAY_INTERVAL_MS * PACE_SLACK


class RawRelay(Gateway):
    """``benchmarks.servers.raw_relay`` (the relay floor), started like the gateway: CPU 0,
    ``OPENAI_BASE_URL`` at the fake."""

    module = "benchmarks.servers.raw_relay"

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.kind = self.module.rsplit(".", 1)[-1]

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]


class AiohttpRelay(RawRelay):
    """``benchmarks.servers.aiohttp_relay`` (the aiohttp passthrough), started the same way."""

    module = "benchmarks.servers.aiohttp_relay"


#: The relays the ladder climbs, measured in this order at each level: name:
#: (process, native request or OpenAI's). ``completions`` is the gateway on
#: ``POST /v1/chat/completions``: OpenAI chunks in and out, like the aiohttp
#: passthrough, so the two compare like for like; ``gateway`` (its native route,
#: with the stream log) stays the headline.
RELAYS: dict[str, tuple[str, bool]] = {
    "gateway": ("gateway", True),
    "completions": ("gateway", False),
    "aiohttp": ("aiohttp", False),
    "floor": ("floor", True),
}
#: How the tables name them.
RELAY_NAMES = {
    "gateway": "gateway, native route",
    "completions": "gateway, completions route",
    "aiohttp": "aiohttp relay",
    "floor": "raw relay floor",
}


def _judge(
    n: int, direct: dict[str, Any], relay: dict[str, Any], name: str, pid: str | None = None
) -> dict[str, Any]:
    """One relayed row (``name``: the relay's, ``pid``: its process's key, default ``name``)."""
    row: dict[str, Any] = {
        "streams": n,
        "direct": direct,
        "relayed": relay,
        # The floor: CPU 1 (fake + client) alone delivers N streams within the rule.
        "direct_stable": _stable(direct),
        # The relayed streams within the rule; the fake kept its pace, so the relay got
        # the load the level names.
        "relay_rule": _stable(relay),
        "offered": _paced(relay),
        "stable": _stable(relay) and _paced(relay),
    }
    # What the fake actually sent (per stream one chunk per pace), and the relay's CPU per
    # relayed chunk at that rate.
    rate = n * 1000 / relay["pace_p50"] if relay["pace_p50"] > 0 else float("nan")
    row["offered_per_s"] = rate
    row[f"{name}_share"] = relay["cpu_share"].get(pid or name, float("nan"))
    row[f"{name}_us_per_chunk"] = row[f"{name}_share"] * 1e6 / rate
    return row


async def _ladder(
    fake: Fake, procs: dict[str, Gateway], levels: tuple[int, ...], chunks: int
) -> dict[str, list[dict[str, Any]]]:
    """Rows per relay of :data:`RELAYS`: each climbs until its own first unstable level."""
    pids = {name: proc.pid for name, proc in procs.items()} | {"fake": fake.pid}
    args: dict[str, Any] = {"chunks": chunks, "warm": RELAY_WARM, "cpu": pids, "cdf": 400}
    await measure(fake.port, gateway=False, streams=10, **args)  # connections, imports
    for proc, native in RELAYS.values():
        await measure(procs[proc].port, gateway=native, streams=10, **args)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in RELAYS}
    climbing = set(RELAYS)
    for n in levels:
        direct = await measure(fake.port, gateway=False, streams=n, **args)
        # The fake's CPU per chunk it sent, at the rate it sent them.
        rate = n * 1000 / direct["pace_p50"] if direct["pace_p50"] > 0 else float("nan")
        direct["fake_us_per_chunk"] = direct["cpu_share"].get("fake", float("nan")) * 1e6 / rate
        log(
            f"relay x{n:<5} direct     : {_brief(direct, n)}, fake "
            f"{_us(direct['fake_us_per_chunk'])} us/chunk at {rate:.0f} chunks/s"
        )
        for name, (proc, native) in RELAYS.items():
            if name not in climbing:
                continue
            await asyncio.sleep(0.5)
            m = await measure(procs[proc].port, gateway=native, streams=n, **args)
            row = _judge(n, direct, m, name, proc)
            rows[name].append(row)
            us, rate = row[f"{name}_us_per_chunk"], row["offered_per_s"]
            log(
                f"relay x{n:<5} {name:<11}: {_brief(row['relayed'], n)}, cpu "
                f"{_share(row[f'{name}_share'])} ({us:.0f} us/chunk at {rate:.0f} chunks/s) "
                f"-> {_verdict(row)}"
            )
            if not row["stable"]:
                climbing.discard(name)
            await asyncio.sleep(1.0)  # let the relay close the upstream streams
        if not climbing:
            break
    return rows


def _limit(rows: list[dict[str, Any]]) -> tuple[str, int | None, int]:
    """(limit, stopped_at, largest stable level) of one relay's rows."""
    last = rows[-1] if rows else None
    if last is None or last["stable"]:
        limit = "bound"
    elif _client_bound(last):
        limit = "client"
    else:
        limit = "relay"
    best = [row["streams"] for row in rows if row["stable"]]
    stop = None if limit == "bound" or last is None else last["streams"]
    return limit, stop, max(best) if best else 0


def _brief(m: dict[str, Any], n: int) -> str:
    return (
        f"complete {n - m['incomplete']}/{n}, p50 {m['p50']:.2f} p99 {m['p99']:.2f} max "
        f"{m['max']:.1f} ms, fake pace {m['pace_max']:.2f} ms, cpu1 {_cpu1(m['cpu_share']):.2f}"
    )


def _cpu1(share: dict[str, float]) -> float:
    """CPU 1's load from this benchmark: the fake plus the client."""
    if "fake" not in share or "client" not in share:
        return float("nan")
    return share["fake"] + share["client"]


def _verdict(row: dict[str, Any]) -> str:
    if row["stable"]:
        return "yes" if row["direct_stable"] else "yes (the direct floor failed)"
    if not row["relay_rule"]:
        if not row["direct_stable"]:
            return "not measurable: the direct path fails the rule too (CPU 1 is the limit)"
        # A fake that fell behind only offered less load: the gateway failed even so.
        return "no" if row["offered"] else "no, even with the fake behind its cadence"
    return "not measurable: the fake fell behind its cadence (CPU 1 is the limit)"


def _client_bound(row: dict[str, Any]) -> bool:
    """An unstable level that says nothing about the gateway: CPU 1 could not offer it."""
    if row["relay_rule"]:
        return not row["offered"]
    return not row["direct_stable"]


def _side(rows: list[dict[str, Any]], banner: str, label: str) -> dict[str, Any]:
    """One relay's ladder beside the gateway's: its rows, largest stable level and limit."""
    limit, stop, best = _limit(rows)
    return {
        "levels": rows,
        "max_stable": best,
        "stopped_at": stop,
        "limit": label if limit == "relay" else limit,
        "server": banner,
    }


def relay_ladder(quick: bool) -> dict[str, Any]:
    levels = RELAY_LADDER_QUICK if quick else RELAY_LADDER
    chunks = RELAY_CHUNKS[0] if quick else RELAY_CHUNKS[1]
    started = time.monotonic()
    with Fake(chunks) as fake:
        upstream = f"http://127.0.0.1:{fake.port}"
        with (
            Gateway(upstream) as gateway,
            AiohttpRelay(upstream) as aiohttp_relay,
            RawRelay(upstream) as floor,
        ):
            procs: dict[str, Gateway] = {
                "gateway": gateway,
                "aiohttp": aiohttp_relay,
                "floor": floor,
            }
            rows = run_client(_ladder(fake, procs, levels, chunks))
            banners = {name: proc.banner for name, proc in procs.items()}
            fake_banner = fake.banner
    limit, stop, best = _limit(rows["gateway"])
    return {
        "levels": rows["gateway"],
        "max_stable": best,
        "stopped_at": stop,
        "limit": "gateway" if limit == "relay" else limit,
        "bound": levels[-1],
        "interval_ms": RELAY_INTERVAL_MS,
        "chunks_per_stream": chunks,
        "warm_chunks": RELAY_WARM,
        "gateway": banners["gateway"],
        "fake": fake_banner,
        "floor": _side(rows["floor"], banners["floor"], "floor"),
        "aiohttp": _side(rows["aiohttp"], banners["aiohttp"], "aiohttp relay"),
        "completions": _side(rows["completions"], banners["gateway"], "gateway"),
        "seconds": round(time.monotonic() - started, 1),
    }


def _held(r: dict[str, Any]) -> bool:
    """Every idle stream was ready, got a heartbeat and was still open at the end."""
    n = r["clients"]
    return "error" not in r and r["ready"] == r["got_heartbeat"] == r["still_open"] == n


def _idle_checks(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Issue 17's idle rows: the gateway beside plain aiohttp, and max_tokens' (no) weight."""
    by = {
        kind: {r["clients"]: r for r in rows if "kib_per_conn" in r}
        for kind, rows in results.items()
    }
    native, plain, long = by.get("native", {}), by.get("aiohttp-plain", {}), by.get("native-1m", {})
    return {
        "vs_plain": [
            {
                "clients": n,
                "native_kib": native[n]["kib_per_conn"],
                "plain_kib": plain[n]["kib_per_conn"],
                "held": _held(native[n]) and _held(plain[n]),
            }
            for n in sorted(native.keys() & plain.keys())
        ],
        "max_tokens": [
            {
                "clients": n,
                "small_kib": native[n]["kib_per_conn"],
                "large_kib": long[n]["kib_per_conn"],
                "held": _held(long[n]),
            }
            for n in sorted(native.keys() & long.keys())
        ],
    }


def main(quick: bool = False) -> dict[str, Any]:
    idle_levels = (1000,) if quick else (1000, 5000, 10000)
    # The variants at the levels issue 17 names (1k and 10k; 1k in --quick).
    variant_levels = (1000,) if quick else (1000, 10000)
    idle_kinds = (
        ("native", "native-1m", "native-bare", "aiohttp-plain", "raw")
        if quick
        else ("native", "native-1m", "native-bare", *SERVERS[1:])
    )
    chunks = 50 if quick else 100  # per paced mock stream: 1 s or 2 s at 20 ms
    peer_level = 500 if quick else 1000

    idle_results: dict[str, list[dict[str, Any]]] = {}
    for kind in idle_kinds:
        idle_results[kind] = []
        levels = idle_levels if kind not in ("native-1m", "native-bare") else variant_levels
        for level in levels:
            try:
                r = idle(kind, level)
            except Exception as exc:  # report it and go on with the next
                log(f"idle {kind} x{level}: FAILED {exc}")
                idle_results[kind].append({"clients": level, "error": str(exc)[:300]})
                continue
            idle_results[kind].append(r)
            log(
                f"idle {kind:>13} x{level:<5}: {r['kib_per_conn']:6.2f} KiB/conn, "
                f"ready {r['ready']}, heartbeat {r['got_heartbeat']}, open {r['still_open']}"
                + (f", /metrics {r['metrics_status']}" if "metrics_status" in r else "")
            )

    relay = relay_ladder(quick)
    log(
        f"relay ladder: largest stable level: "
        f"{RELAY_NAMES['gateway']} {relay['max_stable']} (limit: {relay['limit']}), "
        + ", ".join(
            f"{RELAY_NAMES[name]} {relay[name]['max_stable']} (limit: {relay[name]['limit']})"
            for name in ("completions", "aiohttp", "floor")
        )
        + f", in {relay['seconds']} s"
    )

    mock: dict[str, Any] = {"level": peer_level, "chunks_per_stream": chunks, "servers": {}}
    for kind in SERVERS:
        with Server(kind) as server:
            _warm(server)
            r = paced(server, peer_level, chunks)
        mock["servers"][kind] = r
        log(
            f"paced mock {kind:>13} x{peer_level}: complete {r['complete']}/{peer_level}, "
            f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.1f} ms, "
            f"cpu {r['server_cpu_share']:.2f} (at cadence {r['cpu_at_cadence']:.2f})"
        )
    return {
        "name": "concurrency",
        "heartbeat_s": HEARTBEAT,
        "interval_ms": INTERVAL_MS,
        "idle": idle_results,
        "idle_checks": _idle_checks(idle_results),
        "relay": relay,
        "mock": mock,
        "idle_summary": {
            kind: summary([r["kib_per_conn"] for r in rows if "kib_per_conn" in r])
            for kind, rows in idle_results.items()
        },
    }


def _ms(m: dict[str, Any]) -> str:
    """p50 / p99 / max, ms (None when a run had no counted chunk)."""
    vals = [m.get(q) for q in ("p50", "p99", "max")]
    return " / ".join("n/a" if v is None else f"{v:.2f}" for v in vals)


def _share(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.2f}"


def _headline(relay: dict[str, Any]) -> str:
    best, limit, stop = relay["max_stable"], relay["limit"], relay.get("stopped_at")
    text = f"**Largest stable relayed level: {best} streams**"
    if limit == "bound":
        return text + f" (every level up to the bound, {relay['bound']}, was stable)."
    row = next(x for x in relay["levels"] if x["streams"] == stop)
    g = row["relayed"]
    why = "no counted chunk" if g["p99"] is None else f"gateway p99 {g['p99']:.1f} ms"
    if g["incomplete"]:
        why += f", {g['incomplete']} streams incomplete"
    if limit == "gateway":
        if not row["offered"] and row.get("offered_per_s"):
            nominal = stop * 1000 / relay["interval_ms"]
            why += (
                f", with the fake behind its cadence: {row['offered_per_s']:,.0f} of "
                f"{nominal:,.0f} chunks/s"
            )
        return text + f"; at {stop} the gateway was the limit ({why})."
    cause = (
        "the fake fell behind its cadence"
        if row["relay_rule"]
        else "the direct path failed the rule too"
    )
    text += (
        f"; at {stop} ({why}) {cause}, so CPU 1 (the fake and the client) could not offer "
        "the load and this run cannot tell whether the gateway holds "
        + (f"more than {best}" if best else f"{stop}")
    )
    us, share = row.get("gateway_us_per_chunk"), row.get("gateway_share")
    if us and share is not None:
        text += (
            f". There the gateway used {share:.2f} of its core at {row['offered_per_s']:,.0f} "
            f"chunks/s, {us:.0f} us per relayed chunk: a whole core at that cost relays about "
            f"{1e6 / us / (1000 / relay['interval_ms']):,.0f} streams at "
            f"{relay['interval_ms']} ms (an extrapolation, not a measurement)"
        )
    return text + "."


def _fake_cost(relay: dict[str, Any]) -> str:
    """The fake's CPU per chunk on the direct path at the largest level measured."""
    rows = [x for x in relay["levels"] if x["direct"].get("fake_us_per_chunk") is not None]
    if not rows:
        return ""
    d = rows[-1]["direct"]
    us, share = d["fake_us_per_chunk"], d["cpu_share"]
    if us != us:
        return ""
    return (
        f" The fake itself: {us:.1f} us of CPU per chunk it sent at {rows[-1]['streams']} "
        f"streams direct (fake {_share(share.get('fake'))} + client "
        f"{_share(share.get('client'))} of CPU 1, fake pace {_pace(d)} ms)."
    )


def _pace(m: dict[str, Any]) -> str:
    v = m.get("pace_max")
    return "n/a" if v is None else f"{v:.2f}"


def _relay_markdown(relay: dict[str, Any]) -> list[str]:
    lines = [
        f"Relayed streams: `sse-engine serve --provider openai` on CPU 0 relays N streams at once "
        f"from {fake_markdown(relay.get('fake'))}, one chunk per "
        f"stream every {relay['interval_ms']} ms, stamped with its send time, on CPU 1; the client "
        f"(`bench_latency.measure`) shares CPU 1. {relay['chunks_per_stream']} chunks per stream, "
        "stream starts staggered over one period, the first "
        f"{relay['warm_chunks']} chunks of each stream not counted; delay = receipt - stamp. "
        "Direct = the same N streams read straight from the fake, right before (the floor: "
        f"CPU 1 alone). Stable = every stream complete and p99 <= {STABLE_P99_MS:g} ms; the "
        "ladder steps by 250 and stops after the first unstable level. CPU shares are over the "
        "counted chunks (1.00 = a whole core): the gateway's, and CPU 1's (fake + client). "
        "Fake pace = the largest per-stream mean interval between counted stamps: the fake "
        "stamps at write, so one starved of CPU sends late and offers less load without "
        f"raising the delays; it holds its cadence at <= {PACE_SLACK:g} x "
        f"{relay['interval_ms']} ms. A level is stable when the relayed streams keep the rule "
        "and the fake held its cadence. It is not measurable (CPU 1, not the gateway, is the "
        "limit) when the relayed streams keep the rule but the fake fell behind, or break it "
        "while the direct path breaks it too; relayed streams that break the rule while the "
        "direct ones keep it are the gateway's (a fake behind its cadence only offered less). "
        "chunks/s = what the fake sent through the gateway (streams / median pace); us per "
        "chunk = the gateway's CPU per relayed chunk at that rate. "
        + _headline(relay)
        + _fake_cost(relay),
        "",
        "| streams | relayed: complete | p50 / p99 / max ms | fake pace ms | chunks/s "
        "| gateway CPU | us per chunk | CPU 1 | direct: complete | p50 / p99 / max ms "
        "| fake pace ms | CPU 1 | stable (relayed) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for x in relay["levels"]:
        n, g, d = x["streams"], x["relayed"], x["direct"]
        rate, us = x.get("offered_per_s"), x.get("gateway_us_per_chunk")
        lines.append(
            f"| {n} | {n - g['incomplete']} | {_ms(g)} | {_pace(g)} | "
            f"{'n/a' if rate is None else format(rate, ',.0f')} | "
            f"{_share(g['cpu_share'].get('gateway'))} | {'n/a' if us is None else f'{us:.0f}'} | "
            f"{_share(_cpu1(g['cpu_share']))} | {n - d['incomplete']} | {_ms(d)} | {_pace(d)} | "
            f"{_share(_cpu1(d['cpu_share']))} | {_verdict(x)} |"
        )
    return lines


def _us(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.0f}"


def _where(side: dict[str, Any], bound: int, name: str) -> str:
    """Where one relay's climb ended, in words."""
    limit, stop = side["limit"], side["stopped_at"]
    if limit == "bound":
        return f"every level up to the bound, {bound}, was stable"
    if limit == "client":
        return f"at {stop} CPU 1 (the fake and the client) could not offer the load"
    return f"at {stop} the {name} was the limit"


def _full(row: dict[str, Any] | None, name: str) -> bool:
    """The relay used most of its core: chunks queue while it is busy, so one read can
    carry several and its CPU per chunk falls below its unloaded cost."""
    share = None if row is None else row.get(f"{name}_share")
    return share is not None and share == share and share >= MAX_CPU_SHARE


def _cell(row: dict[str, Any] | None, name: str) -> str:
    """One relay at one level: us per chunk, p99 and the verdict."""
    if row is None:
        return "not measured"
    p99 = row["relayed"].get("p99")
    p99_text = "n/a" if p99 is None or p99 != p99 else f"{p99:.1f}"
    full = ", core full" if _full(row, name) else ""
    return f"{_us(row.get(f'{name}_us_per_chunk'))} (p99 {p99_text}{full}, {_verdict(row)})"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, na: str, nb: str) -> str:
    x = None if a is None else a.get(f"{na}_us_per_chunk")
    y = None if b is None else b.get(f"{nb}_us_per_chunk")
    if not x or not y or x != x or y != y:
        return "n/a"
    return f"{x / y:.2f}" + ("*" if _full(a, na) or _full(b, nb) else "")


def _floor_markdown(relay: dict[str, Any]) -> list[str]:
    """The gateway's two routes beside the aiohttp passthrough and the raw relay floor."""
    if not relay.get("floor"):
        return []
    sides = {"gateway": relay} | {
        name: relay[name] for name in ("completions", "aiohttp", "floor") if relay.get(name)
    }
    by = {name: {x["streams"]: x for x in side["levels"]} for name, side in sides.items()}
    largest = ", ".join(f"{RELAY_NAMES[name]} {side['max_stable']}" for name, side in sides.items())
    where = "; ".join(
        f"{RELAY_NAMES[name]}: {_where(side, relay['bound'], RELAY_NAMES[name])}"
        for name, side in sides.items()
        if name != "gateway"
    )
    ratio = ""
    if "aiohttp" in by:
        peer = by.get("completions", by["gateway"])
        both = sorted(by["aiohttp"].keys() & peer.keys())
        # The largest level where neither used a full core (else the largest both measured).
        clean = [
            n
            for n in both
            if not _full(by["aiohttp"][n], "aiohttp")
            and not _full(peer[n], "completions" if "completions" in by else "gateway")
        ]
        if both:
            n = (clean or both)[-1]
            a = by["aiohttp"][n]
            ratio = (
                f" At {n} streams, the largest level both measured"
                + (" with neither using a full core" if clean else "")
                + ", the aiohttp relay used "
                f"{_us(a.get('aiohttp_us_per_chunk'))} us of CPU per relayed chunk; the gateway "
                f"{_us(by.get('completions', {}).get(n, {}).get('completions_us_per_chunk'))} on "
                f"the completions route (ratio "
                f"{_ratio(by.get('completions', {}).get(n), a, 'completions', 'aiohttp')}) and "
                f"{_us(by['gateway'].get(n, {}).get('gateway_us_per_chunk'))} on the native "
                f"route (ratio {_ratio(by['gateway'].get(n), a, 'gateway', 'aiohttp')})."
            )
    heads = [name for name in RELAYS if name in sides]
    lines = [
        "",
        "Relays compared: the same ladder, at each level right after the gateway's native "
        "route, through the gateway's `POST /v1/chat/completions` (the OpenAI dialect in and "
        "out; it keeps no stream log, only native streams are resumable), through "
        "`benchmarks/servers/aiohttp_relay.py` (issue 17's yardstick: an aiohttp app that "
        "sends each client request over one shared `ClientSession` and writes every read of "
        "the upstream body to the client unchanged, `iter_any()` then `response.write()`, "
        "no parsing; the like-for-like peer of the completions route) and through "
        "`benchmarks/servers/raw_relay.py` (the floor: a raw asyncio Protocol on uvloop, per "
        "stream one upstream connection, the content string sliced out of each chunk's bytes "
        "and written as one SSE event per upstream read from the protocol callbacks; no JSON "
        "parsing, validation, memory, heartbeats or timeouts: what any Python relay pays on "
        "this machine for the read and the write per chunk). Each relay is started like the "
        "gateway (CPU 0, `OPENAI_BASE_URL` at the same fake), judged by the same rule against "
        "the same direct floor, and climbs until its own first unstable level. The gateway "
        "runs as the ladder above does (`serve` defaults: stream log and metrics on, no keys; "
        "`bench_features` adds keys and each feature's share). "
        f"**Largest stable level: {largest}** ({where}).{ratio}",
        "",
        "Cells: us of CPU per relayed chunk (p99 delay ms, stable); direct p99: the same "
        "streams read straight from the fake at that level (a relay's added p99 is its p99 "
        "minus this). Ratios: us per chunk over "
        f"the aiohttp relay's at the same level. *Core full* (and * on a ratio): a relay used "
        f">= {MAX_CPU_SHARE:.0%} of its core; chunks queue while it is busy and one read can "
        "carry several, so its CPU per chunk falls below its unloaded cost and the ratio "
        "is not like for like: read the levels without it.",
        "",
        "| streams | direct p99 ms | "
        + " | ".join(RELAY_NAMES[name] for name in heads)
        + (" | completions / aiohttp | native / aiohttp |" if "aiohttp" in by else " |"),
        "|---:|---:|" + "---|" * len(heads) + ("---:|---:|" if "aiohttp" in by else ""),
    ]
    levels = sorted(set().union(*(rows.keys() for rows in by.values())))
    for n in levels:
        first = next(by[name][n] for name in heads if n in by[name])
        direct_p99 = first["direct"].get("p99")
        cells = ["n/a" if direct_p99 is None else f"{direct_p99:.1f}"]
        cells += [_cell(by[name].get(n), name) for name in heads]
        if "aiohttp" in by:
            a = by["aiohttp"].get(n)
            cells.append(_ratio(by.get("completions", {}).get(n), a, "completions", "aiohttp"))
            cells.append(_ratio(by["gateway"].get(n), a, "gateway", "aiohttp"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def _idle_checks_markdown(r: dict[str, Any]) -> list[str]:
    checks = r.get("idle_checks")
    if not checks:
        return []
    lines = []
    for x in checks["vs_plain"]:
        ok = x["native_kib"] <= x["plain_kib"] and x["held"]
        lines.append(
            f"- {x['clients']:,} idle streams, sse-engine (log and metrics on) vs plain aiohttp "
            f"StreamResponse: {x['native_kib']:.2f} vs {x['plain_kib']:.2f} KiB per stream "
            f"({'all held' if x['held'] else 'NOT all held'}): "
            f"{'yes' if ok else 'no'}, stretch 8 KiB: "
            f"{'yes' if x['native_kib'] <= 8 else 'no'}."
        )
    for x in checks["max_tokens"]:
        lines.append(
            f"- {x['clients']:,} idle streams of the mock, max_tokens=1,000,000 vs 3: "
            f"{x['large_kib']:.2f} vs {x['small_kib']:.2f} KiB per stream "
            f"({x['large_kib'] - x['small_kib']:+.2f}), "
            f"{'all held' if x['held'] else 'NOT all held'}."
        )
    return ["Issue 17's idle checks:", "", *lines, ""] if lines else []


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Idle streams: heartbeat every {r['heartbeat_s']:g} s; each stream sends its first "
        "chunk of the mock (`max_tokens=3`, `interval_ms=60000`) and goes quiet; RSS measured "
        "before connecting and after a heartbeat period (peak of the two readings after "
        "connecting). sse-engine runs with `--resume on --metrics on` (the stream log and "
        "metrics, the defaults; `/metrics` answered as shown), beside the same with both off "
        "and the same stream asking for `max_tokens=1000000`.",
        "",
        "| server | streams | ready | got a heartbeat | still open | RSS before MiB | "
        "RSS after MiB | KiB per stream | connect s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, rows in r["idle"].items():
        label = IDLE_LABELS.get(kind, kind)
        if rows and "metrics_status" in rows[0]:
            label += f" (/metrics {rows[0]['metrics_status']})"
        for x in rows:
            if "error" in x:
                lines.append(f"| {label} | {x['clients']} | failed: {x['error']} |")
                continue
            lines.append(
                f"| {label} | {x['clients']} | {x['ready']} | {x['got_heartbeat']} | "
                f"{x['still_open']} | {x['rss_before_kib'] / 1024:.1f} | "
                f"{x['rss_after_kib'] / 1024:.1f} | {x['kib_per_conn']:.2f} | "
                f"{x['connect_s']:.1f} |"
            )
    summ = r["idle_summary"]
    lines += [
        "",
        "KiB per idle stream across levels (median, min-max): "
        + "; ".join(f"{IDLE_LABELS.get(k, k)} {fmt_range(v, '.2f')}" for k, v in summ.items()),
        "",
        *_idle_checks_markdown(r),
    ]
    if "relay" in r:
        lines += _relay_markdown(r["relay"]) + _floor_markdown(r["relay"])
    else:
        lines.append("Relayed streams: not measured by this (older) run.")
    mock = r.get("mock")
    if not mock:
        return "\n".join(lines)
    lines += [
        "",
        f"Paced mock at {r['interval_ms']} ms, **not relayed** (secondary: the peers cannot "
        f"relay, so every server streams its own mock): {mock['level']} streams, "
        f"{mock['chunks_per_stream']} chunks per stream, all started at once (connections "
        "opened 256 at a time). Delay = lateness past "
        f"{r['interval_ms']} ms after the stream's previous frame, at the client. The mock "
        "sleeps after each write, so a saturated server slows every stream instead of making "
        "single chunks late: a server holds the cadence when all streams complete, p99 <= "
        f"{STABLE_P99_MS:g} ms and the CPU it would need at the full cadence (CPU share x mean "
        f"gap / {r['interval_ms']} ms) is <= {MAX_CPU_SHARE:.0%} of the core.",
        "",
        "| server | streams | complete | delay p50 ms | p99 ms | max ms | "
        "mean gap p50 / p99 ms | server CPU share | CPU at cadence | holds cadence |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, x in mock["servers"].items():
        lines.append(
            f"| {LABELS[kind]} | {x['clients']} | {x['complete']} | {x['p50_ms']:.2f} | "
            f"{x['p99_ms']:.2f} | {x['max_ms']:.1f} | "
            f"{x['gap_p50_ms']:.2f} / {x['gap_p99_ms']:.2f} | {x['server_cpu_share']:.2f} | "
            f"{x['cpu_at_cadence']:.2f} | "
            f"{'yes' if x['holds_cadence'] else 'no'} |"
        )
    return "\n".join(lines)


def _cdf(ax: Any, cdf: list[float], **kw: Any) -> None:
    ys = [(i + 1) / len(cdf) for i in range(len(cdf))]
    ax.plot([max(v, 1e-3) for v in cdf], ys, **kw)


def _save(fig: Any, ax: Any, xlabel: str, title: str, path: Any) -> Any:
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of chunks")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(r: dict[str, Any], outdir: Any) -> list[str]:
    import matplotlib.pyplot as plt

    paths = []
    mock = r.get("mock")
    if mock:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for kind, x in mock["servers"].items():
            if x["cdf_ms"]:
                _cdf(ax, x["cdf_ms"], label=f"{LABELS[kind]} (p99 {x['p99_ms']:.1f})")
        title = f"Per-chunk delay CDF, {mock['level']} streams of each server's mock at 20 ms"
        paths.append(
            _save(
                fig,
                ax,
                "chunk delay past the 20 ms cadence, ms (log)",
                title + " (not relayed)",
                outdir / "latency_cdf.png",
            )
        )
    relay = r.get("relay")
    if relay and relay["levels"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for x in relay["levels"]:
            g = x["relayed"]
            if g.get("cdf_ms"):
                p99 = "n/a" if g["p99"] is None else f"{g['p99']:.1f}"
                _cdf(ax, g["cdf_ms"], label=f"{x['streams']} relayed (p99 {p99})")
        last = relay["levels"][-1]
        if last["direct"].get("cdf_ms"):
            _cdf(
                ax,
                last["direct"]["cdf_ms"],
                color="grey",
                linestyle=":",
                label=f"{last['streams']} direct from the fake (floor)",
            )
        floor = relay.get("floor", {}).get("levels")
        if floor and floor[-1]["relayed"].get("cdf_ms"):
            f = floor[-1]["relayed"]
            p99 = "n/a" if f["p99"] is None else f"{f['p99']:.1f}"
            _cdf(
                ax,
                f["cdf_ms"],
                color="black",
                linestyle="-.",
                label=f"{floor[-1]['streams']} via the raw relay floor (p99 {p99})",
            )
        aio = relay.get("aiohttp", {}).get("levels")
        if aio and aio[-1]["relayed"].get("cdf_ms"):
            a = aio[-1]["relayed"]
            p99 = "n/a" if a["p99"] is None else f"{a['p99']:.1f}"
            _cdf(
                ax,
                a["cdf_ms"],
                color="tab:brown",
                linestyle="--",
                label=f"{aio[-1]['streams']} via the aiohttp relay (p99 {p99})",
            )
        ax.axvline(STABLE_P99_MS, color="grey", linestyle="--", linewidth=1)
        paths.append(
            _save(
                fig,
                ax,
                "chunk delay, receipt - upstream send stamp, ms (log)",
                "sse-engine relaying a fake OpenAI upstream: per-chunk delay CDF by streams",
                outdir / "concurrency_cdf.png",
            )
        )
    return [p.name for p in paths]

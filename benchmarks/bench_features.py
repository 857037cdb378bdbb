"""What each feature a user switches on costs per relayed chunk, beside an aiohttp relay.

Issue 17: the gateway's CPU per relayed chunk, with the stream log, metrics
and client keys on as a user runs them, must be at most what a minimal aiohttp
passthrough relay (``benchmarks/servers/aiohttp_relay.py``) pays in the same
run; and each feature's share shows. The relay ladder (``bench_concurrency``)
climbs levels with one gateway configuration; this holds one level
(:data:`STREAMS` streams at 20 ms per chunk, about 12,500 chunks/s) and
interleaves every configuration in each round, so a shared, noisy machine
moves them all together.

Configurations, every one a ``sse-engine serve --provider openai`` on CPU 0
(``OPENAI_BASE_URL`` at the fake OpenAI upstream of ``bench_latency``, which
shares CPU 1 with the client), all started at once (idle ones cost nothing):

* ``all off``: ``--resume off --metrics off``, no keys;
* ``log only``: ``--resume on`` (the in-memory stream log kept for resume, the default);
* ``metrics only``: ``--metrics on`` (prometheus_client, the ``metrics`` extra;
  the default when it is installed);
* ``keys only``: ``--config benchmarks/keyed.toml`` (a static client key with
  every limit set, so every counter runs), with ``metrics_key`` set (as a user
  who scrapes with keys on must);
* ``all on``: the three together: what a user runs, on the native route
  (``POST /v1/chat/stream``);
* ``all on, completions``: the same server on ``POST /v1/chat/completions``
  (the OpenAI dialect in and out, which keeps no stream log: only native
  streams are resumable): the route that relays what the aiohttp relay
  relays, the like-for-like comparison;
* ``aiohttp relay`` (the yardstick), ``aiohttp parsing relay`` (the same, reading
  each chunk as a gateway must: ``benchmarks/servers/aiohttp_parsing_relay.py``)
  and ``raw relay floor`` (``benchmarks/servers/raw_relay.py``), started the same way.

Every request carries ``Authorization: Bearer`` the bench key (an open gateway
and the relays ignore it), so the client side is the same for all. Before
the rounds each gateway is checked to have what its name says: ``/metrics``
answers 200 with metrics on and 404 off; a request without the key gets 401
with keys on; a finished native stream of the mock resumes (200) with the
log on and is 404 with it off. The table says what each answered.

The client is ``bench_latency.measure`` (stream starts staggered over one
period, the first :data:`WARM` chunks of every stream not counted). Per
measurement: *us per chunk* = the process's CPU share over the counted chunks
x 1e6 / the chunks per second the fake sent (streams x 1000 / median pace),
as the ladder reports it; *all-in* = the process's CPU from before the first
connection to after the last stream closed, over every chunk relayed (so it
also carries each stream's request, admission and end). A feature's share is
its configuration minus ``all off``, within each round; medians over rounds
with min-max. CPU is ``/proc`` utime + stime (10 ms ticks): each counted
window is a few seconds of a third of a core, so a tick is about 1%.

    python -m benchmarks --only features     (writes results.json and RESULTS.md)
    python -m benchmarks.bench_features [--quick] [--json]     (prints; records nothing)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from ._harness import BENCH_DIR, log, raise_nofile, summary
from ._loadgen import cpu_seconds
from .ab import BENCH_KEY
from .bench_latency import INTERVAL_MS, Fake, Gateway, fake_markdown, measure, run_client

#: Streams at once, and rounds, chunks per stream and warm-up chunks (quick, full).
STREAMS = 250
ROUNDS = (3, 7)
CHUNKS = (100, 250)
WARM = 25
#: A metrics scraper's bearer token when keys are on (``SSE_ENGINE_METRICS_KEY``).
METRICS_KEY = "sk-sse-benchmark-metrics-0123456789abcdefghijk"
KEYED = str(BENCH_DIR / "keyed.toml")
#: The fake holds its cadence when every stream's mean stamp interval is within 10% of it.
PACE_SLACK = 1.1

_OFF = ["--resume", "off", "--metrics", "off"]
#: name: (serve flags, features on: log, metrics, keys)
GATEWAYS: dict[str, tuple[list[str], tuple[bool, bool, bool]]] = {
    "all off": (_OFF, (False, False, False)),
    "log only": (["--resume", "on", "--metrics", "off"], (True, False, False)),
    "metrics only": (["--resume", "off", "--metrics", "on"], (False, True, False)),
    "keys only": ([*_OFF, "--config", KEYED], (False, False, True)),
    "all on": (["--resume", "on", "--metrics", "on", "--config", KEYED], (True, True, True)),
}
#: Measured configurations: name: (server, native request or OpenAI's).
CONFIGS: dict[str, tuple[str, bool]] = {
    **{name: (name, True) for name in GATEWAYS},
    "all on, completions": ("all on", False),
    "aiohttp relay": ("aiohttp relay", False),
    "aiohttp parsing relay": ("aiohttp parsing relay", False),
    "raw relay floor": ("raw relay floor", True),
}
FEATURES = ("log only", "metrics only", "keys only")


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Configured(Gateway):
    """The gateway with extra ``serve`` flags and environment."""

    def __init__(self, upstream: str, flags: list[str], env: dict[str, str]) -> None:
        super().__init__(upstream)
        self.flags = flags
        self.env = env

    def command(self) -> list[str]:
        return [*super().command(), *self.flags]

    def start(self, timeout: float = 20.0) -> Configured:
        with _environ(self.env):
            super().start(timeout)
        return self


class Relay(Gateway):
    """A relay of ``benchmarks.servers``, started like the gateway (CPU 0, OPENAI_BASE_URL)."""

    def __init__(self, upstream: str, module: str) -> None:
        super().__init__(upstream)
        self.kind = module.rsplit(".", 1)[-1]
        self.module = module

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]


#: Sent with every measured request: the gateways with keys on need it, the others ignore it.
KEY_HEADERS = {"Authorization": f"Bearer {BENCH_KEY}"}


def _http(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check(port: int, features: tuple[bool, bool, bool]) -> dict[str, Any]:
    """What the gateway answers for each feature; ``ok`` when all match ``features``."""
    log_on, metrics_on, keys_on = features
    key = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    body = b'{"messages":[{"role":"user","content":"hi"}],"provider":"mock",'
    body += b'"options":{"max_tokens":3,"interval_ms":0}}'
    anonymous, _ = _http(
        port, "POST", "/v1/chat/stream", body, {"Content-Type": "application/json"}
    )
    status, stream = _http(port, "POST", "/v1/chat/stream", body, key)
    sid = ""
    if status == 200:
        start = stream.find(b'"stream_id":"')
        if start >= 0:
            start += len('"stream_id":"')
            sid = stream[start : stream.find(b'"', start)].decode()
    resumed, _ = _http(port, "GET", f"/v1/streams/{sid or 'none'}", None, key)
    scraper = {"Authorization": f"Bearer {METRICS_KEY}"}
    metrics, _ = _http(port, "GET", "/metrics", None, scraper)
    out = {"stream": status, "resume": resumed, "metrics": metrics, "no key": anonymous}
    out["ok"] = (
        status == 200
        and (resumed == 200) == log_on
        and (metrics == 200) == metrics_on
        and (anonymous == 401) == keys_on
    )
    return out


async def _one(port: int, pid: int, native: bool, chunks: int) -> dict[str, Any]:
    """One measurement at :data:`STREAMS`: us per chunk (counted window) and all-in."""
    before = cpu_seconds(pid)
    m = await measure(
        port,
        gateway=native,
        streams=STREAMS,
        chunks=chunks,
        warm=WARM,
        cpu={"relay": pid},
        headers=KEY_HEADERS,
    )
    await asyncio.sleep(0.5)  # the relay closes its streams (counted in all-in)
    spent = cpu_seconds(pid) - before
    rate = STREAMS * 1000 / m["pace_p50"] if m["pace_p50"] > 0 else float("nan")
    share = m["cpu_share"].get("relay", float("nan"))
    relayed = STREAMS * chunks if not m["incomplete"] else float("nan")
    return {
        "us_per_chunk": share * 1e6 / rate,
        "all_in_us_per_chunk": spent * 1e6 / relayed,
        "share": share,
        "chunks_per_s": rate,
        "p50": m["p50"],
        "p99": m["p99"],
        "incomplete": m["incomplete"],
        "pace_max": m["pace_max"],
        "cpu1": m["cpu_share"].get("client", float("nan")),
    }


async def _rounds(
    servers: dict[str, Gateway], rounds: int, chunks: int
) -> dict[str, list[dict[str, Any]]]:
    for server, native in CONFIGS.values():  # connections, imports
        s = servers[server]
        await measure(
            s.port, gateway=native, streams=10, chunks=chunks, warm=WARM, headers=KEY_HEADERS
        )
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for r in range(rounds):
        # Rotate the order: no configuration always runs first or after the same one.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            server, native = CONFIGS[name]
            s = servers[server]
            m = await _one(s.port, s.pid, native, chunks)
            out[name].append(m)
            log(
                f"features round {r + 1}/{rounds} {name:<20}: {m['us_per_chunk']:5.1f} us/chunk "
                f"(all-in {m['all_in_us_per_chunk']:5.1f}), cpu {m['share']:.2f} at "
                f"{m['chunks_per_s']:,.0f} chunks/s, p99 {m['p99']:.1f} ms, "
                f"incomplete {m['incomplete']}, fake pace {m['pace_max']:.2f} ms"
            )
            await asyncio.sleep(0.5)
    return out


def _diffs(rows: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> dict[str, float]:
    return summary([x[key] - y[key] for x, y in zip(rows[a], rows[b], strict=True)])


def _ratios(rows: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> dict[str, float]:
    return summary([x[key] / y[key] for x, y in zip(rows[a], rows[b], strict=True)])


def main(quick: bool = False) -> dict[str, Any]:
    raise_nofile()
    rounds = ROUNDS[0] if quick else ROUNDS[1]
    chunks = CHUNKS[0] if quick else CHUNKS[1]
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(Fake(chunks))
        upstream = f"http://127.0.0.1:{fake.port}"
        servers: dict[str, Gateway] = {}
        checks: dict[str, dict[str, Any]] = {}
        for name, (flags, features) in GATEWAYS.items():
            env = {"SSE_ENGINE_METRICS_KEY": METRICS_KEY} if features[2] else {}
            servers[name] = stack.enter_context(Configured(upstream, flags, env))
            checks[name] = check(servers[name].port, features)
            if not checks[name]["ok"]:
                raise RuntimeError(f"gateway {name!r} does not have what it says: {checks[name]}")
        servers["aiohttp relay"] = stack.enter_context(
            Relay(upstream, "benchmarks.servers.aiohttp_relay")
        )
        servers["aiohttp parsing relay"] = stack.enter_context(
            Relay(upstream, "benchmarks.servers.aiohttp_parsing_relay")
        )
        servers["raw relay floor"] = stack.enter_context(
            Relay(upstream, "benchmarks.servers.raw_relay")
        )
        rows = run_client(_rounds(servers, rounds, chunks))
        banners = {name: s.banner for name, s in servers.items()}
        fake_banner = fake.banner
    result: dict[str, Any] = {
        "streams": STREAMS,
        "rounds": rounds,
        "chunks_per_stream": chunks,
        "warm_chunks": WARM,
        "interval_ms": INTERVAL_MS,
        "fake": fake_banner,
        "banners": banners,
        "checks": checks,
        "rows": rows,
        "configs": {},
        "shares": {},
    }
    for name, ms in rows.items():
        result["configs"][name] = {
            key: summary([m[key] for m in ms])
            for key in ("us_per_chunk", "all_in_us_per_chunk", "share", "chunks_per_s", "p99")
        }
        result["configs"][name]["incomplete"] = sum(m["incomplete"] for m in ms)
        result["configs"][name]["paced"] = all(
            m["pace_max"] <= INTERVAL_MS * PACE_SLACK for m in ms
        )
    for key in ("us_per_chunk", "all_in_us_per_chunk"):
        shares = {name: _diffs(rows, name, "all off", key) for name in (*FEATURES, "all on")}
        shares["all on / aiohttp relay"] = _ratios(rows, "all on", "aiohttp relay", key)
        shares["all on, completions / aiohttp relay"] = _ratios(
            rows, "all on, completions", "aiohttp relay", key
        )
        shares["all off / aiohttp relay"] = _ratios(rows, "all off", "aiohttp relay", key)
        shares["all on, completions / parsing relay"] = _ratios(
            rows, "all on, completions", "aiohttp parsing relay", key
        )
        shares["parsing / aiohttp relay"] = _ratios(
            rows, "aiohttp parsing relay", "aiohttp relay", key
        )
        result["shares"][key] = shares
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _r(s: dict[str, Any] | None, spec: str = ".1f") -> str:
    if not s or not s.get("n") or s["median"] != s["median"]:
        return "n/a"
    return f"{format(s['median'], spec)} ({format(s['min'], spec)} to {format(s['max'], spec)})"


def _signed(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n") or s["median"] != s["median"]:
        return "n/a"
    return f"{s['median']:+.1f} ({s['min']:+.1f} to {s['max']:+.1f})"


def _answers(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    return f"metrics {c['metrics']}, resume {c['resume']}, no key {c['no key']}"


def markdown(r: dict[str, Any]) -> str:
    us, all_in = r["shares"]["us_per_chunk"], r["shares"]["all_in_us_per_chunk"]
    on, yard = r["configs"]["all on"], r["configs"]["aiohttp relay"]
    comp = r["configs"]["all on, completions"]
    parse = r["configs"]["aiohttp parsing relay"]

    def verdict(config: dict[str, Any]) -> str:
        a, b = config["us_per_chunk"]["median"], yard["us_per_chunk"]["median"]
        return "yes" if a <= b else "no"

    lines = [
        f"{r['streams']} streams at once, one chunk per stream every {r['interval_ms']} ms from "
        f"{fake_markdown(r.get('fake'))}, {r['chunks_per_stream']} chunks per stream, the first "
        f"{r['warm_chunks']} of each not counted; every configuration once per round, "
        f"{r['rounds']} interleaved rounds (the order rotated), medians with min to max. Each "
        "gateway is `sse-engine serve --provider openai` on CPU 0 with the flags named; the fake "
        "and the client share CPU 1. *us/chunk*: the process's CPU over the counted chunks per "
        "chunk the fake sent; *all-in*: its CPU from the first connection to the last close "
        "over every chunk relayed (requests, admission and stream ends included). A feature's "
        "share is its configuration minus `all off`, round by round. Every request carries the "
        "bench key (ignored where keys are off).",
        "",
        f"**All on vs the aiohttp passthrough relay: native route {_r(on['us_per_chunk'])} us "
        f"per chunk vs {_r(yard['us_per_chunk'])} ({verdict(on)}: ratio "
        f"{_r(us['all on / aiohttp relay'], '.2f')}); completions route (like for like, no "
        f"stream log) {_r(comp['us_per_chunk'])} ({verdict(comp)}: ratio "
        f"{_r(us['all on, completions / aiohttp relay'], '.2f')}).** Reading the stream "
        "(the same relay splitting each read into events and decoding and encoding each "
        f"one's JSON, `aiohttp parsing relay`) costs {_r(parse['us_per_chunk'])} us per chunk, "
        f"{_r(us['parsing / aiohttp relay'], '.2f')}x the passthrough; the completions route "
        f"is {_r(us['all on, completions / parsing relay'], '.2f')}x that. Shares over `all off` "
        f"({_r(r['configs']['all off']['us_per_chunk'])} us/chunk): log "
        f"{_signed(us['log only'])}, metrics {_signed(us['metrics only'])}, keys "
        f"{_signed(us['keys only'])}, all three {_signed(us['all on'])} us/chunk; all-in: log "
        f"{_signed(all_in['log only'])}, metrics {_signed(all_in['metrics only'])}, keys "
        f"{_signed(all_in['keys only'])}, all three {_signed(all_in['all on'])}.",
        "",
        "| configuration | us/chunk | all-in us/chunk | CPU share | chunks/s | p99 ms "
        "| incomplete | fake kept pace | checked (HTTP status) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, c in r["configs"].items():
        server = CONFIGS.get(name, (name, True))[0]
        lines.append(
            f"| {name} | {_r(c['us_per_chunk'])} | {_r(c['all_in_us_per_chunk'])} | "
            f"{_r(c['share'], '.2f')} | {_r(c['chunks_per_s'], ',.0f')} | {_r(c['p99'])} | "
            f"{c['incomplete']} | {'yes' if c['paced'] else 'no'} | "
            f"{_answers(r['checks'].get(server))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    out = main(quick="--quick" in sys.argv)
    print(markdown(out))
    if "--json" in sys.argv:
        print(json.dumps(out))
